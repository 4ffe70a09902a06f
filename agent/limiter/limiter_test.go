package limiter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

type result struct {
	id      int
	release func()
	err     error
	waited  time.Duration
}

// start launches Acquire for id in its own goroutine and reports on out.
func start(ctx context.Context, l *Limiter, key string, id int, out chan<- result) {
	go func() {
		rel, waited, err := l.Acquire(ctx, key, nil)
		out <- result{id: id, release: rel, err: err, waited: waited}
	}()
}

func TestLimiterQueueFullAndTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(Config{Name: "r", Limit: 2, MaxQueueSize: 5, MaxQueueWait: time.Second})
		ctx := context.Background()
		out := make(chan result, 20)
		for i := 0; i < 2; i++ {
			start(ctx, l, "k", i, out)
		}
		synctest.Wait()
		var held []func()
		for i := 0; i < 2; i++ {
			r := <-out
			if r.err != nil {
				t.Fatalf("holder %d: %v", r.id, r.err)
			}
			held = append(held, r.release)
		}
		for i := 2; i < 14; i++ {
			start(ctx, l, "k", i, out)
		}
		synctest.Wait()
		// 7 rejected at once as queue-full, 5 waiting.
		full := 0
		for len(out) > 0 {
			r := <-out
			if !errors.Is(r.err, ErrQueueFull) {
				t.Fatalf("request %d: got %v, want ErrQueueFull", r.id, r.err)
			}
			full++
		}
		if full != 7 {
			t.Fatalf("queue-full rejections = %d, want 7", full)
		}
		if s := l.Stats(); s.Queued != 5 || s.Running != 2 || s.DroppedSize != 7 {
			t.Fatalf("stats = %+v", s)
		}
		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		for i := 0; i < 5; i++ {
			r := <-out
			if !errors.Is(r.err, ErrQueueTimeout) || r.waited < time.Second {
				t.Fatalf("waiter %d: err %v waited %v", r.id, r.err, r.waited)
			}
		}
		if s := l.Stats(); s.Queued != 0 || s.DroppedTime != 5 {
			t.Fatalf("stats after timeout = %+v", s)
		}
		for _, rel := range held {
			rel()
		}
		if s := l.Stats(); s.Running != 0 || s.Keys != 0 {
			t.Fatalf("stats after release = %+v (keys must be forgotten)", s)
		}
	})
}

func testOrder(t *testing.T, order string, wantFirst int) {
	synctest.Test(t, func(t *testing.T) {
		l := New(Config{Name: "r", Limit: 1, MaxQueueSize: 10, MaxQueueWait: time.Minute, Order: order})
		ctx := context.Background()
		out := make(chan result, 10)
		start(ctx, l, "k", 0, out)
		synctest.Wait()
		holder := <-out
		for i := 1; i <= 3; i++ {
			start(ctx, l, "k", i, out)
			synctest.Wait() // arrival order must be deterministic
		}
		holder.release()
		synctest.Wait()
		r := <-out
		if r.id != wantFirst {
			t.Fatalf("%s: admitted %d first, want %d", order, r.id, wantFirst)
		}
		r.release()
		synctest.Wait()
		r2 := <-out
		r2.release()
		synctest.Wait()
		r3 := <-out
		r3.release()
	})
}

func TestLimiterFIFO(t *testing.T) { testOrder(t, OrderFIFO, 1) }
func TestLimiterLIFO(t *testing.T) { testOrder(t, OrderLIFO, 3) }

func TestLimiterKeysIndependent(t *testing.T) {
	l := New(Config{Name: "r", Limit: 1, MaxQueueSize: 0, MaxQueueWait: time.Second})
	relA, _, err := l.Acquire(context.Background(), "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	relB, _, err := l.Acquire(context.Background(), "b", nil)
	if err != nil {
		t.Fatalf("key b blocked by key a: %v", err)
	}
	if _, _, err := l.Acquire(context.Background(), "a", nil); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("second a: %v, want ErrQueueFull (queue size 0)", err)
	}
	relA()
	relB()
	relA() // release is idempotent
	if s := l.Stats(); s.Running != 0 {
		t.Fatalf("running = %d after double release", s.Running)
	}
}

func TestLimiterCancelLeavesQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(Config{Name: "r", Limit: 1, MaxQueueSize: 10, MaxQueueWait: time.Hour})
		hold, _, _ := l.Acquire(context.Background(), "k", nil)
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan result, 2)
		start(ctx, l, "k", 1, out)
		start(context.Background(), l, "k", 2, out)
		synctest.Wait()
		cancel()
		synctest.Wait()
		r := <-out
		if r.id != 1 || !errors.Is(r.err, context.Canceled) {
			t.Fatalf("got %d %v", r.id, r.err)
		}
		if s := l.Stats(); s.Queued != 1 || s.DroppedTime+s.DroppedSize != 0 {
			t.Fatalf("stats = %+v: a departed waiter is not a drop", s)
		}
		hold()
		synctest.Wait()
		r = <-out
		if r.id != 2 || r.err != nil {
			t.Fatalf("got %d %v", r.id, r.err)
		}
		r.release()
	})
}

func TestLimiterPositions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(Config{Name: "r", Limit: 1, MaxQueueSize: 10, MaxQueueWait: time.Hour})
		hold, _, _ := l.Acquire(context.Background(), "k", nil)
		var mu sync.Mutex
		seen := map[int][]string{}
		for i := 1; i <= 3; i++ {
			go func() {
				rel, _, err := l.Acquire(context.Background(), "k", func(p, n int) {
					mu.Lock()
					seen[i] = append(seen[i], fmt.Sprintf("%d/%d", p, n))
					mu.Unlock()
				})
				if err == nil {
					defer rel()
					time.Sleep(time.Millisecond)
				}
			}()
			synctest.Wait()
		}
		hold()
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		want := map[int]string{1: "[1/1 1/2 1/3]", 2: "[2/2 2/3 1/2]", 3: "[3/3 2/2 1/1]"}
		for i, w := range want {
			if got := fmt.Sprint(seen[i]); got != w {
				t.Errorf("waiter %d positions %s, want %s", i, got, w)
			}
		}
	})
}

func TestLimiterSetLimitAdmitsWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(Config{Name: "r", Limit: 1, MaxQueueSize: 10, MaxQueueWait: time.Hour})
		hold, _, _ := l.Acquire(context.Background(), "k", nil)
		out := make(chan result, 2)
		start(context.Background(), l, "k", 1, out)
		start(context.Background(), l, "k", 2, out)
		synctest.Wait()
		l.SetLimit(3)
		synctest.Wait()
		if len(out) != 2 {
			t.Fatalf("raising the limit admitted %d waiters, want 2", len(out))
		}
		(<-out).release()
		(<-out).release()
		hold()
		if s := l.Stats(); s.Running != 0 || s.Limit != 3 || s.Admitted != 3 {
			t.Fatalf("stats = %+v", s)
		}
	})
}

// fakeClock is a hand-driven Clock: time moves only in advance, and a
// timer fires when advance passes its deadline.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	return t.c, func() bool { return false }
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.c <- c.now
			continue
		}
		kept = append(kept, t)
	}
	c.timers = kept
}

// TestLimiterInjectedClock: with WithClock, max_queue_wait and the wait
// reported are measured on the injected clock, not the real one (a
// simulated host drives time itself).
func TestLimiterInjectedClock(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	l := New(Config{Name: "r", Limit: 1, MaxQueueSize: 1, MaxQueueWait: time.Hour}, WithClock(clk))
	hold, _, err := l.Acquire(context.Background(), "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hold()
	out := make(chan result, 1)
	queued := make(chan struct{})
	go func() {
		rel, waited, err := l.Acquire(context.Background(), "k", func(int, int) { close(queued) })
		out <- result{release: rel, err: err, waited: waited}
	}()
	<-queued // the waiter holds its timer now
	clk.advance(59 * time.Minute)
	select {
	case r := <-out:
		t.Fatalf("gave up before max_queue_wait on the injected clock: %+v", r)
	default:
	}
	clk.advance(time.Minute)
	r := <-out
	if !errors.Is(r.err, ErrQueueTimeout) || r.waited != time.Hour {
		t.Fatalf("after an hour of injected time: err %v, waited %v; want ErrQueueTimeout after 1h", r.err, r.waited)
	}
}

// TestLimiterRequeuedKeepOrder: waiters that queue again after an agent
// restart with the time they first queued take their old places: ahead
// of a fresh arrival, and among themselves in their original order,
// whatever order they reconnect in.
func TestLimiterRequeuedKeepOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(Config{Name: "r", Limit: 1, MaxQueueSize: 10, MaxQueueWait: time.Minute})
		t0 := time.Now()
		time.Sleep(10 * time.Second) // the restart happened in between
		hold, _, _ := l.Acquire(t.Context(), "k", nil)
		out := make(chan int, 4)
		for _, w := range []struct {
			id    int
			since time.Time
		}{{1, time.Time{}}, {4, t0.Add(3 * time.Second)}, {2, t0.Add(time.Second)}, {3, t0.Add(2 * time.Second)}} {
			go func() {
				rel, _, err := l.AcquireSince(t.Context(), "k", w.since, nil)
				if err == nil {
					out <- w.id
					rel()
				}
			}()
			synctest.Wait()
		}
		hold()
		var got []int
		for range 4 {
			synctest.Wait()
			got = append(got, <-out)
		}
		if want := []int{2, 3, 4, 1}; !slices.Equal(got, want) {
			t.Fatalf("admitted in order %v, want %v (original order, then the fresh arrival)", got, want)
		}
	})
}
