package ebpf

import (
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestSetupDisabled(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	tr, state := Setup(SetupOptions{}, zap.New(core))
	if tr != nil || state != "disabled" {
		t.Fatalf("Setup = %v, %q", tr, state)
	}
	if e := logs.All(); len(e) != 1 || e[0].Message != "eBPF tracing is off ([ebpf] enabled = false): shims run git as a supervised child" {
		t.Fatalf("logs %v", e)
	}
}

// TestSetupWithoutGit: a configured git that is missing leaves the tracer
// off, with one warning and the reason in the state.
func TestSetupWithoutGit(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "git")
	core, logs := observer.New(zapcore.InfoLevel)
	tr, state := Setup(SetupOptions{Enabled: true, GitBin: missing, Getenv: func(string) string { return "" }}, zap.New(core))
	if tr != nil || !strings.HasPrefix(state, "unavailable: sluice: git_bin="+missing+": ") {
		t.Fatalf("Setup = %v, %q", tr, state)
	}
	e := logs.All()
	if len(e) != 1 || e[0].Level != zapcore.WarnLevel ||
		e[0].Message != "eBPF tracing unavailable: cannot find the real git to watch; shims run git as a supervised child" {
		t.Fatalf("logs %v", e)
	}
}
