package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHostBudgetFairShares runs real sluiced with the shipped default
// rules and host budget (nothing in the file but the harness's socket,
// metrics and cgroups settings) and real git pack-objects through the
// shim in hook mode, as upload-pack runs it for a clone, with the client
// address in REMOTE_ADDR. One address (127.0.0.2) starts 40 at once;
// once they wait, four others (127.0.0.3-6) start 2 each. Every command
// takes about 300 ms (a wrapper in front of the real git), so the budget
// (derived from this host) is the bottleneck and a queue forms.
//
// Max-min fairness across client addresses serves each light address as
// soon as a slot frees, ahead of the 40 that queued first: each of the
// four completes its 2 commands (at least its fair share: with five
// backlogged addresses each is owed a fifth of the slots) while the heavy
// address completes no more than its own share plus the slots it held
// when they arrived. FIFO would finish all 40 heavy ones first.
func TestHostBudgetFairShares(t *testing.T) {
	heavyBefore, bound := fairnessStorm(t, "")
	for addr, n := range heavyBefore {
		if n > bound {
			t.Errorf("%s finished its 2 only after the heavy address completed %d (bound %d = its fair share 2 + twice the budget): starved",
				addr, n, bound)
		}
	}
}

// TestHostBudgetFairSharesControl runs the same storm with fairness off
// ([budget] fair_key = "global": one queue, first come first served) and
// checks that the light addresses are then starved: the bound above
// tells fair from unfair.
func TestHostBudgetFairSharesControl(t *testing.T) {
	heavyBefore, bound := fairnessStorm(t, "[budget]\nfair_key = \"global\"\n")
	for addr, n := range heavyBefore {
		if n <= bound {
			t.Errorf("without fairness %s still finished after %d heavy completions (bound %d): the storm does not tell fair from FIFO", addr, n, bound)
		}
	}
}

// fairnessStorm runs the storm with extra policy and returns, for each
// light address, how many heavy commands completed before its second,
// and the bound a fair share allows.
func fairnessStorm(t *testing.T, extra string) (map[string]int, int) {
	a := startAgent(t, extra, "open")
	repo := makeRepo(t, a.dir, "r", 3)
	slowGit := filepath.Join(a.dir, "slow-git")
	if err := os.WriteFile(slowGit, []byte(fmt.Sprintf("#!/bin/sh\nsleep 0.3\nexec %s \"$@\"\n", bins.realGit)), 0o755); err != nil {
		t.Fatal(err)
	}
	limit := int(a.metric(`sluice_host_budget_limit{class="pack"}`))
	if limit < 1 {
		t.Fatalf("sluice_host_budget_limit{class=\"pack\"} = %d: the default policy must turn the budget on", limit)
	}
	t.Logf("pack budget derived on this host: %d", limit)

	type done struct {
		addr string
		at   time.Time
		err  error
	}
	var mu sync.Mutex
	var finished []done
	var wg sync.WaitGroup
	clone := func(addr string) {
		defer wg.Done()
		cmd := exec.Command(bins.shim, "git", "pack-objects", "--all", "--stdout")
		cmd.Dir = repo
		cmd.Env = a.env("GIT_DIR=.", "REMOTE_ADDR="+addr, "REMOTE_PORT=40000", "SLUICE_REAL_GIT="+slowGit)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err == nil && len(out) == 0 {
			err = fmt.Errorf("empty pack")
		}
		if err != nil {
			err = fmt.Errorf("%v: %s", err, stderr.String())
		}
		mu.Lock()
		finished = append(finished, done{addr, time.Now(), err})
		mu.Unlock()
	}
	for range 40 {
		wg.Add(1)
		go clone("127.0.0.2")
	}
	waitFor(t, 30*time.Second, "the heavy address's commands queued in the pack budget", func() bool {
		return a.metric(`sluice_host_budget_queued{class="pack"}`) >= 20
	})
	lights := []string{"127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"}
	for _, addr := range lights {
		for range 2 {
			wg.Add(1)
			go clone(addr)
		}
	}
	wg.Wait()

	sort.Slice(finished, func(i, j int) bool { return finished[i].at.Before(finished[j].at) })
	heavyBefore := map[string]int{} // light address → heavy completions before its last
	heavy := 0
	count := map[string]int{}
	var order []string
	for _, d := range finished {
		if d.err != nil {
			t.Errorf("%s: %v", d.addr, d.err)
		}
		count[d.addr]++
		order = append(order, strings.TrimPrefix(d.addr, "127.0.0."))
		if d.addr == "127.0.0.2" {
			heavy++
			continue
		}
		if count[d.addr] == 2 {
			heavyBefore[d.addr] = heavy
		}
	}
	t.Logf("completion order (last octet): %s", strings.Join(order, " "))
	if count["127.0.0.2"] != 40 {
		t.Fatalf("heavy address completed %d of 40", count["127.0.0.2"])
	}
	for _, addr := range lights {
		if count[addr] != 2 {
			t.Errorf("%s completed %d of 2", addr, count[addr])
		}
	}
	t.Logf("pack budget now %v, last epoch goodput %.0f KiB/s", a.metric(`sluice_host_budget_limit{class="pack"}`),
		a.metric(`sluice_host_budget_goodput_bytes_per_second{class="pack"}`)/1024)
	if f := a.metric(`sluice_host_budget_admitted_total{class="pack"}`); f != 48 {
		t.Errorf("pack budget admitted %v, want 48", f)
	}
	// While the five addresses are backlogged, each is owed a fifth of the
	// slots: by the time a light address has its 2, the heavy one is owed
	// 2 as well; it may also finish what it held when the lights came
	// (limit) and what was in flight beside their last (limit).
	return heavyBefore, 2 + 2*limit
}
