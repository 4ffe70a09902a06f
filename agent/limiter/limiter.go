package limiter

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Queue orders a Limiter can serve waiters in (policy queue_order).
const (
	OrderFIFO = "fifo"
	OrderLIFO = "lifo"
)

// Errors Acquire returns when it does not grant a slot.
var (
	// ErrQueueFull: the key's queue already held max_queue_size waiters.
	ErrQueueFull = errors.New("queue full")
	// ErrQueueTimeout: the waiter waited max_queue_wait without a slot.
	ErrQueueTimeout = errors.New("queue wait exceeded")
)

// Config is the static part of one rule's limiter.
type Config struct {
	// Name is the rule name, used in metrics and messages.
	Name string
	// Limit is the in-flight limit per key; below 1 it is treated as 1.
	Limit int
	// MaxQueueSize is how many waiters a key may hold; 0 means a request
	// that finds no free slot is rejected at once.
	MaxQueueSize int
	// MaxQueueWait bounds how long a waiter waits; 0 means it is rejected
	// as soon as it would have to wait (the policy never allows 0).
	MaxQueueWait time.Duration
	// Order is OrderFIFO (the zero value "" means FIFO too) or OrderLIFO.
	Order string
}

// Limiter is a keyed semaphore with a bounded queue per key: at most
// Limit() requests per key run at once, up to MaxQueueSize more wait, and a
// waiter gives up after MaxQueueWait. One Limiter serves one policy rule.
type Limiter struct {
	name  string
	clock Clock
	// id orders locks when a budget takes slots of several limiters at
	// once (budget.go).
	id uint64
	// group is told when slots free up, so budget waiters holding claims
	// on this limiter are looked at again; nil without budgets.
	group *Group

	mu    sync.Mutex // guards the fields below
	cfg   Config
	limit int
	keys  map[string]*keyState
	// Totals across keys, kept so that stats never walk the key map.
	running, queued                    int
	admitted, droppedSize, droppedTime uint64
	// external counts budget waiters that hold a claim on one of this
	// limiter's keys (they wait in the budget's queue, not here).
	external int
}

type keyState struct {
	running int
	// external is how many budget waiters claim a slot of this key: they
	// count against max_queue_size like the key's own queue.
	external int
	// queue holds waiters in arrival order; FIFO serves from the front,
	// LIFO from the back.
	queue []*waiter
}

type waiter struct {
	since    time.Time     // when it first queued (queue order)
	ready    chan struct{} // closed when admitted
	admitted bool          // set under Limiter.mu before ready is closed
	// pos receives the waiter's latest queue position (1 = next); it
	// holds at most one value and a newer one replaces an older one.
	pos chan [2]int
}

// Option changes how New builds a Limiter.
type Option func(*Limiter)

// WithClock makes the limiter read time from c instead of the real clock
// (a simulated host; see Clock).
func WithClock(c Clock) Option { return func(l *Limiter) { l.clock = c } }

// WithGroup makes the limiter tell g whenever slots free up, so that
// budgets of g whose waiters claim slots of this limiter can admit them.
func WithGroup(g *Group) Option { return func(l *Limiter) { l.group = g } }

var limiterIDs atomic.Uint64

// New returns a limiter for cfg.
func New(cfg Config, opts ...Option) *Limiter {
	if cfg.Limit < 1 {
		cfg.Limit = 1
	}
	l := &Limiter{name: cfg.Name, clock: realClock{}, cfg: cfg, limit: cfg.Limit, keys: make(map[string]*keyState), id: limiterIDs.Add(1)}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Name returns the rule name.
func (l *Limiter) Name() string { return l.name }

// Config returns the limiter's configuration.
func (l *Limiter) Config() Config {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg
}

// Reconfigure applies a reloaded rule. Nothing running or queued is
// dropped: requests already queued keep their place and the wait bound
// they started with, even if the new queue is smaller; a new limit applies
// to admissions from now on (a higher one admits waiters at once).
func (l *Limiter) Reconfigure(cfg Config) {
	if cfg.Limit < 1 {
		cfg.Limit = 1
	}
	cfg.Name = l.name
	l.mu.Lock()
	l.cfg = cfg
	l.limit = cfg.Limit
	for _, ks := range l.keys {
		l.admitLocked(ks)
	}
	l.mu.Unlock()
	l.group.pump()
}

// QueueFunc is told a waiter's position (1 = next to be admitted) and the
// length of its key's queue, when it joins the queue and whenever either
// changes. It runs on the goroutine that called Acquire.
type QueueFunc func(position, length int)

// Acquire waits for a slot for key. It returns the time spent waiting and a
// release function that must be called exactly once when the work is done.
// It fails with ErrQueueFull, ErrQueueTimeout, or ctx's error when ctx ends
// first (the waiter then leaves the queue at once).
func (l *Limiter) Acquire(ctx context.Context, key string, onQueued QueueFunc) (release func(), waited time.Duration, err error) {
	return l.AcquireSince(ctx, key, time.Time{}, onQueued)
}

// AcquireSince is Acquire for a request that first queued at queuedSince,
// before an agent restart (zero: now): it queues ahead of the waiters
// that arrived after it, as if it had never left the queue. Its wait
// bound starts now.
func (l *Limiter) AcquireSince(ctx context.Context, key string, queuedSince time.Time, onQueued QueueFunc) (release func(), waited time.Duration, err error) {
	start := l.clock.Now()
	queuedAt := queuedSince
	if queuedAt.IsZero() || queuedAt.After(start) {
		queuedAt = start
	}
	l.mu.Lock()
	ks := l.keys[key]
	if ks == nil {
		ks = &keyState{}
		l.keys[key] = ks
	}
	if ks.running < l.limit && len(ks.queue) == 0 {
		ks.running++
		l.running++
		l.admitted++
		l.mu.Unlock()
		return l.releaser(key), 0, nil
	}
	if len(ks.queue)+ks.external >= l.cfg.MaxQueueSize || l.cfg.MaxQueueWait <= 0 {
		l.droppedSize++
		l.dropKeyIfIdleLocked(key, ks)
		l.mu.Unlock()
		return nil, 0, ErrQueueFull
	}
	w := &waiter{since: queuedAt, ready: make(chan struct{}), pos: make(chan [2]int, 1)}
	ks.queue = insertBySince(ks.queue, w, func(q *waiter) time.Time { return q.since })
	l.queued++
	l.notifyPositionsLocked(ks)
	maxWait := l.cfg.MaxQueueWait
	l.mu.Unlock()

	expired, stop := l.clock.NewTimer(maxWait)
	defer stop()
	since := func() time.Duration { return l.clock.Now().Sub(start) }
	for {
		select {
		case <-w.ready:
			return l.releaser(key), since(), nil
		case p := <-w.pos:
			if onQueued != nil {
				onQueued(p[0], p[1])
			}
		case <-expired:
			if l.leave(key, w, true) {
				return l.releaser(key), since(), nil
			}
			return nil, since(), ErrQueueTimeout
		case <-ctx.Done():
			if l.leave(key, w, false) {
				// Admitted in the same instant the caller went away:
				// give the slot back so the next waiter gets it.
				l.releaser(key)()
			}
			return nil, since(), ctx.Err()
		}
	}
}

// leave takes w out of key's queue. It reports true when w had been
// admitted already (so the caller owns a slot); timedOut counts the drop.
func (l *Limiter) leave(key string, w *waiter, timedOut bool) (admitted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.admitted {
		return true
	}
	ks := l.keys[key]
	for i, q := range ks.queue {
		if q == w {
			ks.queue = append(ks.queue[:i], ks.queue[i+1:]...)
			break
		}
	}
	l.queued--
	if timedOut {
		l.droppedTime++
	}
	l.notifyPositionsLocked(ks)
	l.dropKeyIfIdleLocked(key, ks)
	return false
}

// Adopt counts a command that is already running under key (recovered
// after a restart), even above the limit: it cannot be stopped, only
// waited for. It returns the release function.
func (l *Limiter) Adopt(key string) (release func()) {
	l.mu.Lock()
	ks := l.keys[key]
	if ks == nil {
		ks = &keyState{}
		l.keys[key] = ks
	}
	ks.running++
	l.running++
	l.mu.Unlock()
	return l.releaser(key)
}

func (l *Limiter) releaser(key string) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			ks := l.keys[key]
			ks.running--
			l.running--
			l.admitLocked(ks)
			l.dropKeyIfIdleLocked(key, ks)
			l.mu.Unlock()
			l.group.pump()
		})
	}
}

// admitLocked hands free slots of ks to its waiters in queue order.
func (l *Limiter) admitLocked(ks *keyState) {
	changed := false
	for ks.running < l.limit && len(ks.queue) > 0 {
		var w *waiter
		if l.cfg.Order == OrderLIFO {
			w = ks.queue[len(ks.queue)-1]
			ks.queue[len(ks.queue)-1] = nil
			ks.queue = ks.queue[:len(ks.queue)-1]
		} else {
			w = ks.queue[0]
			ks.queue[0] = nil
			ks.queue = ks.queue[1:]
		}
		w.admitted = true
		close(w.ready)
		ks.running++
		l.running++
		l.queued--
		l.admitted++
		changed = true
	}
	if changed {
		l.notifyPositionsLocked(ks)
	}
}

// notifyPositionsLocked tells every waiter of ks its current position.
func (l *Limiter) notifyPositionsLocked(ks *keyState) {
	n := len(ks.queue)
	for i, w := range ks.queue {
		pos := i + 1
		if l.cfg.Order == OrderLIFO {
			pos = n - i
		}
		select {
		case <-w.pos: // replace a stale position nobody read yet
		default:
		}
		w.pos <- [2]int{pos, n}
	}
}

// dropKeyIfIdleLocked forgets a key with nothing running or queued, so the
// key map holds only live keys however many distinct keys pass through.
func (l *Limiter) dropKeyIfIdleLocked(key string, ks *keyState) {
	if ks.running == 0 && len(ks.queue) == 0 && ks.external == 0 {
		delete(l.keys, key)
	}
}

// SetLimit changes the per-key limit. Requests already running keep their
// slots; a higher limit admits waiters at once, a lower one takes effect as
// slots are released.
func (l *Limiter) SetLimit(n int) {
	if n < 1 {
		n = 1
	}
	l.mu.Lock()
	l.limit = n
	for _, ks := range l.keys {
		l.admitLocked(ks)
	}
	l.mu.Unlock()
	l.group.pump()
}

// KeyRunning returns how many run under key now.
func (l *Limiter) KeyRunning(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ks := l.keys[key]; ks != nil {
		return ks.running
	}
	return 0
}

// Stats is a point-in-time view of a Limiter.
type Stats struct {
	Name  string
	Limit int
	// Queued counts the rule's own waiters and budget waiters claiming
	// one of its slots.
	Running, Queued, Keys int
	// MaxKeyRunning is how many run under the busiest key.
	MaxKeyRunning            int
	Admitted                 uint64
	DroppedSize, DroppedTime uint64
}

// Stats returns the limiter's counters.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	busiest := 0
	for _, ks := range l.keys {
		busiest = max(busiest, ks.running)
	}
	return Stats{
		Name: l.name, Limit: l.limit, MaxKeyRunning: busiest,
		Running: l.running, Queued: l.queued + l.external, Keys: len(l.keys),
		Admitted: l.admitted, DroppedSize: l.droppedSize, DroppedTime: l.droppedTime,
	}
}

// insertBySince inserts x into q, kept in order of since: after every
// element that came at or before x, before the first that came later
// (a fresh arrival therefore goes at the back, as before).
func insertBySince[T any](q []T, x T, since func(T) time.Time) []T {
	i := len(q)
	for i > 0 && since(q[i-1]).After(since(x)) {
		i--
	}
	return slices.Insert(q, i, x)
}
