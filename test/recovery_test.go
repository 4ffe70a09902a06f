package test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRestartKeepsCountingRunningCommands kills or stops the agent while a
// command holds the only slot, starts a new agent, and checks that the new
// agent counts the command from its first moment (a second client queues
// instead of running beside it), releases the slot when the command ends,
// and that the command itself never noticed.
func TestRestartKeepsCountingRunningCommands(t *testing.T) {
	for _, how := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGKILL", syscall.SIGKILL}, {"SIGTERM", syscall.SIGTERM}} {
		t.Run(how.name, func(t *testing.T) {
			limits := limitRule("upload-pack", "repo", 1, 5, "30s")
			a := startAgent(t, limits, "closed")
			repo := makeRepo(t, a.dir, "r", 3)
			holder := holdUploadPack(t, a, repo)
			select {
			case <-holder.first:
			case <-time.After(10 * time.Second):
				t.Fatalf("holder not admitted: %s", holder.stderr.String())
			}
			if err := a.Signal(how.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-a.Done():
			case <-time.After(15 * time.Second):
				t.Fatalf("sluiced did not exit on %s", how.name)
			}
			leases, _ := os.ReadDir(filepath.Join(filepath.Dir(a.socket), "leases"))
			if len(leases) != 1 {
				t.Fatalf("state files after %s: %d, want 1", how.name, len(leases))
			}

			a.start(limits, "closed")
			if got := a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`); got != 1 {
				t.Fatalf("in progress right after the restart = %v, want 1 (the running command)", got)
			}
			if !strings.Contains(a.Logs(), `"adopted":1`) {
				t.Errorf("no restart-recovery log line with adopted=1:\n%s", a.Logs())
			}
			// A second client queues behind the adopted command.
			second := holdUploadPack(t, a, repo)
			waitFor(t, 10*time.Second, "second client queued", func() bool {
				return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 1
			})
			if second.admitted() {
				t.Fatal("second client admitted beside the adopted command: the limit forgot it")
			}
			holder.release()
			if code := holder.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("the command running across the restart exited %d: %s", code, holder.stderr.String())
			}
			select {
			case <-second.first:
			case <-time.After(10 * time.Second):
				t.Fatalf("second client not admitted after the adopted command ended: %s", second.stderr.String())
			}
			second.release()
			if code := second.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("second client exit %d: %s", code, second.stderr.String())
			}
			waitFor(t, 5*time.Second, "gauges back to zero", func() bool {
				return a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0 &&
					a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 0
			})
			leases, _ = os.ReadDir(filepath.Join(filepath.Dir(a.socket), "leases"))
			if len(leases) != 0 {
				t.Fatalf("state files left: %d", len(leases))
			}
		})
	}
}
