package limiter

import "time"

// Clock is the time a Limiter reads: when a wait starts and ends, and the
// max_queue_wait timer of each waiter. New uses the real clock; a
// simulated host (issue 17's controller tests) or a test that does not
// run in a testing/synctest bubble passes its own with WithClock.
type Clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer (it reports whether it stopped it
	// before it fired, as time.Timer.Stop does).
	NewTimer(d time.Duration) (c <-chan time.Time, stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}
