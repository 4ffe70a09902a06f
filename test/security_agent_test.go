package test

// security_agent_test.go: the agent's own trust boundaries, attacked with
// the real binaries (issue 14, properties 2, 3 and 4).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// A hand-made admission client: the test binary re-executed with
// SLUICE_SECTEST_RAW=<socket>. It speaks the shim's framing without the
// shim's clamping (an attacker's client), prints "admitted", then either
// holds the lease until stdin closes ("hold") or hands its connection to
// a `sleep 60` child, prints the child's pid and exits ("handoff").
func init() {
	if sock := os.Getenv("SLUICE_SECTEST_RAW"); sock != "" {
		os.Exit(rawClientMain(sock))
	}
}

func rawClientMain(sock string) int {
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Println("dial:", err)
		return 2
	}
	req := &shimproto.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/security.git"),
		CorrelationID: os.Getenv("SLUICE_SECTEST_CORR")}
	msg := append([]byte(shimproto.Magic), shimproto.AppendFrame(nil, shimproto.AppendAdmit(nil, req))...)
	if _, err := c.Write(msg); err != nil {
		fmt.Println("write:", err)
		return 2
	}
	for {
		f, err := shimproto.ReadFrame(c, nil)
		if err != nil {
			fmt.Println("read:", err)
			return 2
		}
		m, err := shimproto.DecodeServerMsg(f)
		if err != nil {
			fmt.Println("decode:", err)
			return 2
		}
		if m.Kind == shimproto.ServerRejected {
			fmt.Printf("rejected: %s\n", m.Reply.Message)
			return 3
		}
		if m.Kind == shimproto.ServerAdmitted {
			break
		}
	}
	fmt.Println("admitted")
	if os.Getenv("SLUICE_SECTEST_MODE") == "handoff" {
		f, err := c.(*net.UnixConn).File()
		if err != nil {
			fmt.Println(err)
			return 2
		}
		child := exec.Command("sleep", "60")
		child.ExtraFiles = []*os.File{f}
		if err := child.Start(); err != nil {
			fmt.Println(err)
			return 2
		}
		fmt.Println(child.Process.Pid)
		return 0
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// startRawClient runs the hand-made client against a and waits until it
// is admitted; it returns the process and the rest of its stdout.
func startRawClient(t *testing.T, a *agentProc, mode, corr string, stderr io.Writer) (*exec.Cmd, *bufio.Reader, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = []string{"SLUICE_SECTEST_RAW=" + a.socket, "SLUICE_SECTEST_MODE=" + mode, "SLUICE_SECTEST_CORR=" + corr, "PATH=/usr/bin:/bin"}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	if strings.TrimSpace(line) != "admitted" {
		t.Fatalf("raw client: %q, %v", line, err)
	}
	return cmd, r, stdin
}

// sluicedConfig writes a's config (as agentProc.start does) and returns
// its path.
func sluicedConfig(t *testing.T, a *agentProc, limits string) string {
	t.Helper()
	cfg := fmt.Sprintf("[agent]\nsocket = %q\nmetrics_addr = \"127.0.0.1:0\"\n[git]\nbin = %q\n%s\n[cgroups]\nenabled = false\n",
		a.socket, bins.realGit, limits)
	p := filepath.Join(a.dir, "sluice.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runRefused runs sluiced and expects it to refuse to start; it returns
// what it printed.
func runRefused(t *testing.T, a *agentProc) string {
	t.Helper()
	cmd := exec.Command(bins.sluiced, "-config", sluicedConfig(t, a, uploadPackRule))
	cmd.Env = baseEnv(a.dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("sluiced exited 0; want a refusal:\n%s", out.String())
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		t.Fatalf("sluiced started on an unsafe directory:\n%s", out.String())
	}
	return out.String()
}

func mkdirOwned(t *testing.T, d string, mode uint32, uid int) {
	t.Helper()
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(d, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, uid, -1); err != nil {
		t.Fatal(err)
	}
}

// TestAgentRefusesUnsafeStateDirs: a socket directory owned by an
// unprivileged user, one writable by others, and leases/ planted as a
// symlink to a directory elsewhere each stop sluiced at start with a
// message naming the path, what was found and the fix. Nothing is created
// behind the symlink.
func TestAgentRefusesUnsafeStateDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to plant directories owned by another uid")
	}
	t.Run("socket dir owned by uid 65534", func(t *testing.T) {
		a := newAgentDir(t)
		run := filepath.Dir(a.socket)
		mkdirOwned(t, run, 0o755, 65534)
		out := runRefused(t, a)
		for _, w := range []string{"socket directory: " + run + " is owned by uid 65534", "mode 0755", "chown 0 " + run} {
			if !strings.Contains(out, w) {
				t.Errorf("output does not say %q:\n%s", w, out)
			}
		}
		if _, err := os.Lstat(a.socket); err == nil {
			t.Error("the socket was created in the user's directory")
		}
	})
	t.Run("socket dir writable by others", func(t *testing.T) {
		a := newAgentDir(t)
		run := filepath.Dir(a.socket)
		mkdirOwned(t, run, 0o777, 0)
		out := runRefused(t, a)
		if !strings.Contains(out, run+" is owned by uid 0 gid 0 with mode 0777") || !strings.Contains(out, "chmod go-w "+run) {
			t.Errorf("output does not name the mode and the fix:\n%s", out)
		}
	})
	t.Run("leases is a symlink", func(t *testing.T) {
		a := newAgentDir(t)
		run := filepath.Dir(a.socket)
		mkdirOwned(t, run, 0o750, 0)
		elsewhere := t.TempDir() // stands for /etc
		if err := os.Symlink(elsewhere, filepath.Join(run, "leases")); err != nil {
			t.Fatal(err)
		}
		out := runRefused(t, a)
		if !strings.Contains(out, filepath.Join(run, "leases")+" is a symlink") {
			t.Errorf("output does not name the symlink:\n%s", out)
		}
		if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
			t.Errorf("sluiced created %d files behind the symlink", len(ents))
		}
	})
}

// procStart returns pid's start time (/proc/PID/stat field 22).
func procStart(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAgentIgnoresPlantedLeaseRecords plants, in a correctly owned
// leases/, a record owned by uid 65534 and a symlink to a record elsewhere,
// both naming a victim process of another user. sluiced must start, adopt
// neither (no slot held, the victim untouched and still running after the
// agent stops) and not touch the symlink's target.
func TestAgentIgnoresPlantedLeaseRecords(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to plant files owned by another uid")
	}
	victim := exec.Command("sleep", "60")
	victim.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { victim.Process.Kill(); victim.Wait() }()
	rec, _ := json.Marshal(map[string]any{"pid": victim.Process.Pid, "start": procStart(t, victim.Process.Pid), "uid": 65534,
		"limit": "upload-pack", "key": "/srv/victim.git", "command": "git", "subcmd": "upload-pack",
		"repo": []byte("/srv/victim.git"), "correlation_id": "planted", "admitted": time.Now(), "arrived": time.Now()})

	a := newAgentDir(t)
	run := filepath.Dir(a.socket)
	mkdirOwned(t, run, 0o750, 0)
	leases := filepath.Join(run, "leases")
	mkdirOwned(t, leases, 0o700, 0)
	foreign := filepath.Join(leases, "00000000000000e1")
	if err := os.WriteFile(foreign, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "record")
	if err := os.WriteFile(target, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(leases, "00000000000000e2")); err != nil {
		t.Fatal(err)
	}

	a.start(uploadPackRule, "open")
	waitFor(t, 10*time.Second, "the planted records are refused", func() bool {
		return strings.Count(a.Logs(), "lease state not adopted") >= 2
	})
	logs := a.Logs()
	if strings.Contains(logs, "adopted a command still running") {
		t.Fatalf("a planted record was adopted:\n%s", logs)
	}
	if !strings.Contains(logs, "owned by uid 65534") || !strings.Contains(logs, "a symlink; not followed") {
		t.Errorf("the log does not say why the records were refused:\n%s", logs)
	}
	if n := a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`); n != 0 {
		t.Errorf("in progress = %v: a planted record holds a slot", n)
	}
	if b, err := os.ReadFile(target); err != nil || !bytes.Equal(b, rec) {
		t.Errorf("the symlink's target was changed or removed: %v", err)
	}
	a.stop()
	if err := unix.Kill(victim.Process.Pid, 0); err != nil {
		t.Fatal("the victim is gone")
	}
	var ws unix.WaitStatus
	if pid, _ := unix.Wait4(victim.Process.Pid, &ws, unix.WNOHANG, nil); pid != 0 {
		t.Fatalf("the victim was signalled: %v", ws)
	}
}

var timeoutRule = limitRule("upload-pack", "repo", 5, 5, "10s") + `
max_runtime = "%s"

[timeouts]
upload_pack_negotiation = "%s"
kill_grace = "1s"
`

// TestTimeoutNeverWritesReadOnlyStderr runs the real shim as uid 65534
// with its stderr opened read-only on a root-owned 0644 file (it may read
// the file, not write it) and a git that never ends its negotiation. The
// negotiation timeout must stop it without writing a byte to that file.
func TestTimeoutNeverWritesReadOnlyStderr(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the shim as another uid")
	}
	a := newAgentDir(t)
	a.start(fmt.Sprintf(timeoutRule, "0s", "1s"), "open")
	dir := t.TempDir()
	shim := filepath.Join(dir, "git-upload-pack")
	copyExecutable(t, bins.shim, shim)
	fakeGit := filepath.Join(dir, "git")
	if err := os.WriteFile(fakeGit, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Dir(dir), a.dir, filepath.Dir(a.dir), filepath.Dir(a.socket)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(a.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	const orig = "root:$6$notreallysecret:19000:0:99999:7:::\n"
	shadow := filepath.Join(dir, "shadow")
	if err := os.WriteFile(shadow, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	// The shell opens the file read-only as fd 2 (as uid 65534 could),
	// then runs the shim.
	cmd := exec.Command("/bin/sh", "-c", `exec "$0" /srv/security.git 2<"$1"`, shim, shadow)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "SLUICE_SOCKET=" + a.socket, "SLUICE_REAL_GIT=" + fakeGit,
		"SLUICE_SHIM_LOG=/dev/null"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := cmd.StdinPipe() // never written: the client stalls
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the stalled command was not stopped:\n%s", a.Logs())
	}
	if b, _ := os.ReadFile(shadow); string(b) != orig {
		t.Fatalf("the agent wrote to a file the caller could only read: %q", b)
	}
	waitFor(t, 5*time.Second, "the timeout log line", func() bool {
		return strings.Contains(a.Logs(), "timeout: command stopped")
	})
	if !strings.Contains(a.Logs(), "not open for writing") {
		t.Errorf("the log does not say why stderr was not written:\n%s", a.Logs())
	}
}

// TestCallerTextEscaped sends, from a hand-made client, a correlation id
// holding ESC[2J, CR, LF and a bidi override. The max_runtime line on the
// client's stderr and the agent's log lines carry it escaped.
func TestCallerTextEscaped(t *testing.T) {
	a := newAgentDir(t)
	a.start(fmt.Sprintf(timeoutRule, "1s", "0s"), "open")
	const corr = "\x1b[2J\r\n{\"level\":\"error\",\"msg\":\"forged\"}\u202e"
	const want = `\x1b[2J\r\n{"level":"error","msg":"forged"}\u202e`
	var stderr lockedBuffer
	cmd, _, _ := startRawClient(t, a, "hold", corr, &stderr)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("max_runtime did not stop the client:\n%s", a.Logs())
	}
	line := stderr.String()
	if !strings.Contains(line, "sluice: upload-pack exceeded max_runtime = 1s") || !strings.Contains(line, "(correlation id "+want+")\n") {
		t.Errorf("stderr %q does not carry the escaped correlation id", line)
	}
	if strings.ContainsAny(strings.TrimSuffix(line, "\n"), "\x1b\r\n\u202e") {
		t.Errorf("stderr %q carries control characters", line)
	}
	waitFor(t, 5*time.Second, "the timeout log line", func() bool {
		return strings.Contains(a.Logs(), "timeout: command stopped")
	})
	n := 0
	for _, l := range strings.Split(a.Logs(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if c, ok := m["correlation_id"].(string); ok && strings.Contains(c, "forged") {
			n++
			if c != want {
				t.Errorf("log line %q: correlation_id %q, want %q", m["msg"], c, want)
			}
		}
		if m["msg"] == "forged" {
			t.Error("a forged log line appeared")
		}
	}
	if n == 0 {
		t.Errorf("no log line carries the correlation id:\n%s", a.Logs())
	}
}

// TestSupervisedLeaseEndsWithPeer: a hand-made client is admitted, hands
// its connection to a child that lives on, and exits. The slot is the
// peer's: it must be released when the peer exits, not when the child
// closes the connection a minute later.
func TestSupervisedLeaseEndsWithPeer(t *testing.T) {
	a := newAgentDir(t)
	a.start(uploadPackRule, "open")
	cmd, out, _ := startRawClient(t, a, "handoff", "handoff", io.Discard)
	line, err := out.ReadString('\n')
	child, cerr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || cerr != nil {
		t.Fatalf("raw client: %q, %v", line, err)
	}
	defer unix.Kill(child, unix.SIGKILL) // the sleep the client started
	cmd.Wait()
	series := `sluice_concurrency_limiting_in_progress{limit="upload-pack"}`
	waitFor(t, 10*time.Second, "the slot released after the peer exited", func() bool { return a.metric(series) == 0 })
	if err := unix.Kill(child, 0); err != nil {
		t.Fatalf("the child holding the connection is gone (%v): the test proves nothing", err)
	}
	// The log reaches the test through a pipe and can trail the metric.
	waitFor(t, 10*time.Second, "a log line saying why the lease was released", func() bool {
		return strings.Contains(a.Logs(), "the process holding the lease exited")
	})
}
