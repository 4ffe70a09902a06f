package limiter

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"
)

// Group links the limiters and budgets whose slots one request may take
// together: a limiter of the group tells it when its slots free up, and
// the group looks at its budgets' waiters again. The agent owns one.
type Group struct {
	mu      sync.Mutex // guards budgets
	budgets []*Budget
}

// NewGroup returns an empty group.
func NewGroup() *Group { return &Group{} }

// pump admits what budget waiters can be admitted now. It is called with
// no lock held; nil does nothing.
func (g *Group) pump() {
	if g == nil {
		return
	}
	g.mu.Lock()
	bs := slices.Clone(g.budgets)
	g.mu.Unlock()
	for _, b := range bs {
		b.pump()
	}
}

// BudgetConfig is the static part of one budget class.
type BudgetConfig struct {
	// Name is the class name, used in metrics and messages.
	Name string
	// Limit is how many commands of the class run at once on the host;
	// below 1 it is treated as 1.
	Limit int
}

// Claim is a slot of a rule's limiter that a budget request takes with
// its budget slot: all of them or none.
type Claim struct {
	Limiter *Limiter
	Key     string
}

// Request is one admission through a budget.
type Request struct {
	// FairKey is the key fair shares are computed across (a client
	// network, a user, a repository).
	FairKey string
	// Weight is the key's share relative to others (>= 1).
	Weight int
	// Claims are the rule slots taken together with the budget slot.
	// Their limiters bound the wait: the queue of each claimed key
	// (its own waiters and budget waiters claiming it) must have room
	// (max_queue_size), and the request waits at most the shortest
	// max_queue_wait of them.
	Claims []Claim
	// MaxQueueWait bounds the wait when there are no claims (0: no
	// waiting at all).
	MaxQueueWait time.Duration
	// LIFO serves this request's key newest first (its rule's
	// queue_order = "lifo"); FIFO otherwise.
	LIFO bool
	// Since is when the request first queued, before an agent restart
	// (zero: now): it queues in its key ahead of later arrivals, and its
	// key competes with that age on ties. The wait bound starts now.
	Since time.Time
}

// Budget is one class's host-wide limit: at most Limit() commands of the
// class run at once, whatever their keys. Waiters are served by weighted
// max-min fairness across fair keys: when a slot frees, it goes to the
// waiting key that runs the fewest commands per unit of weight (ties: the
// key served longest ago, then the key whose oldest waiter came first);
// within a key, first come first served (newest first when the
// newest waiter's rule has queue_order = "lifo"). Shares are of slots held now,
// the quantity a budget divides: with 8 slots, a key with 40 waiters and
// four keys with 2 each run 4 and 1 each, not 8 and 0.
//
// A request's rule slots (its claims) are taken in the same step as its
// budget slot, under every lock involved, so a request holds all its
// slots or none, and a waiter never holds a slot while it waits: no
// hold-and-wait, hence no deadlock, whatever rules a request spans.
type Budget struct {
	name  string
	clock Clock
	group *Group

	mu      sync.Mutex // guards the fields below; taken before any Limiter's
	limit   int
	running int
	waiting int
	seq     uint64
	grants  uint64
	keys    map[string]*fairKey
	// Totals since start.
	admitted, droppedSize, droppedTime uint64
}

type fairKey struct {
	running int
	weight  int
	queue   []*ticket
	// lastGrant orders keys with equal shares: the one served longest
	// ago goes first (round robin), so a limit of 1 still alternates.
	lastGrant uint64
}

type ticket struct {
	key      string
	seq      uint64
	since    time.Time // queue order within the key
	claims   []Claim   // sorted by limiter id, deduplicated limiters
	ready    chan struct{}
	admitted bool
	pos      chan [2]int
	lifo     bool
}

// NewBudget returns a budget for cfg in group g (nil: a budget without
// claims on group limiters).
func NewBudget(cfg BudgetConfig, g *Group, opts ...Option) *Budget {
	tmp := &Limiter{clock: realClock{}}
	for _, o := range opts {
		o(tmp)
	}
	b := &Budget{name: cfg.Name, clock: tmp.clock, group: g, limit: max(cfg.Limit, 1), keys: map[string]*fairKey{}}
	if g != nil {
		g.mu.Lock()
		g.budgets = append(g.budgets, b)
		g.mu.Unlock()
	}
	return b
}

// Name returns the class name.
func (b *Budget) Name() string { return b.name }

// Limit returns the budget's limit now.
func (b *Budget) Limit() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}

// SetLimit changes the budget's limit. Running commands keep their slots;
// a higher limit admits waiters at once, a lower one applies as slots are
// released.
func (b *Budget) SetLimit(n int) {
	b.mu.Lock()
	b.limit = max(n, 1)
	b.mu.Unlock()
	b.pump()
}

// Acquire waits for a budget slot and every claimed rule slot of req. It
// returns the time waited and a release function to call exactly once
// (it releases every slot). Errors are those of Limiter.Acquire:
// ErrQueueFull when a claimed key's queue is full, ErrQueueTimeout after
// the wait bound, or ctx's error.
func (b *Budget) Acquire(ctx context.Context, req Request, onQueued QueueFunc) (release func(), waited time.Duration, err error) {
	start := b.clock.Now()
	queuedAt := req.Since
	if queuedAt.IsZero() || queuedAt.After(start) {
		queuedAt = start
	}
	claims := sortClaims(req.Claims)
	maxWait := req.MaxQueueWait
	if len(claims) > 0 {
		maxWait = -1
	}
	b.mu.Lock()
	if b.waiting == 0 && b.running < b.limit && takeClaims(claims, false) {
		b.grantLocked(req.FairKey, req.Weight)
		b.mu.Unlock()
		return b.releaser(req.FairKey, claims), 0, nil
	}
	// Wait, if every claimed key's queue has room.
	for _, c := range claims {
		w, ok := c.Limiter.roomToWait(c.Key)
		if !ok && b.running < b.limit && takeClaims(claims, false) {
			// No room to wait, but nothing to wait for either: rather
			// than turn it away with a slot free, admit it.
			b.grantLocked(req.FairKey, req.Weight)
			b.mu.Unlock()
			return b.releaser(req.FairKey, claims), 0, nil
		}
		if !ok {
			b.droppedSize++
			b.mu.Unlock()
			c.Limiter.countDrop(false)
			return nil, 0, ErrQueueFull
		}
		if maxWait < 0 || w < maxWait {
			maxWait = w
		}
	}
	if maxWait <= 0 {
		b.droppedSize++
		b.mu.Unlock()
		return nil, 0, ErrQueueFull
	}
	for _, c := range claims {
		c.Limiter.addExternal(c.Key, 1)
	}
	b.seq++
	t := &ticket{key: req.FairKey, seq: b.seq, since: queuedAt, claims: claims, ready: make(chan struct{}), pos: make(chan [2]int, 1), lifo: req.LIFO}
	fk := b.keys[req.FairKey]
	if fk == nil {
		fk = &fairKey{}
		b.keys[req.FairKey] = fk
	}
	fk.weight = max(req.Weight, 1)
	fk.queue = insertBySince(fk.queue, t, func(q *ticket) time.Time { return q.since })
	b.waiting++
	b.notifyLocked(fk)
	// Others wait: the newcomer queues, and is admitted at once if it is
	// the fairest admissible waiter (a free slot goes by fairness, not
	// by who asked last).
	b.pumpLocked()
	b.mu.Unlock()

	expired, stop := b.clock.NewTimer(maxWait)
	defer stop()
	since := func() time.Duration { return b.clock.Now().Sub(start) }
	for {
		select {
		case <-t.ready:
			return b.releaser(req.FairKey, claims), since(), nil
		case p := <-t.pos:
			if onQueued != nil {
				onQueued(p[0], p[1])
			}
		case <-expired:
			if b.leave(t, true) {
				return b.releaser(req.FairKey, claims), since(), nil
			}
			return nil, since(), ErrQueueTimeout
		case <-ctx.Done():
			if b.leave(t, false) {
				b.releaser(req.FairKey, claims)()
			}
			return nil, since(), ctx.Err()
		}
	}
}

// Adopt counts a command already running under fairKey (restart
// recovery), even above the limit, and returns its release function.
func (b *Budget) Adopt(fairKey string) (release func()) {
	b.mu.Lock()
	b.grantLocked(fairKey, 1)
	b.admitted--
	b.mu.Unlock()
	return b.releaser(fairKey, nil)
}

func (b *Budget) grantLocked(key string, weight int) {
	fk := b.keys[key]
	if fk == nil {
		fk = &fairKey{weight: max(weight, 1)}
		b.keys[key] = fk
	}
	fk.running++
	b.running++
	b.admitted++
	b.grants++
	fk.lastGrant = b.grants
}

func (b *Budget) releaser(key string, claims []Claim) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			fk := b.keys[key]
			fk.running--
			b.running--
			b.dropIfIdleLocked(key, fk)
			b.mu.Unlock()
			for _, c := range claims {
				c.Limiter.releaser(c.Key)() // each pumps the group
			}
			if len(claims) == 0 {
				b.pump()
			}
		})
	}
}

func (b *Budget) dropIfIdleLocked(key string, fk *fairKey) {
	if fk.running == 0 && len(fk.queue) == 0 {
		delete(b.keys, key)
	}
}

// leave takes t out of its queue; it reports true when t had been
// admitted already (the caller then owns its slots).
func (b *Budget) leave(t *ticket, timedOut bool) bool {
	b.mu.Lock()
	if t.admitted {
		b.mu.Unlock()
		return true
	}
	fk := b.keys[t.key]
	if i := slices.Index(fk.queue, t); i >= 0 {
		fk.queue = slices.Delete(fk.queue, i, i+1)
	}
	b.waiting--
	if timedOut {
		b.droppedTime++
	}
	for _, c := range t.claims {
		c.Limiter.addExternal(c.Key, -1)
	}
	b.notifyLocked(fk)
	b.dropIfIdleLocked(t.key, fk)
	b.mu.Unlock()
	if timedOut && len(t.claims) > 0 {
		t.claims[0].Limiter.countDrop(true)
	}
	return false
}

// pump admits waiters while the budget has room: the backlogged key with
// the fewest running commands per unit of weight first, its oldest waiter
// whose claims can all be taken now.
func (b *Budget) pump() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pumpLocked()
}

func (b *Budget) pumpLocked() {
	for b.running < b.limit && b.waiting > 0 {
		if !b.admitOneLocked() {
			return
		}
	}
}

func (b *Budget) admitOneLocked() bool {
	type cand struct {
		key string
		fk  *fairKey
	}
	cands := make([]cand, 0, len(b.keys))
	for k, fk := range b.keys {
		if len(fk.queue) > 0 {
			cands = append(cands, cand{k, fk})
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		a, c := cands[i].fk, cands[j].fk
		// running/weight compared without division.
		if x, y := a.running*c.weight, c.running*a.weight; x != y {
			return x < y
		}
		if a.lastGrant != c.lastGrant {
			return a.lastGrant < c.lastGrant
		}
		if x, y := a.queue[0].since, c.queue[0].since; !x.Equal(y) {
			return x.Before(y)
		}
		return a.queue[0].seq < c.queue[0].seq
	})
	for _, c := range cands {
		q := c.fk.queue
		for j := range q {
			i := j
			if q[len(q)-1].lifo {
				i = len(q) - 1 - j // newest first
			}
			t := q[i]
			if !takeClaims(t.claims, true) {
				continue
			}
			c.fk.queue = slices.Delete(c.fk.queue, i, i+1)
			b.waiting--
			t.admitted = true
			close(t.ready)
			c.fk.running++
			b.running++
			b.admitted++
			b.grants++
			c.fk.lastGrant = b.grants
			b.notifyLocked(c.fk)
			return true
		}
	}
	return false
}

// notifyLocked tells fk's waiters their position in their key's queue
// (from the back when the key is served newest first) and how many wait
// in the whole budget.
func (b *Budget) notifyLocked(fk *fairKey) {
	n := len(fk.queue)
	for i, t := range fk.queue {
		select {
		case <-t.pos:
		default:
		}
		pos := i + 1
		if fk.queue[n-1].lifo {
			pos = n - i
		}
		t.pos <- [2]int{pos, b.waiting}
	}
}

// sortClaims orders claims by limiter id (the lock order) and drops
// nothing; a limiter claimed twice is locked once.
func sortClaims(cs []Claim) []Claim {
	out := slices.Clone(cs)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Limiter.id < out[j].Limiter.id })
	return out
}

// takeClaims takes one slot of every claim, or none: it locks every
// claimed limiter (in id order), checks each key runs below its limit,
// and takes them all. waiting says the claims were counted as external
// waiters, which this ends.
func takeClaims(cs []Claim, waiting bool) bool {
	var locked []*Limiter
	for _, c := range cs {
		if !slices.Contains(locked, c.Limiter) {
			c.Limiter.mu.Lock()
			locked = append(locked, c.Limiter)
		}
	}
	defer func() {
		for _, l := range locked {
			l.mu.Unlock()
		}
	}()
	type slot struct {
		l   *Limiter
		key string
	}
	need := map[slot]int{}
	for _, c := range cs {
		l := c.Limiter
		running := need[slot{l, c.Key}]
		if ks := l.keys[c.Key]; ks != nil {
			running += ks.running
		}
		need[slot{l, c.Key}]++
		if running >= l.limit {
			return false
		}
	}
	for _, c := range cs {
		l := c.Limiter
		ks := l.keys[c.Key]
		if ks == nil {
			ks = &keyState{}
			l.keys[c.Key] = ks
		}
		if waiting {
			ks.external--
			l.external--
		}
		ks.running++
		l.running++
		l.admitted++
	}
	return true
}

// roomToWait reports whether key's queue (its own waiters and budget
// waiters claiming it) has room for one more, and this rule's wait bound.
func (l *Limiter) roomToWait(key string) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	if ks := l.keys[key]; ks != nil {
		n = len(ks.queue) + ks.external
	}
	return l.cfg.MaxQueueWait, n < l.cfg.MaxQueueSize && l.cfg.MaxQueueWait > 0
}

// addExternal counts d budget waiters claiming key.
func (l *Limiter) addExternal(key string, d int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ks := l.keys[key]
	if ks == nil {
		ks = &keyState{}
		l.keys[key] = ks
	}
	ks.external += d
	l.external += d
	l.dropKeyIfIdleLocked(key, ks)
}

// countDrop counts a budget waiter of this rule turned away.
func (l *Limiter) countDrop(timedOut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if timedOut {
		l.droppedTime++
	} else {
		l.droppedSize++
	}
}

// BudgetStats is a point-in-time view of a Budget.
type BudgetStats struct {
	Name                     string
	Limit, Running, Queued   int
	Keys, BackloggedKeys     int
	MaxKeyRunning            int
	Admitted                 uint64
	DroppedSize, DroppedTime uint64
	// Fairness is Jain's index of running/weight over the keys that
	// wait (1 = every backlogged key gets the same weighted share; 1/n =
	// one key has it all); 1 when fewer than two keys wait.
	Fairness float64
}

// Stats returns the budget's counters.
func (b *Budget) Stats() BudgetStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := BudgetStats{Name: b.name, Limit: b.limit, Running: b.running, Queued: b.waiting, Keys: len(b.keys),
		Admitted: b.admitted, DroppedSize: b.droppedSize, DroppedTime: b.droppedTime, Fairness: 1}
	var sum, sq float64
	n := 0
	for _, fk := range b.keys {
		s.MaxKeyRunning = max(s.MaxKeyRunning, fk.running)
		if len(fk.queue) == 0 {
			continue
		}
		x := float64(fk.running) / float64(max(fk.weight, 1))
		sum += x
		sq += x * x
		n++
	}
	s.BackloggedKeys = n
	if n >= 2 && sq > 0 {
		s.Fairness = sum * sum / (float64(n) * sq)
	}
	return s
}
