package test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSoakSmoke runs bench/soak in smoke mode against the built sluiced:
// a few seconds of admissions from concurrent clients and real shims with
// random kills (mid-queue, mid-lease, SIGKILL), after which the in-flight
// and queued gauges (/metrics and `sluice status`) must be exactly zero and
// the agent's goroutines and fds back at their baseline (a fixed slack of
// 5 goroutines and 2 fds; no timing is asserted).
func TestSoakSmoke(t *testing.T) {
	out := filepath.Join(t.TempDir(), "soak.json")
	cmd := exec.Command("go", "run", "./bench/soak", "-bin", bins.dir, "-smoke", "-json", out)
	cmd.Dir = ".."
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("soak: %v\n%s", err, b)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Admitted     int64 `json:"admitted"`
		KilledQueued int64 `json:"killed_queued"`
		KilledLeased int64 `json:"killed_leased"`
		ShimKilled   int64 `json:"shim_sigkilled"`
		GaugesZero   bool  `json:"gauges_zero"`
		LeakFree     bool  `json:"leak_free"`
		Before       struct{ Goroutines, FDs int }
		After        struct{ Goroutines, FDs int }
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if !res.GaugesZero || !res.LeakFree || res.Admitted == 0 {
		t.Fatalf("soak result: %s", raw)
	}
	if res.KilledLeased == 0 || res.ShimKilled == 0 {
		t.Errorf("the smoke soak injected no kills of some kind: %s", raw)
	}
	t.Logf("admitted %d; killed queued %d, leased %d, shims %d; goroutines %d -> %d, fds %d -> %d",
		res.Admitted, res.KilledQueued, res.KilledLeased, res.ShimKilled, res.Before.Goroutines, res.After.Goroutines, res.Before.FDs, res.After.FDs)
}
