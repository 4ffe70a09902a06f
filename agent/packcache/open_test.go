package packcache

import (
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestOpenLogsAndReports(t *testing.T) {
	cfg := Config{Dir: filepath.Join(t.TempDir(), "c"), MaxAge: 90 * time.Second, MaxBytes: 1 << 20, MinOccurrences: 2}
	core, logs := observer.New(zapcore.InfoLevel)
	c := Open(cfg, zap.New(core))
	if c == nil {
		t.Fatalf("Open returned nil: %v", logs.All())
	}
	defer c.Close()
	if e := logs.All(); len(e) != 1 || e[0].Message != "pack cache enabled" || e[0].ContextMap()["min_occurrences"] != int64(2) {
		t.Fatalf("logs %v", e)
	}
	st := c.Status()
	if st.Dir != cfg.Dir || st.MaxAgeUsec != 90e6 || st.MaxBytes != 1<<20 || st.MinOccurrences != 2 || st.Entries != 0 {
		t.Errorf("status %+v", st)
	}
}

// TestOpenUnusableDir: a directory the cache cannot use disables it with
// one error line naming the setting; Open returns nil, not an error.
func TestOpenUnusableDir(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	if c := Open(Config{Dir: "relative", MaxAge: time.Minute, MaxBytes: 1 << 20}, zap.New(core)); c != nil {
		c.Close()
		t.Fatal("a relative directory was accepted")
	}
	e := logs.All()
	if len(e) != 1 || e[0].Level != zapcore.ErrorLevel || e[0].Message != "pack cache disabled: cannot use its directory; fetches run uncached" ||
		e[0].ContextMap()["key"] != "[pack_cache] dir" || e[0].ContextMap()["value"] != "relative" {
		t.Fatalf("logs %v", e)
	}
}
