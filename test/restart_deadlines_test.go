package test

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRestartKeepsDeadlines restarts the agent (SIGTERM, new sluiced) while
// a stalled upload-pack holds the only slot, and checks that the new agent
// stops it at the deadline it was admitted with: the negotiation timeout
// (upload-pack waiting for a request that never comes) in one case, the
// rule's max_runtime (negotiation unbounded) in the other. Before,
// adopted leases had no timers and the command kept its slot for good.
func TestRestartKeepsDeadlines(t *testing.T) {
	for _, tc := range []struct {
		name, limits, kind, line string
	}{
		{"negotiation", limitRule("upload-pack", "repo", 1, 5, "30s") + `

[timeouts]
upload_pack_negotiation = "4s"
kill_grace = "1s"
`, "upload_pack_negotiation", "sluice: upload-pack exceeded upload_pack_negotiation = 4s"},
		{"max_runtime", limitRule("upload-pack", "repo", 1, 5, "30s") + `
max_runtime = "6s"

[timeouts]
upload_pack_negotiation = "0s"
kill_grace = "1s"
`, "max_runtime", `sluice: upload-pack exceeded max_runtime = 6s of limit "upload-pack"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startAgent(t, tc.limits, "closed")
			repo := makeRepo(t, a.dir, "r", 2)
			p := holdUploadPack(t, a, repo, "CORRELATION_ID=deadline-"+tc.name)
			select {
			case <-p.first:
			case <-time.After(10 * time.Second):
				t.Fatalf("not admitted: %s", p.stderr.String())
			}
			admitted := time.Now()
			a.Signal(syscall.SIGTERM)
			select {
			case <-a.Done():
			case <-time.After(15 * time.Second):
				t.Fatal("sluiced did not stop")
			}
			a.start(tc.limits, "closed")
			if !strings.Contains(a.Logs(), `"adopted":1`) {
				t.Fatalf("the new agent did not adopt the command:\n%s", a.Logs())
			}
			p.wait(t, 60*time.Second)
			stopped := time.Since(admitted)
			if !strings.Contains(p.stderr.String(), tc.line) {
				t.Errorf("stderr %q lacks %q", p.stderr.String(), tc.line)
			}
			lines := a.waitLogLines(t, "timeout: command stopped", 1)
			if len(lines) != 1 || lines[0]["kind"] != tc.kind || lines[0]["correlation_id"] != "deadline-"+tc.name {
				t.Errorf("the new agent's timeout log lines: %v", lines)
			}
			waitFor(t, 10*time.Second, "the slot released", func() bool {
				return a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0
			})
			t.Logf("%s: stopped %v after admission, across a restart", tc.name, stopped.Round(time.Millisecond))
		})
	}
}
