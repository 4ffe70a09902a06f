package main

import (
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// Queue feedback: a command that waits in a queue longer than shim.conf's
// queue_feedback_after tells its git client so on stderr — never stdout,
// which carries the protocol — on one line that it rewrites with '\r' like
// git's own progress:
//
//	sluice: waiting for a slot for project.git (position 3 of 7, 4s)
//
// refreshed at most every feedbackEvery, and ended with a newline when the
// answer comes. Through uploadpack.packObjectsHook upload-pack relays it on
// the side band, so the client shows "remote: sluice: …". Shorter waits
// print nothing.
const (
	// feedbackEvery is the longest the line goes without a refresh, and
	// the shortest time between two refreshes.
	feedbackEvery = 2 * time.Second
	// feedbackTick is how often the waiting shim wakes to check.
	feedbackTick = 250 * time.Millisecond
)

// feedback is the waiting line of one admission. Its methods run on the
// shim's only goroutine.
type feedback struct {
	after time.Duration // threshold; <= 0: never show anything
	repo  string        // what the line calls the repository
	start time.Time
	now   func() time.Time
	write func(string) // writes to stderr

	queued bool
	pos, n int32
	shown  bool      // a line is on the screen
	last   time.Time // when it was last written
	width  int       // its length, to blank what a shorter line leaves
}

// newFeedback returns the feedback of an admission that starts now.
func newFeedback(after time.Duration, repo []byte) *feedback {
	name := "this repository"
	if r := strings.TrimRight(string(repo), "/"); r != "" {
		name = r[strings.LastIndexByte(r, '/')+1:]
	}
	return &feedback{after: after, repo: name, start: time.Now(), now: time.Now,
		write: func(s string) { os.Stderr.WriteString(s) }}
}

// queuedAt records the position the agent reported.
func (f *feedback) queuedAt(q shimproto.Queued) {
	f.queued = true
	f.pos, f.n = q.Position, q.QueueLength
	f.tick()
}

// tick shows or refreshes the line when it is due.
func (f *feedback) tick() {
	if f.after <= 0 || !f.queued {
		return
	}
	now := f.now()
	waited := now.Sub(f.start)
	if waited < f.after || (f.shown && now.Sub(f.last) < feedbackEvery) {
		return
	}
	f.show("sluice: waiting for a slot for "+f.repo+" (position "+strconv.Itoa(int(f.pos))+
		" of "+strconv.Itoa(int(f.n))+", "+seconds(waited)+")", "")
	f.last = now
}

// done ends the line when one is shown: admitted says how long the wait
// was; otherwise the rejection or failure line that follows explains.
func (f *feedback) done(admitted bool) {
	if !f.shown {
		return
	}
	if admitted {
		f.show("sluice: waited "+seconds(f.now().Sub(f.start))+" for a slot for "+f.repo+", running", "\n")
		return
	}
	f.write("\n")
}

// show rewrites the line with text, then writes end.
func (f *feedback) show(text, end string) {
	pad := ""
	if f.width > len(text) {
		pad = strings.Repeat(" ", f.width-len(text))
	}
	cr := ""
	if f.shown {
		cr = "\r" // back to the start of the line shown
	}
	f.write(cr + text + pad + end)
	f.width = len(text)
	f.shown = true
}

// seconds formats d in whole seconds: "4s".
func seconds(d time.Duration) string {
	return strconv.Itoa(int(d/time.Second)) + "s"
}
