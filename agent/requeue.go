package agent

import (
	"time"

	"github.com/sluicehq/sluice/policy"
)

// Queues across a restart.
//
// A shim whose agent restarts while it waits reconnects and sends its
// request again (cmd/sluice-shim/reconnect.go), saying when it first
// sent it (queued_since_unix_nano). The new agent queues it by that time
// rather than by when it reconnected: re-queued waiters keep their old
// order among themselves and stay ahead of requests that arrived after
// them, whatever order their reconnects land in (limiter.AcquireSince,
// limiter.Request.Since). Their wait bound starts again.
//
// The time is the caller's word, so it is honoured only where it can be
// true: before this agent started (a request first sent to this agent
// queues as it arrives), and no earlier than the longest such a request
// could have waited before the restart (the rule's max_queue_wait plus
// restart_grace before this agent's start; earlier claims are clamped to
// it). A caller that lies gains at most that: a place near the front of
// its key's queue right after a restart, never a slot above a limit.

// requeuedSince returns the queue time to use for a request that says it
// first queued at ns (Unix ns; 0: a fresh request), arriving now under
// rule: zero for a fresh request.
func (a *Agent) requeuedSince(ns int64, rule *policy.Limit, now time.Time) time.Time {
	if ns <= 0 {
		return time.Time{}
	}
	t := time.Unix(0, ns)
	if !t.Before(a.started) || t.After(now) {
		return time.Time{}
	}
	earliest := a.started.Add(-rule.MaxQueueWait.Duration - a.Policy().Agent.RestartGrace.Duration)
	if t.Before(earliest) {
		t = earliest
	}
	return t
}
