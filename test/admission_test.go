package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCloneThroughShim clones over upload-pack with the shim standing in for
// git-upload-pack and as uploadpack.packObjectsHook, and checks the clone
// is identical to one made without sluice.
func TestCloneThroughShim(t *testing.T) {
	a := startAgent(t, limitRule("upload-pack", "repo", 4, 10, "10s")+`

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "remote_ip"
max_per_key = 4
max_queue_size = 10
max_queue_wait = "10s"
`, "open")
	repo := makeRepo(t, a.dir, "big", 12)
	sysConfig := filepath.Join(a.dir, "gitconfig-system")
	if err := os.WriteFile(sysConfig, []byte(fmt.Sprintf("[uploadpack]\n\tpackObjectsHook = %s\n", bins.shim)), 0o644); err != nil {
		t.Fatal(err)
	}
	env := a.env("GIT_CONFIG_SYSTEM="+sysConfig, "GIT_CONFIG_NOSYSTEM=0")
	env = append(env, "CORRELATION_ID=clone-test-1")

	via := filepath.Join(a.dir, "via-sluice")
	git(t, a.dir, env, "clone", "-q", "--mirror", "--upload-pack="+filepath.Join(a.shimBin, "git-upload-pack"), "file://"+repo, via)
	plain := filepath.Join(a.dir, "plain")
	git(t, a.dir, baseEnv(a.dir), "clone", "-q", "--mirror", "--no-local", repo, plain)

	refsVia := git(t, via, baseEnv(a.dir), "for-each-ref", "--format=%(objectname) %(refname)")
	refsPlain := git(t, plain, baseEnv(a.dir), "for-each-ref", "--format=%(objectname) %(refname)")
	if refsVia != refsPlain || refsVia == "" {
		t.Fatalf("refs differ:\nvia sluice:\n%s\nwithout:\n%s", refsVia, refsPlain)
	}
	git(t, via, baseEnv(a.dir), "fsck", "--strict", "--no-dangling")
	if c := git(t, via, baseEnv(a.dir), "rev-list", "--all", "--count"); c != git(t, plain, baseEnv(a.dir), "rev-list", "--all", "--count") {
		t.Fatalf("object counts differ")
	}

	// Both the upload-pack and the pack-objects went through the agent
	// and were recorded.
	waitFor(t, 5*time.Second, "both commands recorded", func() bool {
		m := a.scrape()
		return m[`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`] == 1 &&
			m[`sluice_commands_total{cmd="git",outcome="ok",subcmd="pack-objects"}`] == 1
	})
	m := a.scrape()
	if cpu := m[`sluice_command_cpu_seconds_total{cmd="git",mode="user",subcmd="pack-objects"}`] +
		m[`sluice_command_cpu_seconds_total{cmd="git",mode="system",subcmd="pack-objects"}`]; cpu <= 0 {
		t.Errorf("pack-objects CPU seconds = %v, want > 0", cpu)
	}
	if real := m[`sluice_command_real_seconds_total{cmd="git",subcmd="upload-pack"}`]; real <= 0 {
		t.Errorf("upload-pack real seconds = %v, want > 0", real)
	}
	// The finished-command log line carries the correlation id.
	logs := a.Logs()
	if !strings.Contains(logs, `"correlation_id":"clone-test-1"`) || !strings.Contains(logs, `"msg":"command finished"`) {
		t.Errorf("no finished-command log line with the correlation id:\n%s", logs)
	}
}

// holdUploadPack starts a shimmed git-upload-pack on repo that stays
// admitted (it waits for the client's request on stdin) until released.
func holdUploadPack(t *testing.T, a *agentProc, repo string, extraEnv ...string) *proc {
	t.Helper()
	return startProc(t, a.dir, a.env(extraEnv...), filepath.Join(a.shimBin, "git-upload-pack"), repo)
}

func TestKeyedLimitQueueAndRejections(t *testing.T) {
	a := startAgent(t, limitRule("upload-pack", "repo", 2, 5, "1s"), "open")
	repo := makeRepo(t, a.dir, "r", 3)
	other := makeRepo(t, a.dir, "other", 2)

	holders := []*proc{holdUploadPack(t, a, repo), holdUploadPack(t, a, repo)}
	for _, h := range holders {
		select {
		case <-h.first:
		case <-time.After(10 * time.Second):
			t.Fatalf("holder not admitted: %s", h.stderr.String())
		}
	}
	var clients []*proc
	for i := 0; i < 12; i++ {
		clients = append(clients, holdUploadPack(t, a, repo))
	}
	// A different repository is not blocked by the full one.
	o := holdUploadPack(t, a, other)
	select {
	case <-o.first:
	case <-time.After(10 * time.Second):
		t.Fatalf("a different repository was blocked: %s", o.stderr.String())
	}
	o.release()

	queuedFull, queuedTime := 0, 0
	for _, c := range clients {
		code := c.wait(t, 10*time.Second)
		if c.admitted() {
			t.Fatalf("a client was admitted while both slots were held")
		}
		msg := strings.TrimSpace(c.stderr.String())
		if code != 75 || !strings.HasPrefix(msg, "sluice: ") || strings.Count(msg, "\n") != 0 {
			t.Fatalf("rejected client: exit %d, stderr %q; want exit 75 and one `sluice: ` line", code, msg)
		}
		switch {
		case strings.Contains(msg, "queue of 5 is full"):
			queuedFull++
		case strings.Contains(msg, "waited 1s"):
			queuedTime++
		default:
			t.Fatalf("unexpected rejection %q", msg)
		}
	}
	if queuedFull != 7 || queuedTime != 5 {
		t.Fatalf("rejections: %d queue-full, %d wait-exceeded; want 7 and 5", queuedFull, queuedTime)
	}
	m := a.scrape()
	for series, want := range map[string]float64{
		`sluice_requests_dropped_total{limit="upload-pack",reason="max_size"}`:     7,
		`sluice_requests_dropped_total{limit="upload-pack",reason="max_time"}`:     5,
		`sluice_commands_total{cmd="git",outcome="rejected",subcmd="upload-pack"}`: 12,
		`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`:             2,
		`sluice_concurrency_limiting_queued{limit="upload-pack"}`:                  0,
		`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`:           2,
		`sluice_concurrency_limiting_acquiring_seconds_count{limit="upload-pack"}`: 3,
	} {
		if got := m[series]; got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for _, h := range holders {
		h.release()
		if code := h.wait(t, 10*time.Second); code != 0 {
			t.Errorf("holder exit %d: %s", code, h.stderr.String())
		}
	}
	waitFor(t, 5*time.Second, "slots released", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0
	})
}

// testQueueOrder holds the only slot, queues three clients one after the
// other, releases the slot and reports which client got it.
func testQueueOrder(t *testing.T, order string) int {
	a := startAgent(t, fmt.Sprintf(limitRule("upload-pack", "repo", 1, 5, "30s")+`
queue_order = %q
`, order), "open")
	repo := makeRepo(t, a.dir, "r", 2)
	holder := holdUploadPack(t, a, repo)
	<-holder.first
	var waiters []*proc
	for i := 0; i < 3; i++ {
		waiters = append(waiters, holdUploadPack(t, a, repo))
		waitFor(t, 5*time.Second, "waiter queued", func() bool {
			return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == float64(i+1)
		})
	}
	holder.closeStdin()
	deadline := time.After(10 * time.Second)
	for {
		for i, w := range waiters {
			if w.admitted() {
				for _, w := range waiters {
					w.closeStdin()
				}
				return i
			}
		}
		select {
		case <-deadline:
			t.Fatal("no waiter admitted after the slot was released")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestQueueOrderFIFO(t *testing.T) {
	if got := testQueueOrder(t, "fifo"); got != 0 {
		t.Fatalf("fifo admitted waiter %d first, want the oldest (0)", got)
	}
}

func TestQueueOrderLIFO(t *testing.T) {
	if got := testQueueOrder(t, "lifo"); got != 2 {
		t.Fatalf("lifo admitted waiter %d first, want the newest (2)", got)
	}
}

// TestPackObjectsKeyedByRemoteIP runs the shim in hook mode as git would,
// with the client address in REMOTE_ADDR / SSH_CONNECTION.
func TestPackObjectsKeyedByRemoteIP(t *testing.T) {
	a := startAgent(t, limitRule("pack-objects", "remote_ip", 1, 0, "1s"), "open")
	repo := makeRepo(t, a.dir, "r", 2)
	hook := func(env ...string) *proc {
		// pack-objects --revs reads revisions from stdin: it holds its
		// slot until stdin closes.
		return startProc(t, repo, a.env(append(env, "GIT_DIR=.")...), bins.shim, "git", "pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset")
	}
	first := hook("REMOTE_ADDR=127.0.0.2", "REMOTE_PORT=5555")
	waitFor(t, 5*time.Second, "first pack-objects admitted", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="pack-objects"}`) == 1
	})
	same := hook("SSH_CONNECTION=127.0.0.2 40000 127.0.0.1 22")
	if code := same.wait(t, 10*time.Second); code != 75 || !strings.Contains(same.stderr.String(), "sluice: too many pack-objects requests for your address") {
		t.Fatalf("same address: exit %d, stderr %q", code, same.stderr.String())
	}
	other := hook("REMOTE_ADDR=127.0.0.3")
	waitFor(t, 5*time.Second, "other address admitted", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="pack-objects"}`) == 2
	})
	for _, p := range []*proc{first, other} {
		p.closeStdin()
		if code := p.wait(t, 10*time.Second); code != 0 {
			t.Fatalf("pack-objects exit %d: %s", code, p.stderr.String())
		}
	}
}

// childrenOf returns the pids whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var p int
		if _, err := fmt.Sscan(e.Name(), &p); err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		var ppid int
		fmt.Sscan(fields[1], &ppid)
		if ppid == pid {
			out = append(out, p)
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	return s[strings.LastIndexByte(s, ')')+2] != 'Z'
}

// TestKilledShimReleasesLease: in supervising mode (no tracer), a shim
// killed with SIGKILL frees its slot at once and takes its git with it
// (Pdeathsig). Exec mode's equivalent is in TestExecModeNoResidentShim.
func TestKilledShimReleasesLease(t *testing.T) {
	a := startAgent(t, limitRule("upload-pack", "repo", 1, 5, "30s")+`

[ebpf]
enabled = false
`, "open")
	repo := makeRepo(t, a.dir, "r", 2)
	holder := holdUploadPack(t, a, repo)
	<-holder.first
	kids := childrenOf(holder.cmd.Process.Pid)
	if len(kids) != 1 {
		t.Fatalf("shim has children %v, want exactly its git", kids)
	}
	waiter := holdUploadPack(t, a, repo)
	waitFor(t, 5*time.Second, "waiter queued", func() bool {
		return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 1
	})
	killed := time.Now()
	holder.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-waiter.first:
		t.Logf("next waiter admitted %v after SIGKILL of the holding shim", time.Since(killed))
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not admitted after the holding shim was killed")
	}
	waitFor(t, 5*time.Second, "the killed shim's git to be gone", func() bool { return !alive(kids[0]) })
	waiter.release()
	if code := waiter.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("waiter exit %d: %s", code, waiter.stderr.String())
	}
}

// TestHookRejectionReachesClient: a pack-objects rejected in hook mode
// reaches the cloning client as "remote: sluice: …" through upload-pack's
// sideband.
func TestHookRejectionReachesClient(t *testing.T) {
	a := startAgent(t, limitRule("pack-objects", "remote_ip", 1, 0, "1s"), "open")
	repo := makeRepo(t, a.dir, "r", 3)
	// Hold the only slot of the "unknown" address (a file:// clone has none).
	holder := startProc(t, repo, a.env("GIT_DIR=."), bins.shim, "git", "pack-objects", "--revs", "--stdout")
	waitFor(t, 5*time.Second, "holder admitted", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="pack-objects"}`) == 1
	})
	sysConfig := filepath.Join(a.dir, "gitconfig-system")
	if err := os.WriteFile(sysConfig, []byte(fmt.Sprintf("[uploadpack]\n\tpackObjectsHook = %s\n", bins.shim)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins.realGit, "clone", "--no-local", "file://"+repo, filepath.Join(a.dir, "clone"))
	cmd.Env = a.env("GIT_CONFIG_SYSTEM="+sysConfig, "GIT_CONFIG_NOSYSTEM=0")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("clone succeeded although pack-objects had no slot:\n%s", out)
	}
	if !strings.Contains(string(out), "remote: sluice: too many pack-objects requests") {
		t.Fatalf("client output lacks the remote sluice line:\n%s", out)
	}
	holder.closeStdin()
	holder.wait(t, 10*time.Second)
}
