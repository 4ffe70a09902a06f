// Package test holds sluice's end-to-end tests: the real sluiced, shim and
// CLI binaries, built once in TestMain, against real git repositories and
// real git processes.
package test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/agenttest"
)

// bins are the binaries under test, built by TestMain.
var bins struct {
	dir, sluiced, shim, cli string
	realGit                 string
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if !inPrivateRoot() {
		code, ok, why := reexecInPrivateRoot()
		if ok {
			return code
		}
		fmt.Printf("e2e: running in the machine's own /usr, /etc, /var (%s): package tests need sluice not to be installed\n", why)
	} else if err := setUpPrivateRoot(); err != nil {
		fmt.Println("e2e:", err)
		return 1
	}
	git, err := exec.LookPath("git")
	if err != nil {
		fmt.Println("SKIP end-to-end tests: git is not installed (apt-get install git)")
		return 0
	}
	bins.realGit = git
	dir, err := os.MkdirTemp("", "sluice-e2e-bin-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/sluiced", "./cmd/sluice-shim", "./cmd/sluice")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("building binaries:", err)
		return 1
	}
	bins.dir = dir
	bins.sluiced = filepath.Join(dir, "sluiced")
	bins.shim = filepath.Join(dir, "sluice-shim")
	bins.cli = filepath.Join(dir, "sluice")
	return m.Run()
}

// env is a hermetic environment for git and the shim: no user or system
// config, a fixed identity.
func baseEnv(home string) []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=sluice test", "GIT_AUTHOR_EMAIL=test@sluice.invalid",
		"GIT_COMMITTER_NAME=sluice test", "GIT_COMMITTER_EMAIL=test@sluice.invalid",
		"GIT_TERMINAL_PROMPT=0",
		"LANG=C",
	}
}

// agentProc is a running sluiced (agenttest.Agent) with the shim wiring
// the tests use.
type agentProc struct {
	*agenttest.Agent // nil until start
	t                *testing.T
	dir              string // temp dir holding config, socket, logs, shim links
	socket           string
	shimBin          string // dir with git, git-upload-pack, … links to the shim
	shimLog          string
	// wrap runs sluiced under another program (e.g. setpriv), nil for none.
	wrap []string

	// agentExtra is more TOML for the [agent] table, set before start.
	agentExtra string
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer = agenttest.LockedBuffer

// newAgentDir prepares a directory with shim links and returns an
// agentProc that is not started yet.
func newAgentDir(t *testing.T) *agentProc {
	t.Helper()
	dir := t.TempDir()
	a := &agentProc{t: t, dir: dir, socket: filepath.Join(dir, "run", "sluice.sock"),
		shimBin: filepath.Join(dir, "shimbin"), shimLog: filepath.Join(dir, "shim.log")}
	if err := os.MkdirAll(a.shimBin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"git", "git-upload-pack", "git-receive-pack", "git-upload-archive"} {
		if err := os.Symlink(bins.shim, filepath.Join(a.shimBin, name)); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// limitRule is one [[limit]] table for the subcommand name (its name and
// its match), keyed by key, with perKey slots and a queue of queue
// waiting at most wait.
func limitRule(name, key string, perKey, queue int, wait string) string {
	return fmt.Sprintf("\n[[limit]]\nname = %q\nmatch = [%q]\nkey = %q\nmax_per_key = %d\nmax_queue_size = %d\nmax_queue_wait = %q\n",
		name, name, key, perKey, queue, wait)
}

// startAgent starts sluiced with the given [[limit]] rules (TOML) and
// agent settings, and waits until it is ready.
func startAgent(t *testing.T, limits string, failMode string) *agentProc {
	a := newAgentDir(t)
	a.start(limits, failMode)
	return a
}

func (a *agentProc) start(limits, failMode string) {
	t := a.t
	t.Helper()
	cfg := fmt.Sprintf(`
[agent]
socket = %q
metrics_addr = "127.0.0.1:0"
fail_mode = %q
%s
[git]
bin = %q
%s`, a.socket, failMode, a.agentExtra, bins.realGit, limits)
	if !strings.Contains(limits, "[cgroups]") {
		cfg += "\n[cgroups]\nenabled = false\n"
	}
	ag := &agenttest.Agent{Bin: bins.sluiced, Dir: a.dir, Socket: a.socket, Wrap: a.wrap, Env: baseEnv(a.dir)}
	a.Agent = ag
	if err := ag.Start(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ag.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("sluiced log:\n%s", ag.Logs())
			if b, err := os.ReadFile(a.shimLog); err == nil {
				t.Logf("shim log:\n%s", b)
			}
		}
	})
}

// stop sends SIGTERM and waits for sluiced to exit, failing the test when
// it did not exit cleanly.
func (a *agentProc) stop() {
	if a.Agent == nil {
		return
	}
	if err := a.Stop(); err != nil {
		a.t.Error(err)
	}
}

// env returns the environment for a shim talking to this agent.
func (a *agentProc) env(extra ...string) []string {
	e := baseEnv(a.dir)
	e = append(e, "SLUICE_SOCKET="+a.socket, "SLUICE_SHIM_LOG="+a.shimLog)
	return append(e, extra...)
}

// scrape returns the agent's metrics as series → value, series written
// as in the exposition format (`name{label="v",…}`).
func (a *agentProc) scrape() map[string]float64 {
	a.t.Helper()
	m, err := a.Scrape()
	if err != nil {
		a.t.Fatalf("scrape: %v", err)
	}
	return m
}

// metric returns one series' value (0 when absent).
func (a *agentProc) metric(series string) float64 {
	return a.scrape()[series]
}

// waitLogLines waits until the agent has logged at least n lines with msg
// msg and returns them: a log line can trail the counter it reports.
func (a *agentProc) waitLogLines(t *testing.T, msg string, n int) []map[string]any {
	t.Helper()
	lines, err := a.WaitLogLines(msg, n, 10*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, a.Logs())
	}
	return lines
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// git runs real git (no shim) in dir and returns its trimmed stdout.
func git(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bins.realGit, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// makeRepo creates a bare repository with a few commits, branches and a
// tag, and returns its path.
func makeRepo(t *testing.T, parent, name string, commits int) string {
	t.Helper()
	env := baseEnv(parent)
	work := filepath.Join(parent, name+"-work")
	git(t, parent, env, "init", "-q", "-b", "main", work)
	for i := 0; i < commits; i++ {
		var b strings.Builder
		for j := 0; j < 200; j++ {
			fmt.Fprintf(&b, "line %d of file %d in commit %d: %x\n", j, i%5, i, i*j*2654435761)
		}
		if err := os.WriteFile(filepath.Join(work, fmt.Sprintf("file%d.txt", i%5)), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		git(t, work, env, "add", "-A")
		git(t, work, env, "commit", "-q", "-m", fmt.Sprintf("commit %d", i))
		if i == commits/2 {
			git(t, work, env, "branch", "side")
			git(t, work, env, "tag", "-a", "-m", "v1", "v1")
		}
	}
	bare := filepath.Join(parent, name+".git")
	git(t, parent, env, "clone", "-q", "--bare", work, bare)
	return bare
}

// proc is a process started by the tests.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *lockedBuffer
	first  chan struct{} // closed when stdout produced its first byte
	head   []byte        // stdout's first read, set before first is closed
	done   chan struct{}
	err    error
}

// startProc starts argv with env in dir; stdin is a pipe kept open until
// closeStdin, stdout is drained and its first byte signalled.
func startProc(t *testing.T, dir string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(argv[0], argv[1:]...), stderr: &lockedBuffer{},
		first: make(chan struct{}), done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Env = env
	p.cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		var b [4096]byte
		once := sync.Once{}
		for {
			n, err := out.Read(b[:])
			if n > 0 {
				once.Do(func() { p.head = append([]byte(nil), b[:n]...); close(p.first) })
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		<-drained
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) closeStdin() { p.stdin.Close() }

// release ends a held upload-pack cleanly: a flush packet tells it the
// client wants nothing, and it exits 0.
func (p *proc) release() {
	p.stdin.Write([]byte("0000"))
	p.stdin.Close()
}

// wait waits for the process to exit and returns its exit code (-1 if it
// was killed by a signal).
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("process %v still running after %v; stderr:\n%s", p.cmd.Args, timeout, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) admitted() bool {
	select {
	case <-p.first:
		return !p.refused()
	default:
		return false
	}
}

// refused reports whether stdout began with the shim's refusal, an ERR
// pkt-line, rather than git's output.
func (p *proc) refused() bool {
	select {
	case <-p.first:
		return len(p.head) >= 8 && string(p.head[4:8]) == "ERR "
	default:
		return false
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// gitOf returns the pid of the real git that the shim process pid stands
// for: pid itself in exec-in-place mode, its only child in supervising
// mode.
//
// The agent counts a command in flight as it answers Admitted, a moment
// before the shim execs git in place (or starts it): gitOf waits for that.
func gitOf(t *testing.T, pid int) int {
	t.Helper()
	var kids []int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if sameFile(exeOf(pid), bins.realGit) {
			return pid
		}
		if kids = childrenOf(pid); len(kids) == 1 || time.Now().After(deadline) {
			break
		}
	}
	if len(kids) != 1 {
		t.Fatalf("shim %d (%s) has children %v, want exactly its git", pid, exeOf(pid), kids)
	}
	return kids[0]
}
