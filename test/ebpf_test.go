package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var execLimits = limitRule("upload-pack", "repo", 1, 5, "30s") + `

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "global"
max_per_key = 4
max_queue_size = 5
max_queue_wait = "30s"
`

// requireTracer skips the test, naming what is missing, when the agent
// could not load its eBPF tracer.
// tracerRunning reports whether the agent runs its eBPF tracer.
func (a *agentProc) tracerRunning() bool {
	return strings.Contains(a.Logs(), "eBPF tracer running")
}

func (a *agentProc) requireTracer(t *testing.T) {
	t.Helper()
	logs := a.Logs()
	if strings.Contains(logs, "eBPF tracer running") {
		return
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "eBPF tracing") {
			t.Skipf("the agent runs without its eBPF tracer here: %s", line)
		}
	}
	t.Fatalf("the agent said nothing about its eBPF tracer:\n%s", logs)
}

// exeOf returns what /proc/PID/exe points to.
func exeOf(pid int) string {
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return exe
}

// TestExecModeNoResidentShim: in exec mode the admitted process is git
// itself (same pid, no shim parent), the slot is held while it runs and
// handed to the next waiter when it exits, and killing it frees the slot
// just the same.
func TestExecModeNoResidentShim(t *testing.T) {
	a := startAgent(t, execLimits, "open")
	a.requireTracer(t)
	repo := makeRepo(t, a.dir, "r", 3)
	holder := holdUploadPack(t, a, repo)
	<-holder.first
	pid := holder.cmd.Process.Pid
	if exe := exeOf(pid); !sameFile(exe, bins.realGit) {
		t.Fatalf("admitted process %d runs %s, want the real git %s (exec in place)", pid, exe, bins.realGit)
	}
	if kids := childrenOf(pid); len(kids) != 0 {
		t.Fatalf("git has children %v while waiting for its client", kids)
	}
	waiter := holdUploadPack(t, a, repo)
	waitFor(t, 5*time.Second, "waiter queued", func() bool {
		return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 1
	})
	holder.release()
	if code := holder.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("holder exit %d: %s", code, holder.stderr.String())
	}
	select {
	case <-waiter.first:
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not admitted after the holder exited")
	}
	// Killing the admitted git frees its slot too.
	third := holdUploadPack(t, a, repo)
	waitFor(t, 5*time.Second, "third queued", func() bool {
		return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 1
	})
	waiter.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-third.first:
	case <-time.After(10 * time.Second):
		t.Fatal("third not admitted after the running git was killed")
	}
	third.release()
	third.wait(t, 10*time.Second)
	waitFor(t, 5*time.Second, "slots released", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0
	})
	if got := a.metric(`sluice_commands_total{cmd="git",outcome="signaled",subcmd="upload-pack"}`); got != 1 {
		t.Errorf("signaled upload-packs = %v, want 1 (the killed one)", got)
	}
	if got := a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`); got != 2 {
		t.Errorf("ok upload-packs = %v, want 2", got)
	}
}

// TestExecModeCPUMatchesWait4 runs a CPU-heavy multi-threaded pack-objects
// through the shim in exec mode as a child of the test, so the test's own
// wait4 reports the very process the agent accounted: the agent's CPU
// (from the tracer at exit) must agree within 5 % or 10 ms.
func TestExecModeCPUMatchesWait4(t *testing.T) {
	a := startAgent(t, execLimits, "open")
	a.requireTracer(t)
	repo := makeRepo(t, a.dir, "big", 150)
	env := a.env("CORRELATION_ID=cpu-check-1")
	// All objects, no deltas reused: real CPU work for pack-objects.
	cmd := exec.Command(bins.shim, "git", "pack-objects", "--revs", "--stdout", "--no-reuse-delta", "--no-reuse-object", "--threads=2", "--window=50")
	cmd.Dir = repo
	cmd.Env = env
	cmd.Stdin = strings.NewReader(git(t, repo, baseEnv(a.dir), "for-each-ref", "--format=%(objectname)") + "\n")
	out, err := os.Create(filepath.Join(a.dir, "pack.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout = out
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pack-objects through the shim: %v\n%s", err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	waitCPU := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	var line map[string]any
	waitFor(t, 5*time.Second, "the finished log line", func() bool {
		for _, l := range a.LogLines("command finished") {
			if l["correlation_id"] == "cpu-check-1" {
				line = l
				return true
			}
		}
		return false
	})
	if line["exec_mode"] != true {
		t.Fatalf("not accounted in exec mode: %v", line)
	}
	// zap writes durations as seconds.
	us, ok1 := line["cpu_user"].(float64)
	ss, ok2 := line["cpu_system"].(float64)
	if !ok1 || !ok2 {
		t.Fatalf("cpu fields missing in %v", line)
	}
	user, sys := time.Duration(us*1e9), time.Duration(ss*1e9)
	agentCPU := user + sys
	diff := agentCPU - waitCPU
	if diff < 0 {
		diff = -diff
	}
	t.Logf("CPU: wait4 %v (user %v, system %v), agent %v (user %v, system %v), diff %v",
		waitCPU, time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()), agentCPU, user, sys, diff)
	if waitCPU < 50*time.Millisecond {
		t.Fatalf("pack-objects used only %v of CPU: too little to compare", waitCPU)
	}
	if diff > 10*time.Millisecond && float64(diff) > 0.05*float64(waitCPU) {
		t.Fatalf("agent CPU %v differs from wait4's %v by %v (more than 5%% and 10ms)", agentCPU, waitCPU, diff)
	}
	if rss, _ := line["max_rss_kib"].(float64); int64(rss) < ru.Maxrss/2 || int64(rss) > ru.Maxrss*2 {
		t.Errorf("max RSS %v KiB, wait4 says %d KiB", line["max_rss_kib"], ru.Maxrss)
	}
}

// TestUnwrappedExecIsCounted: with [ebpf] unwrapped_scope = "all", git-core
// programs run directly are counted and logged with their pid; a storm of
// other execs, and git subcommands no rule limits, are not.
func TestUnwrappedExecIsCounted(t *testing.T) {
	a := startAgent(t, execLimits+"\n[ebpf]\nunwrapped_scope = \"all\"\n", "open")
	a.requireTracer(t)
	repo := makeRepo(t, a.dir, "r", 2)
	out, err := exec.Command(bins.realGit, "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	core := strings.TrimSpace(string(out))
	direct := exec.Command(filepath.Join(core, "git-pack-objects"), "--revs", "--stdout")
	direct.Dir = repo
	direct.Stdin = strings.NewReader(git(t, repo, baseEnv(a.dir), "for-each-ref", "--format=%(objectname)") + "\n")
	if err := direct.Run(); err != nil {
		t.Fatalf("git-pack-objects run directly: %v", err)
	}
	status := exec.Command(bins.realGit, "status")
	status.Dir = repo
	_ = status.Run() // not limited by any rule: never counted
	var storm []int
	for i := 0; i < 300; i++ {
		c := exec.Command("/bin/true")
		if err := c.Run(); err != nil {
			t.Fatal(err)
		}
		storm = append(storm, c.Process.Pid)
	}
	waitFor(t, 5*time.Second, "the unwrapped pack-objects logged", func() bool {
		for _, l := range a.LogLines("git ran without admission: it bypassed the sluice shim") {
			if int(l["pid"].(float64)) == direct.Process.Pid {
				return l["subcmd"] == "pack-objects" && l["cwd"] == repo
			}
		}
		return false
	})
	if got := a.metric(`sluice_unwrapped_exec_total{subcmd="pack-objects"}`); got < 1 {
		t.Fatalf("sluice_unwrapped_exec_total{subcmd=pack-objects} = %v, want >= 1", got)
	}
	bad := map[int]bool{status.Process.Pid: true}
	for _, p := range storm {
		bad[p] = true
	}
	for _, l := range a.LogLines("git ran without admission: it bypassed the sluice shim") {
		if bad[int(l["pid"].(float64))] {
			t.Fatalf("counted as unwrapped: %v", l)
		}
	}
	// A clone through the shim (exec mode, hook included) is not unwrapped.
	before := a.metric(`sluice_unwrapped_exec_total{subcmd="upload-pack"}`)
	dest := filepath.Join(a.dir, "clone")
	clone := exec.Command(bins.realGit, "clone", "-q", "--bare", "--upload-pack="+filepath.Join(a.shimBin, "git-upload-pack"), repo, dest)
	clone.Env = a.env()
	if b, err := clone.CombinedOutput(); err != nil {
		t.Fatalf("clone through the shim: %v\n%s", err, b)
	}
	for _, l := range a.LogLines("git ran without admission: it bypassed the sluice shim") {
		if l["cwd"] == repo && l["subcmd"] == "upload-pack" {
			t.Fatalf("the shimmed upload-pack was counted as unwrapped: %v (before: %v)", l, before)
		}
	}
}

// TestTracerFallback: with [ebpf] enabled = false, and with the agent's
// BPF capabilities dropped, the agent says why once and shims run git
// supervised; clones work either way.
func TestTracerFallback(t *testing.T) {
	for _, c := range []struct {
		name, extra, want string
		wrap              []string
	}{
		{"disabled", "\n[ebpf]\nenabled = false\n", "eBPF tracing is off ([ebpf] enabled = false)", nil},
		{"no-capabilities", "", "eBPF tracing unavailable", []string{"setpriv", "--bounding-set=-bpf,-perfmon,-sys_admin", "--"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.wrap != nil {
				if _, err := exec.LookPath(c.wrap[0]); err != nil {
					t.Skipf("%s not installed (util-linux): cannot drop capabilities", c.wrap[0])
				}
				if os.Geteuid() != 0 {
					t.Skip("needs root to show that dropping CAP_BPF is what disables the tracer")
				}
			}
			a := newAgentDir(t)
			a.wrap = c.wrap
			a.start(execLimits+c.extra, "open")
			if !strings.Contains(a.Logs(), c.want) {
				t.Fatalf("no log line %q:\n%s", c.want, a.Logs())
			}
			repo := makeRepo(t, a.dir, "r", 2)
			holder := holdUploadPack(t, a, repo)
			<-holder.first
			if exe := exeOf(holder.cmd.Process.Pid); !sameFile(exe, bins.shim) {
				t.Fatalf("admitted process runs %s, want the shim supervising git", exe)
			}
			holder.release()
			if code := holder.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("exit %d: %s", code, holder.stderr.String())
			}
			dest := filepath.Join(a.dir, "clone")
			clone := exec.Command(bins.realGit, "clone", "-q", "--bare", "--upload-pack="+filepath.Join(a.shimBin, "git-upload-pack"), repo, dest)
			clone.Env = a.env()
			if b, err := clone.CombinedOutput(); err != nil {
				t.Fatalf("clone: %v\n%s", err, b)
			}
		})
	}
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// TestUnwrappedScopeServers: with the default scope, a clone served by a git
// daemon that is not wired through the shim is reported (attributed to the
// daemon's pid, with the count) while git run by anything else — here the
// test itself — is not.
func TestUnwrappedScopeServers(t *testing.T) {
	daemon := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(daemon); err != nil {
		t.Skipf("git daemon is not installed (%v): apt-get install git", err)
	}
	a := startAgent(t, execLimits, "open")
	a.requireTracer(t)
	repos := filepath.Join(a.dir, "repos")
	os.MkdirAll(repos, 0o755)
	src := makeRepo(t, a.dir, "r", 2)
	git(t, a.dir, baseEnv(a.dir), "clone", "-q", "--bare", src, filepath.Join(repos, "r.git"))
	// Not a server's: the test runs git-pack-objects itself.
	out, err := exec.Command(bins.realGit, "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	direct := exec.Command(filepath.Join(strings.TrimSpace(string(out)), "git-pack-objects"), "--revs", "--stdout")
	direct.Dir = src
	direct.Stdin = strings.NewReader(git(t, src, baseEnv(a.dir), "for-each-ref", "--format=%(objectname)") + "\n")
	if err := direct.Run(); err != nil {
		t.Fatalf("git-pack-objects run directly: %v", err)
	}
	// A server's: an unwired git daemon serving a clone.
	port := freePort(t)
	d := startGroup(t, baseEnv(a.dir), filepath.Join(a.dir, "daemon.log"), daemon, "--reuseaddr", "--base-path="+repos,
		"--export-all", "--listen=127.0.0.1", "--port="+strconv.Itoa(port))
	waitListening(t, port, "git daemon")
	git(t, a.dir, baseEnv(a.dir), "clone", "-q", fmt.Sprintf("git://127.0.0.1:%d/r.git", port), filepath.Join(a.dir, "clone"))
	var line map[string]any
	waitFor(t, 5*time.Second, "the daemon's unwrapped upload-pack logged", func() bool {
		for _, l := range a.LogLines("git ran without admission: it bypassed the sluice shim") {
			if l["server"] == "git-daemon" && int(l["server_pid"].(float64)) == d.Process.Pid {
				line = l
				return true
			}
		}
		return false
	})
	if line["count_since_last_line"] != 1.0 || !strings.Contains(line["fix"].(string), "sluice check --pid "+strconv.Itoa(d.Process.Pid)) {
		t.Errorf("log line %v: want count 1 and the check command for the daemon", line)
	}
	for _, l := range a.LogLines("git ran without admission: it bypassed the sluice shim") {
		if int(l["pid"].(float64)) == direct.Process.Pid {
			t.Errorf("the test's own git-pack-objects was reported: %v", l)
		}
	}
	if got := a.metric(`sluice_unwrapped_exec_total{subcmd="upload-pack"}`); got < 1 {
		t.Errorf("sluice_unwrapped_exec_total{subcmd=upload-pack} = %v, want >= 1", got)
	}
}
