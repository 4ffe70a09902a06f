// Package limiter owns sluice's admission slots: one [Limiter] per policy
// rule, a keyed semaphore with a bounded wait queue per key. It decides who
// runs, who waits and in which order, and who is turned away (queue full,
// waited too long); it knows nothing of sockets, leases, policy files or
// pressure. The agent asks it for slots; the adaptive controller
// (agent/adaptive) moves its limits with [Limiter.SetLimit].
//
// # Words
//
//   - key: what a rule counts by (a repository, a client address, a
//     user, or a combination), already derived by the agent.
//   - slot: the right to run one command under a key. [Limiter.Acquire]
//     returns a release function that gives the slot back exactly once;
//     [Limiter.Adopt] counts a command already running (restart recovery).
//   - waiter: a request queued for a slot; it learns its position through
//     a [QueueFunc] and leaves the queue when its context ends.
//   - limit: slots per key. A lower limit never stops running commands: it
//     applies as slots are released.
//
// # State
//
// A Limiter holds a map from key to that key's state (running count and
// queue) and forgets a key as soon as nothing runs or waits under it, so
// memory follows the live keys, not the keys ever seen. Totals are kept
// beside the map so [Limiter.Stats] never walks it except for the busiest
// key. Time comes from a [Clock] (real by default), so a simulated host can
// drive waits and timeouts.
//
// # What comes next (issue 17)
//
// Host capacity adds a budget for the whole host, max-min fair shares of
// it across keys, and requests subject to several limits at once that take
// all their slots or none. They belong here, beside Limiter: the key →
// queue structure is what max-min fairness needs (serve the waiting key
// that runs the least), and an all-or-none grant across limiters needs the
// limiters it spans to decide under one lock, which is why admission
// decisions are made only in admitLocked and Acquire's fast path and
// never from the caller's goroutine after the lock is dropped.
package limiter
