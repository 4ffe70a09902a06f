package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

type bresult struct {
	key     string
	release func()
	err     error
}

func startB(ctx context.Context, b *Budget, req Request, out chan<- bresult) {
	go func() {
		rel, _, err := b.Acquire(ctx, req, nil)
		out <- bresult{key: req.FairKey, release: rel, err: err}
	}()
}

// TestBudgetMaxMinOrder: one key with 40 waiters (queued first) and
// four keys with 2 each share a budget of 10. Served by max-min
// fairness, each of the five keys gets 2 slots (the heavy key no more
// than the light ones, though it queued first and asks for 40); and with
// a budget of 1, the slot goes round the keys instead of staying with
// the key that queued first.
func TestBudgetMaxMinOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBudget(BudgetConfig{Name: "pack", Limit: 10}, nil)
		hold, _, err := b.Acquire(t.Context(), Request{FairKey: "x", MaxQueueWait: time.Hour}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b.SetLimit(1) // everybody queues behind "x"
		out := make(chan bresult, 64)
		req := func(k string) Request { return Request{FairKey: k, Weight: 1, MaxQueueWait: time.Hour} }
		for range 40 {
			startB(t.Context(), b, req("heavy"), out)
		}
		synctest.Wait()
		for _, k := range []string{"a", "b", "c", "d"} {
			for range 2 {
				startB(t.Context(), b, req(k), out)
			}
		}
		synctest.Wait()
		hold()
		b.SetLimit(10)
		synctest.Wait()
		got := map[string]int{}
		var held []func()
		for range 10 {
			r := <-out
			got[r.key]++
			held = append(held, r.release)
		}
		if fmt.Sprint(got) != "map[a:2 b:2 c:2 d:2 heavy:2]" {
			t.Fatalf("10 slots went %v, want 2 to each key", got)
		}
		if len(out) != 0 {
			t.Fatalf("%d admitted beyond the budget", len(out))
		}
		if s := b.Stats(); s.Fairness < 0.99 || s.BackloggedKeys != 1 {
			t.Errorf("stats %+v: want only heavy backlogged, Jain's index 1", s)
		}
		// Limit 1: releases alternate between keys with waiters.
		for _, k := range []string{"a", "b", "c", "d"} {
			startB(t.Context(), b, req(k), out)
		}
		synctest.Wait()
		b.SetLimit(1)
		for _, rel := range held {
			rel()
		}
		synctest.Wait()
		var order []string
		for range 6 {
			r := <-out
			order = append(order, r.key)
			r.release()
			synctest.Wait()
		}
		seen := map[string]bool{}
		for _, k := range order[:5] {
			seen[k] = true
		}
		if len(seen) != 5 {
			t.Fatalf("with one slot, 5 grants went to %v: want each backlogged key once", order)
		}
		b.SetLimit(100)
		synctest.Wait()
		for len(out) > 0 {
			(<-out).release()
		}
		if s := b.Stats(); s.Running != 0 || s.Queued != 0 || s.Keys != 0 {
			t.Fatalf("after all released: %+v", s)
		}
	})
}

// TestBudgetWeights: weight 4 against weight 1, both backlogged, 10
// slots: 8 and 2.
func TestBudgetWeights(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBudget(BudgetConfig{Name: "pack", Limit: 1}, nil)
		hold, _, _ := b.Acquire(t.Context(), Request{FairKey: "x"}, nil)
		out := make(chan bresult, 64)
		for range 20 {
			startB(t.Context(), b, Request{FairKey: "ci", Weight: 1, MaxQueueWait: time.Hour}, out)
			startB(t.Context(), b, Request{FairKey: "people", Weight: 4, MaxQueueWait: time.Hour}, out)
		}
		synctest.Wait()
		hold()
		b.SetLimit(10)
		synctest.Wait()
		got := map[string]int{}
		for range 10 {
			r := <-out
			got[r.key]++
			defer r.release()
		}
		if got["people"] != 8 || got["ci"] != 2 {
			t.Fatalf("10 slots went %v, want people 8, ci 2 (weights 4:1)", got)
		}
		b.SetLimit(100)
		synctest.Wait()
		for len(out) > 0 {
			defer (<-out).release()
		}
	})
}

// TestBudgetClaimsAllOrNone: a request needing a budget slot and a
// per-key slot waits without holding either, and a budget slot does not
// sit idle behind a waiter whose per-key cap is full: another key's
// waiter takes it.
func TestBudgetClaimsAllOrNone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGroup()
		perIP := New(Config{Name: "pack-objects", Limit: 1, MaxQueueSize: 10, MaxQueueWait: time.Hour}, WithGroup(g))
		b := NewBudget(BudgetConfig{Name: "pack", Limit: 2}, g)
		req := func(ip string) Request {
			return Request{FairKey: ip, Weight: 1, Claims: []Claim{{perIP, ip}}}
		}
		r1, _, err := b.Acquire(t.Context(), req("a"), nil)
		if err != nil {
			t.Fatal(err)
		}
		out := make(chan bresult, 4)
		startB(t.Context(), b, req("a"), out) // per-key cap: waits, holds nothing
		synctest.Wait()
		if s := b.Stats(); s.Running != 1 || s.Queued != 1 {
			t.Fatalf("budget %+v: the waiter must hold no budget slot", s)
		}
		if s := perIP.Stats(); s.Running != 1 || s.Queued != 1 {
			t.Fatalf("rule %+v: the waiter counts in the rule's queue, holds no slot", s)
		}
		startB(t.Context(), b, req("b"), out) // free key: admitted at once
		synctest.Wait()
		if r := <-out; r.key != "b" || r.err != nil {
			t.Fatalf("got %+v, want b admitted past the blocked a", r)
		} else {
			defer r.release()
		}
		r1()
		synctest.Wait()
		r := <-out
		if r.key != "a" || r.err != nil {
			t.Fatalf("got %+v, want the waiting a admitted when a's slot freed", r)
		}
		r.release()
		if s := perIP.Stats(); s.Running != 1 || s.Queued != 0 {
			t.Fatalf("rule %+v", s)
		}
	})
}

func TestBudgetQueueFullFromRule(t *testing.T) {
	g := NewGroup()
	rule := New(Config{Name: "r", Limit: 1, MaxQueueSize: 0, MaxQueueWait: time.Second}, WithGroup(g))
	b := NewBudget(BudgetConfig{Name: "pack", Limit: 5}, g)
	rel, _, err := b.Acquire(context.Background(), Request{FairKey: "k", Claims: []Claim{{rule, "k"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	if _, _, err := b.Acquire(context.Background(), Request{FairKey: "k", Claims: []Claim{{rule, "k"}}}, nil); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("got %v, want ErrQueueFull from the rule's max_queue_size 0", err)
	}
	if s := rule.Stats(); s.DroppedSize != 1 {
		t.Fatalf("rule stats %+v: the drop counts under the rule", s)
	}
}

// TestBudgetModel is a randomized model test of composition: many
// goroutines take a budget slot together with one or two rule slots
// (per-address and per-repository caps), or a rule slot alone, with
// random holds, cancellations and queue timeouts. An independent count of
// what each holder holds checks at every admission that no limit is
// exceeded, and at the end that nothing leaked: every limiter and the
// budget are empty and have forgotten every key. Run it with -race.
func TestBudgetModel(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { modelRun(t, seed) })
	}
}

func modelRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 17))
	g := NewGroup()
	perIP := New(Config{Name: "ip", Limit: 2, MaxQueueSize: 6, MaxQueueWait: 20 * time.Millisecond}, WithGroup(g))
	perRepo := New(Config{Name: "repo", Limit: 3, MaxQueueSize: 8, MaxQueueWait: 30 * time.Millisecond}, WithGroup(g))
	budgetLimit := 1 + int(rng.IntN(4))
	b := NewBudget(BudgetConfig{Name: "pack", Limit: budgetLimit}, g)
	lims := map[*Limiter]int{perIP: 2, perRepo: 3}

	var mu sync.Mutex
	held := map[string]int{} // "ip/k", "repo/k" → holders
	budgetHeld := 0
	var violations atomic.Int64
	var admitted, refused atomic.Int64
	take := func(claims []Claim, withBudget bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range claims {
			k := c.Limiter.Name() + "/" + c.Key
			held[k]++
			if held[k] > lims[c.Limiter] {
				violations.Add(1)
			}
		}
		if withBudget {
			budgetHeld++
			if budgetHeld > budgetLimit {
				violations.Add(1)
			}
		}
	}
	give := func(claims []Claim, withBudget bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range claims {
			held[c.Limiter.Name()+"/"+c.Key]--
		}
		if withBudget {
			budgetHeld--
		}
	}

	var wg sync.WaitGroup
	for w := range 24 {
		r := rand.New(rand.NewPCG(seed, uint64(w)))
		wg.Go(func() {
			for range 60 {
				ip := fmt.Sprint("10.0.0.", r.IntN(4))
				repo := fmt.Sprint("/r", r.IntN(3))
				var claims []Claim
				switch r.IntN(3) {
				case 0:
					claims = []Claim{{perIP, ip}}
				case 1:
					claims = []Claim{{perRepo, repo}, {perIP, ip}}
				default:
					claims = nil
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(40))*time.Millisecond)
				var rel func()
				var err error
				useBudget := r.IntN(5) != 0
				if useBudget {
					rel, _, err = b.Acquire(ctx, Request{FairKey: ip, Weight: 1 + r.IntN(3), Claims: claims, MaxQueueWait: 15 * time.Millisecond}, nil)
				} else {
					claims = []Claim{{perRepo, repo}}
					rel, _, err = perRepo.Acquire(ctx, repo, nil)
				}
				cancel()
				if err != nil {
					refused.Add(1)
					continue
				}
				admitted.Add(1)
				take(claims, useBudget)
				time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
				give(claims, useBudget)
				rel()
				if r.IntN(10) == 0 {
					rel() // release is idempotent
				}
			}
		})
	}
	wg.Wait()
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d admissions above a limit", v)
	}
	if admitted.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("admitted %d, refused %d: the model must exercise both", admitted.Load(), refused.Load())
	}
	for _, l := range []*Limiter{perIP, perRepo} {
		if s := l.Stats(); s.Running != 0 || s.Queued != 0 || s.Keys != 0 {
			t.Errorf("limiter %s leaked: %+v", l.Name(), s)
		}
	}
	if s := b.Stats(); s.Running != 0 || s.Queued != 0 || s.Keys != 0 {
		t.Errorf("budget leaked: %+v", s)
	}
	t.Logf("seed %d: budget %d, admitted %d, refused %d", seed, budgetLimit, admitted.Load(), refused.Load())
}

// TestBudgetLIFOWithinKey: a key whose rule serves newest first (LIFO)
// is served newest first inside the budget too.
func TestBudgetLIFOWithinKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBudget(BudgetConfig{Name: "upload-pack", Limit: 1}, nil)
		hold, _, _ := b.Acquire(t.Context(), Request{FairKey: "k"}, nil)
		out := make(chan int, 3)
		for i := range 3 {
			go func() {
				rel, _, err := b.Acquire(t.Context(), Request{FairKey: "k", MaxQueueWait: time.Hour, LIFO: true}, nil)
				if err == nil {
					out <- i
					rel()
				}
			}()
			synctest.Wait()
		}
		hold()
		synctest.Wait()
		if first := <-out; first != 2 {
			t.Fatalf("LIFO key served waiter %d first, want the newest (2)", first)
		}
		synctest.Wait()
		<-out
		<-out
	})
}

// TestBudgetRequeuedKeepOrder: within a fair key, re-queued requests
// take their original places ahead of fresh arrivals; across keys with
// equal shares, the key whose oldest waiter came first goes first.
func TestBudgetRequeuedKeepOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBudget(BudgetConfig{Name: "pack-objects", Limit: 1}, nil)
		t0 := time.Now()
		time.Sleep(10 * time.Second)
		hold, _, _ := b.Acquire(t.Context(), Request{FairKey: "h"}, nil)
		out := make(chan string, 4)
		for _, w := range []struct {
			id, key string
			since   time.Time
		}{{"a-fresh", "a", time.Time{}}, {"a-old", "a", t0.Add(2 * time.Second)}, {"b-old", "b", t0.Add(time.Second)}, {"b-fresh", "b", time.Time{}}} {
			go func() {
				rel, _, err := b.Acquire(t.Context(), Request{FairKey: w.key, MaxQueueWait: time.Hour, Since: w.since}, nil)
				if err == nil {
					out <- w.id
					rel()
				}
			}()
			synctest.Wait()
		}
		hold()
		var got []string
		for range 4 {
			synctest.Wait()
			got = append(got, <-out)
		}
		// b's oldest (t0+1s) before a's (t0+2s); then round robin.
		if want := []string{"b-old", "a-old", "b-fresh", "a-fresh"}; !slices.Equal(got, want) {
			t.Fatalf("admitted in order %v, want %v", got, want)
		}
	})
}
