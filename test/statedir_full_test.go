package test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// smallTmpfs mounts a 64 KiB tmpfs at dir (the agent's socket directory,
// so leases/ is on it) and unmounts it at cleanup.
func smallTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0750"); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fillUp writes to path until the filesystem is full.
func fillUp(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("fill: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for i := 0; i < 1<<12; i++ {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatalf("fill: %v", err)
		}
	}
	t.Fatal("the tmpfs never filled up")
}

var stateLimits = limitRule("upload-pack", "repo", 2, 5, "30s")

// TestStateDirFullAtStart: the socket directory (and so leases/) is a
// tmpfs that is already full when sluiced starts. Before, sluiced refused
// to start and every shim applied its fail mode; now it starts, admits
// (the limit still counts), and says loudly that a restart would forget
// the commands: an error log line, sluice_lease_state_errors_total, and
// `sluice status`.
func TestStateDirFullAtStart(t *testing.T) {
	a := newAgentDir(t)
	run := filepath.Dir(a.socket)
	smallTmpfs(t, run)
	fillUp(t, filepath.Join(run, "filler"))
	a.start(stateLimits, "closed")
	repo := makeRepo(t, a.dir, "r", 1)
	p := holdUploadPack(t, a, repo)
	select {
	case <-p.first:
	case <-time.After(10 * time.Second):
		t.Fatalf("not admitted with a full state directory: %s", p.stderr.String())
	}
	if got := a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`); got != 1 {
		t.Errorf("in progress = %v, want 1: admission must still count", got)
	}
	if got := a.metric("sluice_lease_state_errors_total"); got < 1 {
		t.Errorf("sluice_lease_state_errors_total = %v, want >= 1", got)
	}
	// The log reaches the test through a pipe and can trail the metric.
	waitFor(t, 10*time.Second, "an error log line about the state directory", func() bool {
		return strings.Contains(a.Logs(), "cannot save the lease state") || strings.Contains(a.Logs(), "admitting without persistence")
	})
	code, out, errs := runCLI(t, baseEnv(a.dir), "status", "--socket", a.socket)
	if code != 0 || !strings.Contains(out, "restart state") || !strings.Contains(out, "state files not written") {
		t.Errorf("sluice status (exit %d) does not show the state problem:\n%s%s", code, out, errs)
	}
	p.release()
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("upload-pack exit %d: %s", code, p.stderr.String())
	}
}

// TestStateDirFilledWhileRunning: the state tmpfs fills up while the agent
// runs. The command admitted before keeps its record; the one admitted
// after runs (counted by the limit) with its failure counted, and leaves
// no zero-byte or temporary file. A zero-byte and a torn record planted
// before a restart are removed, never adopted, and do not stop the start;
// the good record is adopted.
func TestStateDirFilledWhileRunning(t *testing.T) {
	a := newAgentDir(t)
	run := filepath.Dir(a.socket)
	smallTmpfs(t, run)
	a.start(stateLimits, "closed")
	repo := makeRepo(t, a.dir, "r", 1)
	first := holdUploadPack(t, a, repo)
	<-first.first
	leases := filepath.Join(run, "leases")
	ents, _ := os.ReadDir(leases)
	if len(ents) != 1 {
		t.Fatalf("state files before the disk filled: %d, want 1", len(ents))
	}
	fillUp(t, filepath.Join(run, "filler"))
	second := holdUploadPack(t, a, repo)
	select {
	case <-second.first:
	case <-time.After(10 * time.Second):
		t.Fatalf("not admitted with a full state directory: %s", second.stderr.String())
	}
	if got := a.metric("sluice_lease_state_errors_total"); got != 1 {
		t.Errorf("sluice_lease_state_errors_total = %v, want 1", got)
	}
	ents, _ = os.ReadDir(leases)
	for _, e := range ents {
		if fi, _ := e.Info(); fi == nil || fi.Size() == 0 || strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("left in leases/: %s (%v bytes)", e.Name(), fi)
		}
	}
	if len(ents) != 1 {
		t.Errorf("state files after the failed write: %d, want 1", len(ents))
	}
	second.release()
	second.wait(t, 10*time.Second)

	// Restart with space again, a zero-byte and a torn record planted.
	os.Remove(filepath.Join(run, "filler"))
	a.Signal(syscall.SIGTERM)
	<-a.Done()
	os.WriteFile(filepath.Join(leases, "00000000000000e0"), nil, 0o600)
	os.WriteFile(filepath.Join(leases, "00000000000000e1"), []byte(`{"pid":1,"start":`), 0o600)
	os.WriteFile(filepath.Join(leases, "00000000000000e2.tmp"), []byte(`{"pid":1`), 0o600)
	a.start(stateLimits, "closed")
	if !strings.Contains(a.Logs(), `"adopted":1,"stale_records_removed":2`) {
		t.Errorf("want 1 adopted and 2 stale removed:\n%s", a.Logs())
	}
	ents, _ = os.ReadDir(leases)
	if len(ents) != 1 {
		t.Errorf("state files after the restart: %d, want the adopted one", len(ents))
	}
	first.release()
	first.wait(t, 10*time.Second)
	waitFor(t, 10*time.Second, "slot released", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0
	})
}
