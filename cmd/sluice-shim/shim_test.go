package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// shimBin is the shim built once by TestMain.
var shimBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-shim-test")
	if err != nil {
		panic(err)
	}
	shimBin = filepath.Join(dir, "sluice-shim")
	out, err := exec.Command("go", "build", "-o", shimBin, ".").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		os.RemoveAll(dir)
		panic("build sluice-shim: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fakeGit behaves as FAKE_GIT says: exit:N, kill:SIG, sleep (writes its pid
// to FAKE_GIT_PIDFILE then sleeps). It records argv and some environment
// in FAKE_GIT_OUT.
const fakeGit = `#!/bin/sh
if [ -n "$FAKE_GIT_OUT" ]; then
	{ echo "argv:$*"; echo "corr:$CORRELATION_ID"; echo "pwd:$(pwd)"
	  echo "sockets:$(ls -l /proc/$$/fd | grep -c socket:)"; [ -e /proc/$$/fd/3 ] && echo "fd3:open"; } > "$FAKE_GIT_OUT"
fi
case "$FAKE_GIT" in
exit:*) exit "${FAKE_GIT#exit:}" ;;
kill:*) kill -s "${FAKE_GIT#kill:}" $$; exit 99 ;;
sleep) echo $$ > "$FAKE_GIT_PIDFILE.tmp"; mv "$FAKE_GIT_PIDFILE.tmp" "$FAKE_GIT_PIDFILE"; exec sleep 1000 ;;
esac
exit 0
`

type env struct {
	t    *testing.T
	dir  string
	sock string
	git  string // fake git
	out  string // FAKE_GIT_OUT
	log  string // SLUICE_SHIM_LOG
	vars []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, sock: filepath.Join(dir, "sluice.sock"), git: filepath.Join(dir, "fakegit"),
		out: filepath.Join(dir, "git.out"), log: filepath.Join(dir, "shim.log")}
	if err := os.WriteFile(e.git, []byte(fakeGit), 0o755); err != nil {
		t.Fatal(err)
	}
	e.vars = []string{
		"PATH=/usr/bin:/bin",
		"HOME=" + dir,
		"SLUICE_SOCKET=" + e.sock,
		"SLUICE_REAL_GIT=" + e.git,
		"SLUICE_SHIM_LOG=" + e.log,
		"FAKE_GIT_OUT=" + e.out,
	}
	return e
}

func (e *env) config(c shimproto.ShimConfig) {
	if err := shimproto.WriteShimConfig(shimproto.ShimConfigPath(e.sock), c); err != nil {
		e.t.Fatal(err)
	}
}

// cmd prepares the shim run as argv (argv[0] is the name it is run as).
func (e *env) cmd(argv []string, extra ...string) *exec.Cmd {
	c := &exec.Cmd{Path: shimBin, Args: argv, Env: append(append([]string(nil), e.vars...), extra...), Dir: e.dir}
	return c
}

type result struct {
	ws     syscall.WaitStatus
	stderr string
}

func runCmd(t *testing.T, c *exec.Cmd) result {
	t.Helper()
	var stderr bytes.Buffer
	c.Stderr = &stderr
	err := c.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %q: %v", c.Args, err)
	}
	return result{ws: c.ProcessState.Sys().(syscall.WaitStatus), stderr: stderr.String()}
}

func (e *env) gitRan() (string, bool) {
	b, err := os.ReadFile(e.out)
	return string(b), err == nil
}

func sameStatus(a, b syscall.WaitStatus) bool {
	if a.Signaled() || b.Signaled() {
		return a.Signaled() && b.Signaled() && a.Signal() == b.Signal()
	}
	return a.Exited() && b.Exited() && a.ExitStatus() == b.ExitStatus()
}

func describe(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit " + strconv.Itoa(ws.ExitStatus())
}

// agent is a fake sluiced speaking the shim framing.
type agent struct {
	admits   chan shimproto.AdmitRequest
	finished chan shimproto.Finished
	closed   chan struct{} // one per connection closed
}

// startAgent serves connections: answer writes the replies for a request
// (nil: read it and never answer until the test ends).
func startAgent(t *testing.T, sock string, answer func(shimproto.AdmitRequest) []shimproto.ServerMsg) *agent {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{admits: make(chan shimproto.AdmitRequest, 16), finished: make(chan shimproto.Finished, 16), closed: make(chan struct{}, 16)}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { c.Close(); a.closed <- struct{}{} }()
				r := bufio.NewReader(c)
				magic := make([]byte, len(shimproto.Magic))
				if _, err := io.ReadFull(r, magic); err != nil || string(magic) != shimproto.Magic {
					t.Errorf("magic %q %v", magic, err)
					return
				}
				f, err := shimproto.ReadFrame(r, nil)
				if err != nil {
					t.Errorf("admit frame: %v", err)
					return
				}
				m, err := shimproto.DecodeClientMsg(f)
				if err != nil || m.Kind != shimproto.ClientAdmit {
					t.Errorf("admit: %+v %v", m, err)
					return
				}
				a.admits <- m.Admit
				if answer == nil {
					<-stop
					return
				}
				var out []byte
				for _, sm := range answer(m.Admit) {
					out = shimproto.AppendFrame(out, shimproto.AppendServerMsg(nil, &sm))
				}
				c.Write(out)
				for {
					f, err := shimproto.ReadFrame(r, nil)
					if err != nil {
						return // closed: lease released
					}
					if m, err := shimproto.DecodeClientMsg(f); err == nil && m.Kind == shimproto.ClientFinished {
						a.finished <- m.Finished
					}
				}
			}()
		}
	}()
	return a
}

func admitAll(shimproto.AdmitRequest) []shimproto.ServerMsg {
	return []shimproto.ServerMsg{
		{Kind: shimproto.ServerQueued, Queued: shimproto.Queued{Limit: "upload-pack", Position: 1, QueueLength: 1}},
		{Kind: shimproto.ServerAdmitted, Reply: shimproto.Reply{Admitted: true, LeaseID: "lease-1", Limit: "upload-pack"}},
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(shimBin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "sluice-shim ") {
		t.Errorf("--version: %q %v", out, err)
	}
}

// TestExitStatusTransparency compares the wait status of the fake git run
// directly with the shim's, unmatched (exec) and admitted (supervised).
func TestExitStatusTransparency(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e.sock, admitAll)
	for _, mode := range []string{"exit:0", "exit:1", "exit:128", "exit:129", "exit:255", "kill:TERM", "kill:KILL", "kill:INT", "kill:HUP", "kill:QUIT", "kill:SEGV", "kill:PIPE", "kill:USR1"} {
		direct := runCmd(t, &exec.Cmd{Path: e.git, Args: []string{"git"}, Env: []string{"FAKE_GIT=" + mode}})
		if mode == "exit:0" && (!direct.ws.Exited() || direct.ws.ExitStatus() != 0) {
			t.Fatalf("fake git broken: %s", describe(direct.ws))
		}
		unmatched := runCmd(t, e.cmd([]string{"git", "rev-parse", "HEAD"}, "FAKE_GIT="+mode))
		if !sameStatus(direct.ws, unmatched.ws) {
			t.Errorf("%s unmatched: shim %s, git %s; stderr %q", mode, describe(unmatched.ws), describe(direct.ws), unmatched.stderr)
		}
		admitted := runCmd(t, e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT="+mode))
		if !sameStatus(direct.ws, admitted.ws) {
			t.Errorf("%s admitted: shim %s, git %s; stderr %q", mode, describe(admitted.ws), describe(direct.ws), admitted.stderr)
		}
		<-a.admits
		f := <-a.finished
		wantCode, wantSig := int32(direct.ws.ExitStatus()), int32(0)
		if direct.ws.Signaled() {
			wantCode, wantSig = -1, int32(direct.ws.Signal())
		}
		if f.ExitCode != wantCode || f.Signal != wantSig || f.RealUsec <= 0 || f.MaxRSSKiB <= 0 {
			t.Errorf("%s: Finished = %+v, want exit %d signal %d", mode, f, wantCode, wantSig)
		}
	}
}

// TestIgnoredSignalsStayIgnored: a git started with SIGHUP and SIGINT
// ignored (nohup, a shell's background job) keeps them ignored under the
// shim, unmatched (exec) and admitted (supervised), as it would without it.
// The supervising shim used to catch them to forward, so git got the
// default action back and died of the SIGHUP nohup was there to survive.
func TestIgnoredSignalsStayIgnored(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed: needed for `exec -a` with signals ignored")
	}
	e := newEnv(t)
	a := startAgent(t, e.sock, admitAll)
	// trap '' makes the signal SIG_IGN; exec keeps it ignored.
	ignoring := func(argv0, path string, args []string, mode string) *exec.Cmd {
		script := `trap '' HUP INT; exec -a "$0" "$@"`
		c := &exec.Cmd{Path: bash, Args: append([]string{"bash", "-c", script, argv0, path}, args...), Env: append(append([]string(nil), e.vars...), "FAKE_GIT="+mode), Dir: e.dir}
		return c
	}
	for _, mode := range []string{"kill:HUP", "kill:INT"} {
		direct := runCmd(t, ignoring("git", e.git, nil, mode))
		if !direct.ws.Exited() || direct.ws.ExitStatus() != 99 {
			t.Fatalf("%s direct: fake git %s, want exit 99 (signal ignored)", mode, describe(direct.ws))
		}
		unmatched := runCmd(t, ignoring("git", shimBin, []string{"rev-parse", "HEAD"}, mode))
		if !sameStatus(direct.ws, unmatched.ws) {
			t.Errorf("%s unmatched: shim %s, git %s; stderr %q", mode, describe(unmatched.ws), describe(direct.ws), unmatched.stderr)
		}
		admitted := runCmd(t, ignoring("git-upload-pack", shimBin, []string{e.dir}, mode))
		if !sameStatus(direct.ws, admitted.ws) {
			t.Errorf("%s admitted: shim %s, git %s; stderr %q", mode, describe(admitted.ws), describe(direct.ws), admitted.stderr)
		}
		<-a.admits
		if f := <-a.finished; f.ExitCode != 99 || f.Signal != 0 {
			t.Errorf("%s: Finished = %+v, want exit 99", mode, f)
		}
	}
}

func TestAdmittedRequest(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e.sock, admitAll)
	repo := filepath.Join(e.dir, "r.git")
	os.MkdirAll(filepath.Join(repo, "objects"), 0o755)
	os.WriteFile(filepath.Join(repo, "HEAD"), []byte("ref: refs/heads/main\n"), 0o644)

	// fd 3: inherited without close-on-exec by the shim; git must get it too.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	c := e.cmd([]string{"git-upload-pack", "r"}, "FAKE_GIT=exit:0",
		"SSH_CONNECTION=::ffff:192.0.2.7 50000 10.0.0.1 22", "USER=alice")
	c.ExtraFiles = []*os.File{pw}
	res := runCmd(t, c)
	if !res.ws.Exited() || res.ws.ExitStatus() != 0 {
		t.Fatalf("%s: %s", describe(res.ws), res.stderr)
	}
	req := <-a.admits
	if req.Command != "git-upload-pack" || req.Subcommand != "upload-pack" || string(req.Repo) != repo ||
		req.RemoteIP != "192.0.2.7" || req.User != "alice" || req.Hook {
		t.Errorf("request = %+v", req)
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(req.CorrelationID) {
		t.Errorf("correlation id %q", req.CorrelationID)
	}
	out, _ := e.gitRan()
	if !strings.Contains(out, "argv:upload-pack r\n") || !strings.Contains(out, "corr:"+req.CorrelationID+"\n") {
		t.Errorf("git saw %q (want argv upload-pack r and CORRELATION_ID=%s)", out, req.CorrelationID)
	}
	if !strings.Contains(out, "sockets:0\n") {
		t.Errorf("git inherited the lease socket: %q", out)
	}
	if !strings.Contains(out, "fd3:open\n") {
		t.Errorf("git did not inherit fd 3: %q", out)
	}
	if f := <-a.finished; f.ExitCode != 0 {
		t.Errorf("finished %+v", f)
	}
	<-a.closed // the lease is released when git is done
}

func TestHookMode(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e.sock, admitAll)
	c := e.cmd([]string{"sluice-shim", "git", "--shallow-file", "", "pack-objects", "--revs", "--thin", "--stdout"},
		"FAKE_GIT=exit:0", "GIT_DIR=.", "CORRELATION_ID=from-upstream", "REMOTE_ADDR=[2001:db8::1]", "REMOTE_USER=bob")
	c.Dir = filepath.Join(e.dir, "x.git")
	os.MkdirAll(c.Dir, 0o755)
	if res := runCmd(t, c); res.ws.ExitStatus() != 0 {
		t.Fatalf("%s: %s", describe(res.ws), res.stderr)
	}
	req := <-a.admits
	if !req.Hook || req.Subcommand != "pack-objects" || string(req.Repo) != c.Dir || req.CorrelationID != "from-upstream" ||
		req.RemoteIP != "2001:db8::1" || req.User != "bob" {
		t.Errorf("request = %+v", req)
	}
	if out, _ := e.gitRan(); !strings.Contains(out, "argv:--shallow-file  pack-objects --revs --thin --stdout\n") {
		t.Errorf("git saw %q", out)
	}
}

func TestRejected(t *testing.T) {
	e := newEnv(t)
	startAgent(t, e.sock, func(shimproto.AdmitRequest) []shimproto.ServerMsg {
		return []shimproto.ServerMsg{{Kind: shimproto.ServerRejected, Reply: shimproto.Reply{Reason: 1,
			Message: "sluice: upload-pack queue for this repository is full (limit upload-pack); try again in a minute\nsecond line"}}}
	})
	c := e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT=exit:0", "CORRELATION_ID=c0ffee")
	var stdout bytes.Buffer
	c.Stdout = &stdout
	res := runCmd(t, c)
	if !res.ws.Exited() || res.ws.ExitStatus() != exitTempFail {
		t.Errorf("%s, want exit %d", describe(res.ws), exitTempFail)
	}
	const line = "sluice: upload-pack queue for this repository is full (limit upload-pack); try again in a minute (correlation id c0ffee)"
	if res.stderr != line+"\n" {
		t.Errorf("stderr %q", res.stderr)
	}
	// The client reads one ERR pkt-line, nothing else.
	if want := fmt.Sprintf("%04xERR %s\n", len(line)+9, line); stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	if _, ran := e.gitRan(); ran {
		t.Error("git ran although rejected")
	}
}

func TestNoAgentFailOpen(t *testing.T) {
	e := newEnv(t) // nothing listens on e.sock
	res := runCmd(t, e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT=exit:3"))
	if !res.ws.Exited() || res.ws.ExitStatus() != 3 || res.stderr != "" {
		t.Errorf("%s stderr %q; want git's exit 3 and a quiet stderr", describe(res.ws), res.stderr)
	}
	if _, ran := e.gitRan(); !ran {
		t.Error("git did not run")
	}
	log, _ := os.ReadFile(e.log)
	if !strings.Contains(string(log), "admission service unavailable at "+e.sock) {
		t.Errorf("log %q", log)
	}
}

func TestNoAgentFailClosed(t *testing.T) {
	e := newEnv(t)
	e.config(shimproto.ShimConfig{FailClosed: true, Match: []string{"upload-pack"}})
	res := runCmd(t, e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT=exit:0"))
	if !res.ws.Exited() || res.ws.ExitStatus() != exitTempFail {
		t.Errorf("%s, want %d", describe(res.ws), exitTempFail)
	}
	want := regexp.MustCompile(`^sluice: admission service unavailable at ` + regexp.QuoteMeta(e.sock) + ` \(.+\); fail_mode is "closed": try again in 5s \(correlation id [0-9a-f]{16}\)\n$`)
	if !want.MatchString(res.stderr) {
		t.Errorf("stderr %q", res.stderr)
	}
	if _, ran := e.gitRan(); ran {
		t.Error("git ran although fail_mode is closed")
	}
	// Unmatched commands never need the agent.
	if res := runCmd(t, e.cmd([]string{"git", "rev-parse"}, "FAKE_GIT=exit:0")); res.ws.ExitStatus() != 0 {
		t.Errorf("unmatched with fail closed: %s %q", describe(res.ws), res.stderr)
	}
}

func TestMatchFromConfig(t *testing.T) {
	e := newEnv(t)
	e.config(shimproto.ShimConfig{FailClosed: true, Match: nil}) // nothing matched
	if res := runCmd(t, e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT=exit:0")); res.ws.ExitStatus() != 0 {
		t.Errorf("empty match still asked the (absent) agent: %s %q", describe(res.ws), res.stderr)
	}
}

// TestHungAgent: an agent that accepts and reads but never answers must not
// hang the shim: it gives up after shimproto.FirstReplyTimeout and applies the
// fail mode. (The test's own timeout bounds it; nothing is timed here.)
func TestHungAgent(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e.sock, nil)
	res := runCmd(t, e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT=exit:0"))
	<-a.admits
	if res.ws.ExitStatus() != 0 {
		t.Errorf("fail open: %s %q", describe(res.ws), res.stderr)
	}
	if log, _ := os.ReadFile(e.log); !strings.Contains(string(log), "no answer within") {
		t.Errorf("log %q", log)
	}
	e.config(shimproto.ShimConfig{FailClosed: true, Match: []string{"upload-pack"}, AdmitTimeout: time.Hour})
	res = runCmd(t, e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT=exit:0"))
	if res.ws.ExitStatus() != exitTempFail || !strings.Contains(res.stderr, "no answer within") {
		t.Errorf("fail closed: %s %q", describe(res.ws), res.stderr)
	}
}

// startSleepingGit runs the shim admitted with a git that sleeps; it returns
// the running shim and git's pid.
func startSleepingGit(t *testing.T, e *env) (*exec.Cmd, int) {
	t.Helper()
	pidfile := filepath.Join(e.dir, "git.pid")
	c := e.cmd([]string{"git-upload-pack", e.dir}, "FAKE_GIT=sleep", "FAKE_GIT_PIDFILE="+pidfile)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(pidfile); err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			return c, pid
		}
		if c.ProcessState != nil {
			t.Fatal("shim exited early")
		}
		time.Sleep(5 * time.Millisecond) // polling for a file another process writes
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestPdeathsig(t *testing.T) {
	e := newEnv(t)
	startAgent(t, e.sock, admitAll)
	c, pid := startSleepingGit(t, e)
	if !alive(pid) {
		t.Fatal("git not running")
	}
	c.Process.Kill() // SIGKILL: the shim cannot forward anything
	c.Wait()
	for alive(pid) {
		time.Sleep(5 * time.Millisecond) // the kernel delivers Pdeathsig asynchronously
	}
}

func TestSignalForwarding(t *testing.T) {
	e := newEnv(t)
	a := startAgent(t, e.sock, admitAll)
	c, pid := startSleepingGit(t, e)
	c.Process.Signal(syscall.SIGTERM)
	err := c.Wait()
	ws := c.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("shim ended with %s (%v), want signal SIGTERM", describe(ws), err)
	}
	<-a.admits
	if f := <-a.finished; f.Signal != int32(syscall.SIGTERM) || f.ExitCode != -1 {
		t.Errorf("finished %+v", f)
	}
	if alive(pid) {
		t.Error("git still running")
	}
}

// TestNoRecursion: the shim named git first on PATH finds the real git
// behind it; pointing SLUICE_REAL_GIT at the shim, or a copy of the shim
// standing in as git, ends with a clear error instead of a loop.
func TestNoRecursion(t *testing.T) {
	e := newEnv(t)
	shimDir := filepath.Join(e.dir, "shimbin")
	realDir := filepath.Join(e.dir, "realbin")
	os.MkdirAll(shimDir, 0o755)
	os.MkdirAll(realDir, 0o755)
	if err := os.Symlink(shimBin, filepath.Join(shimDir, "git")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.git, filepath.Join(realDir, "git")); err != nil {
		t.Fatal(err)
	}
	path := "PATH=" + shimDir + ":" + realDir + ":/usr/bin:/bin"
	c := e.cmd([]string{"git", "rev-parse", "HEAD"}, path, "FAKE_GIT=exit:7", "SLUICE_REAL_GIT=")
	c.Path = filepath.Join(shimDir, "git")
	if res := runCmd(t, c); res.ws.ExitStatus() != 7 {
		t.Errorf("via PATH: %s %q", describe(res.ws), res.stderr)
	}
	if out, _ := e.gitRan(); !strings.Contains(out, "argv:rev-parse HEAD") {
		t.Errorf("fake git saw %q", out)
	}

	res := runCmd(t, e.cmd([]string{"git", "rev-parse"}, "SLUICE_REAL_GIT="+filepath.Join(shimDir, "git")))
	if res.ws.ExitStatus() != exitNoGit || !strings.HasPrefix(res.stderr, "sluice: SLUICE_REAL_GIT=") || !strings.Contains(res.stderr, "is the sluice shim itself") {
		t.Errorf("SLUICE_REAL_GIT=shim: %s %q", describe(res.ws), res.stderr)
	}

	// A copy (another inode) cannot be recognised by stat; the exec guard stops it.
	copyDir := filepath.Join(e.dir, "copybin")
	os.MkdirAll(copyDir, 0o755)
	b, _ := os.ReadFile(shimBin)
	os.WriteFile(filepath.Join(copyDir, "git"), b, 0o755)
	c = e.cmd([]string{"git", "rev-parse"}, "PATH="+shimDir+":"+copyDir+":"+realDir, "SLUICE_REAL_GIT=")
	c.Path = filepath.Join(shimDir, "git")
	res = runCmd(t, c)
	if res.ws.ExitStatus() != exitNoGit || !strings.Contains(res.stderr, "exec'd the shim in place") {
		t.Errorf("copy of the shim as git: %s %q", describe(res.ws), res.stderr)
	}
}

func TestRejectLine(t *testing.T) {
	for _, c := range []struct {
		rep  shimproto.Reply
		want string
	}{
		{shimproto.Reply{Message: "sluice: full"}, "sluice: full"},
		{shimproto.Reply{Message: "full\r\nmore"}, "sluice: full"},
		{shimproto.Reply{Limit: "pack"}, "sluice: upload-pack rejected by limit pack; try again later"},
	} {
		if got := rejectLine(&c.rep, "upload-pack"); got != c.want {
			t.Errorf("rejectLine(%+v) = %q, want %q", c.rep, got, c.want)
		}
	}
}
