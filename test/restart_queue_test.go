package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// countingGit is a fake git that counts how many copies of itself run at
// once (under flock): cur, the high-water mark in max, one line per
// completed run in done (its CORRELATION_ID). Each run waits until the
// file gate exists, then holds for hold.
func countingGit(t *testing.T, dir string, hold string) (fake, state, gate string) {
	t.Helper()
	state = filepath.Join(dir, "count")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	gate = filepath.Join(state, "gate")
	fake = fakeGit(t, dir, fmt.Sprintf(`S=%s
exec 9>>"$S/lock"
flock 9; n=$(cat "$S/cur" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$S/cur"
m=$(cat "$S/max" 2>/dev/null || echo 0); [ $n -gt $m ] && echo $n > "$S/max"; flock -u 9
while [ ! -e "$S/gate" ]; do sleep 0.05; done
sleep %s
flock 9; n=$(cat "$S/cur"); echo $((n-1)) > "$S/cur"; echo "${CORRELATION_ID:-x}" >> "$S/done"; flock -u 9
exit 0`, state, hold))
	return fake, state, gate
}

func readInt(path string) int {
	b, _ := os.ReadFile(path)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// TestRestartKeepsQueue: 20 upload-packs queued behind a limit of 1 and
// the agent restarted (SIGTERM, new sluiced) while they wait: the waiters
// reconnect and queue again (restart_grace), the running one is adopted,
// so at most one runs at any time (counted by the fake git itself) and
// all 20 complete with exit 0, in the order they first arrived (each
// re-sent request carries its first send time). fail_mode is "open":
// before, every waiter ran at once without a lease; later, they ran one
// at a time in the order their reconnects happened to land.
func TestRestartKeepsQueue(t *testing.T) {
	limits := limitRule("upload-pack", "global", 1, 50, "120s")
	a := newAgentDir(t)
	a.agentExtra = os.Getenv("SLUICE_TEST_AGENT_EXTRA") // e.g. restart_grace = "0s", to see the test fail
	a.start(limits, "open")
	fake, state, gate := countingGit(t, a.dir, "0.2")
	repo := makeRepo(t, a.dir, "r", 1)
	const n = 20
	var wg sync.WaitGroup
	codes := make([]int, n)
	outs := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		cmd := exec.Command(filepath.Join(a.shimBin, "git-upload-pack"), repo)
		cmd.Env = a.env("SLUICE_REAL_GIT="+fake, fmt.Sprintf("CORRELATION_ID=q-%d", i))
		cmd.Dir = a.dir
		go func(i int) {
			defer wg.Done()
			out, err := cmd.CombinedOutput()
			outs[i] = string(out)
			if ee, ok := err.(*exec.ExitError); ok {
				codes[i] = ee.ExitCode()
			} else if err != nil {
				codes[i] = -1
			}
		}(i)
		// One at a time, so that the arrival order is known: q-0 runs
		// (held at the gate), q-1… queue behind it in turn.
		waitFor(t, 20*time.Second, fmt.Sprintf("q-%d running or queued", i), func() bool {
			return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == float64(i)
		})
	}
	t0 := time.Now()
	a.Signal(syscall.SIGTERM)
	select {
	case <-a.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("sluiced did not stop")
	}
	stopped := time.Since(t0)
	a.start(limits, "open")
	ready := time.Since(t0)
	t.Logf("restart: SIGTERM to exit %v, SIGTERM to new agent ready %v (restart_grace 5s)",
		stopped.Round(time.Millisecond), ready.Round(time.Millisecond))
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		t.Fatal("the 20 commands did not complete")
	}
	for i, c := range codes {
		if c != 0 {
			t.Errorf("command %d exit %d: %s", i, c, outs[i])
		}
	}
	if got := readInt(filepath.Join(state, "max")); got != 1 {
		t.Errorf("at most %d ran at once, want 1", got)
	}
	b, _ := os.ReadFile(filepath.Join(state, "done"))
	order := strings.Fields(string(b))
	if len(order) != n {
		t.Errorf("%d runs completed, want %d", len(order), n)
	}
	for i, id := range order {
		if id != fmt.Sprintf("q-%d", i) {
			t.Errorf("ran in order %v, want q-0 … q-%d (the order they first queued in)", order, n-1)
			break
		}
	}
	if s, _ := os.ReadFile(a.shimLog); strings.Contains(string(s), "without a lease") {
		t.Errorf("a shim ran git without a lease:\n%s", s)
	}
	waitFor(t, 10*time.Second, "gauges back to zero", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0 &&
			a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 0
	})
}
