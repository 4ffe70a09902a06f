// Package limiter owns sluice's admission slots: one [Limiter] per policy
// rule, a keyed semaphore with a bounded wait queue per key, and one
// [Budget] per host budget class, fair-shared across keys. It decides who
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
// # Budgets and fair shares (issue 17)
//
// A [Budget] is one class's limit for the whole host, beside the rules'
// Limiters; a [Group] links them, so that a request takes its budget slot
// and its rules' slots ([Claim]s) in one step under every lock involved, or
// waits holding none of them: no hold-and-wait, so no deadlock whatever
// rules a request spans, and no slot leaks when it gives up. Waiters are
// served by weighted max-min fairness across fair keys (the key running
// the fewest per unit of weight first; ties round robin), so a key with
// 40 waiters does not starve a key with 1; per-key caps stay on top, as
// claims: a waiter whose rule key is full is passed over, not allowed to
// block the class.
//
// The classes (policy.BudgetClasses) and why they are separate: a clone's
// pack-objects takes a core (pack.threads = CPUs in the delta phase) and,
// in the storm benchmark's repository, 178 MiB max RSS; the upload-pack
// above it waits for its client at about 4 MiB RSS and no CPU (bench
// "shim modes": 3.98 MiB per waiting upload-pack). Counting them in one
// pool would let upload-packs waiting on their pack-objects hold every
// slot while those pack-objects wait: a deadlock. Pushes (receive-pack)
// get a class of their own so no clone storm can take their slots. Only
// the pack class is adapted (agent/adaptive's BudgetController); the
// numbers and the law are in docs/host-budget.md.
package limiter
