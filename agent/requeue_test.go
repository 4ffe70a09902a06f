package agent

import (
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/policy"
)

// TestRequeuedSinceIsClamped: the caller's "first queued at" is honoured
// only before this agent started, and never earlier than the rule's
// max_queue_wait plus restart_grace before that.
func TestRequeuedSinceIsClamped(t *testing.T) {
	cfg, err := policy.Parse("test.toml", []byte(execPolicy+"\n[agent]\nrestart_grace = \"5s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t)})
	rule := &cfg.Limits[0] // max_queue_wait 10s
	now := a.started.Add(time.Second)
	earliest := a.started.Add(-15 * time.Second)
	for _, tc := range []struct {
		name string
		ns   int64
		want time.Time
	}{
		{"fresh request", 0, time.Time{}},
		{"negative", -5, time.Time{}},
		{"queued before the restart", a.started.Add(-3 * time.Second).UnixNano(), a.started.Add(-3 * time.Second)},
		{"claims an age it cannot have", a.started.Add(-time.Hour).UnixNano(), earliest},
		{"after this agent started", a.started.Add(time.Millisecond).UnixNano(), time.Time{}},
		{"in the future", now.Add(time.Hour).UnixNano(), time.Time{}},
	} {
		if got := a.requeuedSince(tc.ns, rule, now); !got.Equal(tc.want) {
			t.Errorf("%s: requeuedSince = %v, want %v", tc.name, got, tc.want)
		}
	}
}
