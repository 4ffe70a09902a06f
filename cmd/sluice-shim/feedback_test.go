package main

import (
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// fakeFeedback is a feedback on a fake clock that records what it writes.
func fakeFeedback(after time.Duration, repo string) (*feedback, *time.Time, *strings.Builder) {
	var out strings.Builder
	now := time.Unix(1000, 0)
	f := newFeedback(after, []byte(repo))
	f.start = now
	f.now = func() time.Time { return now }
	f.write = func(s string) { out.WriteString(s) }
	return f, &now, &out
}

func TestFeedbackShortWaitPrintsNothing(t *testing.T) {
	f, now, out := fakeFeedback(2*time.Second, "/srv/git/project.git")
	f.queuedAt(shimproto.Queued{Position: 1, QueueLength: 1})
	for i := 0; i < 7; i++ {
		*now = now.Add(250 * time.Millisecond)
		f.tick()
	}
	f.done(true)
	if out.Len() != 0 {
		t.Errorf("a 1.75s wait printed %q", out.String())
	}
}

func TestFeedbackLineRefreshedInPlace(t *testing.T) {
	f, now, out := fakeFeedback(2*time.Second, "/srv/git/project.git")
	f.queuedAt(shimproto.Queued{Position: 12, QueueLength: 12})
	step := func(d time.Duration) {
		for end := now.Add(d); now.Before(end); {
			*now = now.Add(250 * time.Millisecond)
			f.tick()
		}
	}
	step(2 * time.Second)
	want := "sluice: waiting for a slot for project.git (position 12 of 12, 2s)"
	if out.String() != want {
		t.Fatalf("after 2s: %q, want %q", out.String(), want)
	}
	out.Reset()
	f.queuedAt(shimproto.Queued{Position: 3, QueueLength: 7})
	step(time.Second)
	if out.Len() != 0 {
		t.Errorf("refreshed after 1s: %q", out.String())
	}
	step(time.Second)
	// Shorter than the line before: padded so nothing of it is left.
	if got := out.String(); got != "\rsluice: waiting for a slot for project.git (position 3 of 7, 4s)  " {
		t.Errorf("refresh: %q", got)
	}
	out.Reset()
	f.done(true)
	if got := out.String(); !strings.HasPrefix(got, "\rsluice: waited 4s for a slot for project.git") || !strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 {
		t.Errorf("end: %q", got)
	}
}

func TestFeedbackRejectedEndsLine(t *testing.T) {
	f, now, out := fakeFeedback(time.Second, "")
	f.queuedAt(shimproto.Queued{Position: 1, QueueLength: 2})
	*now = now.Add(1500 * time.Millisecond)
	f.tick()
	f.done(false)
	if got := out.String(); got != "sluice: waiting for a slot for this repository (position 1 of 2, 1s)\n" {
		t.Errorf("%q", got)
	}
}

func TestFeedbackNever(t *testing.T) {
	f, now, out := fakeFeedback(0, "/r.git")
	f.queuedAt(shimproto.Queued{Position: 1, QueueLength: 1})
	*now = now.Add(time.Hour)
	f.tick()
	f.done(true)
	if out.Len() != 0 {
		t.Errorf("queue_feedback_after 0 printed %q", out.String())
	}
}
