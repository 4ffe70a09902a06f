package test

// timeouts_test.go: negotiation timeouts, max_runtime and queue feedback
// end to end, with a real git daemon on loopback whose git is the shim
// (a private GIT_EXEC_PATH and PATH of shim links, as the package's
// /usr/lib/sluice/git-core; the installed package is not needed).

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"io"
	"net"
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

// daemonSetup is a sluiced and a git daemon whose git commands go through
// the shim.
type daemonSetup struct {
	a         *agentProc
	repos     string // base path of the daemon
	repo      string // repos/project.git
	port      int
	daemonLog string
	client    string // scratch directory for clones
}

// startDaemonSetup starts sluiced with limits (and [agent] extra TOML) and
// a git daemon serving a repository with files of random content of
// randomBytes in total. With hook, upload-pack runs pack-objects through
// uploadpack.packObjectsHook = the shim; without, it runs `git
// pack-objects` from its exec path, which is the shim too.
func startDaemonSetup(t *testing.T, limits, agentExtra string, hook bool, randomBytes int) *daemonSetup {
	t.Helper()
	return startDaemonSetupEnv(t, limits, agentExtra, hook, randomBytes, nil)
}

// startDaemonSetupEnv is startDaemonSetup with extra variables in git
// daemon's environment.
func startDaemonSetupEnv(t *testing.T, limits, agentExtra string, hook bool, randomBytes int, extraEnv []string) *daemonSetup {
	t.Helper()
	daemon := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(daemon); err != nil {
		t.Skipf("git daemon is not installed (%v): apt-get install git", err)
	}
	a := newAgentDir(t)
	a.agentExtra = agentExtra
	a.start(limits, "open")
	s := &daemonSetup{a: a, repos: filepath.Join(a.dir, "repos"), client: filepath.Join(a.dir, "client"),
		daemonLog: filepath.Join(a.dir, "git-daemon.log"), port: freePort(t)}
	core := filepath.Join(a.dir, "git-core")
	for _, d := range []string{s.repos, s.client, core} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"git", "git-upload-pack", "git-upload-archive"} {
		if err := os.Symlink(bins.shim, filepath.Join(core, n)); err != nil {
			t.Fatal(err)
		}
	}
	s.repo = makeRandomRepo(t, a.dir, s.repos, randomBytes)
	conf := "[safe]\n\tdirectory = *\n"
	if hook {
		conf += fmt.Sprintf("[uploadpack]\n\tpackObjectsHook = %s\n", bins.shim)
	}
	sysConfig := filepath.Join(a.dir, "server-gitconfig")
	if err := os.WriteFile(sysConfig, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"PATH=" + core + ":/usr/bin:/bin",
		"GIT_EXEC_PATH=" + core,
		"HOME=" + a.dir,
		"GIT_CONFIG_SYSTEM=" + sysConfig,
		"GIT_CONFIG_GLOBAL=/dev/null",
		"SLUICE_SOCKET=" + a.socket,
		"SLUICE_SHIM_LOG=" + a.shimLog,
		"LANG=C",
	}
	env = append(env, extraEnv...)
	startGroup(t, env, s.daemonLog, daemon, "--reuseaddr", "--base-path="+s.repos, "--export-all",
		"--enable=upload-archive", "--listen=127.0.0.1", "--port="+strconv.Itoa(s.port))
	waitListening(t, s.port, "git daemon")
	return s
}

// makeRandomRepo creates repos/project.git with a few commits and files of
// incompressible content, n bytes in all.
func makeRandomRepo(t *testing.T, scratch, repos string, n int) string {
	t.Helper()
	work := filepath.Join(scratch, "project-work")
	env := baseEnv(scratch)
	git(t, scratch, env, "init", "-q", "-b", "main", work)
	const files = 4
	for i := 0; i < files; i++ {
		b := make([]byte, n/files+1)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(work, fmt.Sprintf("blob%d.bin", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		git(t, work, env, "add", "-A")
		git(t, work, env, "commit", "-q", "-m", fmt.Sprintf("commit %d", i))
	}
	bare := filepath.Join(repos, "project.git")
	git(t, scratch, env, "clone", "-q", "--bare", work, bare)
	return bare
}

// pkt writes one pkt-line.
func pkt(w io.Writer, s string) {
	fmt.Fprintf(w, "%04x%s", len(s)+4, s)
}

// readUntilFlush reads pkt-lines up to a flush and returns their payloads.
func readUntilFlush(t *testing.T, r *bufio.Reader) []string {
	t.Helper()
	var out []string
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			t.Fatalf("reading pkt-line: %v (after %q)", err, out)
		}
		n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
		if err != nil {
			t.Fatalf("bad pkt-line header %q", hdr)
		}
		if n == 0 {
			return out
		}
		if n < 4 {
			continue // delim / response-end
		}
		b := make([]byte, n-4)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatalf("reading pkt-line body: %v", err)
		}
		out = append(out, string(b))
	}
}

// stallingClient connects to git daemon, reads the ref (v0) or capability
// (v2) advertisement — and for v2 runs ls-refs — then sends nothing more.
// It returns once the server closed the connection, failing the test when
// that takes more than limit.
func (s *daemonSetup) stallingClient(t *testing.T, v2 bool, limit time.Duration) {
	t.Helper()
	conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(s.port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := fmt.Sprintf("git-upload-pack /project.git\x00host=127.0.0.1:%d\x00", s.port)
	if v2 {
		req += "\x00version=2\x00"
	}
	pkt(conn, req)
	r := bufio.NewReader(conn)
	ad := readUntilFlush(t, r)
	if v2 {
		if len(ad) == 0 || !strings.HasPrefix(ad[0], "version 2") {
			t.Fatalf("no v2 capability advertisement: %q", ad)
		}
		pkt(conn, "command=ls-refs\n")
		conn.Write([]byte("0001"))
		pkt(conn, "peel\n")
		conn.Write([]byte("0000"))
		if refs := readUntilFlush(t, r); len(refs) == 0 || !strings.Contains(refs[0], "refs/heads/main") && !strings.Contains(refs[0], "HEAD") {
			t.Fatalf("ls-refs answer: %q", refs)
		}
	} else if len(ad) == 0 || !strings.Contains(ad[0], "HEAD") {
		t.Fatalf("no v0 ref advertisement: %q", ad)
	}
	// Now stall: the server must hang up at the negotiation timeout.
	conn.SetReadDeadline(time.Now().Add(limit))
	_, err = io.Copy(io.Discard, r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server still held the stalled connection after %v", limit)
	}
}

// TestNegotiationTimeoutCutsOffStalledClient: a raw git:// client that
// sends nothing after the advertisement (v0), or after ls-refs (v2), is
// cut off at upload_pack_negotiation; the metric, the log line with the
// correlation id, and the "sluice: …" line (in git daemon's log: git://
// carries no stderr) show it.
func TestNegotiationTimeoutCutsOffStalledClient(t *testing.T) {
	s := startDaemonSetup(t, limitRule("upload-pack", "repo", 5, 5, "10s")+`

[timeouts]
upload_pack_negotiation = "1s"
kill_grace = "2s"
`, "", true, 64<<10)
	series := `sluice_timeouts_total{kind="upload_pack_negotiation",limit="upload-pack"}`
	for i, v2 := range []bool{false, true} {
		name := map[bool]string{false: "v0", true: "v2"}[v2]
		t.Run(name, func(t *testing.T) {
			s.stallingClient(t, v2, 30*time.Second)
			waitFor(t, 10*time.Second, "the timeout counted", func() bool { return s.a.metric(series) == float64(i+1) })
			m := s.a.waitLogLines(t, "timeout: command stopped", i+1)[i]
			if m["kind"] != "upload_pack_negotiation" || m["correlation_id"] == "" || m["correlation_id"] == nil || m["subcmd"] != "upload-pack" {
				t.Errorf("log line %v", m)
			}
			waitFor(t, 10*time.Second, "the upload-pack lease released", func() bool {
				return s.a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0
			})
			b, _ := os.ReadFile(s.daemonLog)
			if want := "sluice: upload-pack exceeded upload_pack_negotiation = 1s;"; strings.Count(string(b), want) != i+1 {
				t.Errorf("git daemon's log has %d lines %q, want %d:\n%s", strings.Count(string(b), want), want, i+1, b)
			}
		})
	}
	if n := s.a.metric(`sluice_timeouts_total{kind="max_runtime",limit="upload-pack"}`); n != 0 {
		t.Errorf("max_runtime timeouts: %v", n)
	}
}

// throttleProxy forwards TCP connections to target, passing the server's
// bytes to the client at about rate bytes per second, with a small
// receive buffer so the server really has to wait for the client.
func throttleProxy(t *testing.T, target string, rate int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// A small receive buffer set before connect keeps the window
			// small, so the server cannot park the whole pack in buffers.
			d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
				return nil
			}}
			up, err := d.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(up, c)
				up.(*net.TCPConn).CloseWrite()
			}()
			go func() {
				defer wg.Done()
				defer c.Close()
				const chunk = 4 << 10
				buf := make([]byte, chunk)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
						time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestSlowCloneNotCutOff: a clone whose pack transfer (throttled by a
// proxy) outlasts the negotiation timeout several times completes, for v0
// and v2, whether the end of negotiation is seen through pack-objects'
// admission (hook mode) or by the process scan (no pack-objects rule).
func TestSlowCloneNotCutOff(t *testing.T) {
	const negotiation = 500 * time.Millisecond
	limits := limitRule("upload-pack", "repo", 5, 5, "10s") + `
%s
[timeouts]
upload_pack_negotiation = "500ms"
kill_grace = "1s"
`
	packRule := limitRule("pack-objects", "remote_ip", 5, 5, "10s")
	for _, mode := range []struct {
		name string
		hook bool
		rule string
	}{
		{"hook", true, packRule},
		{"scan", false, ""},
	} {
		t.Run(mode.name, func(t *testing.T) {
			s := startDaemonSetup(t, fmt.Sprintf(limits, mode.rule), "", mode.hook, 5<<20)
			proxy := throttleProxy(t, "127.0.0.1:"+strconv.Itoa(s.port), 1<<20)
			for i, proto := range []string{"0", "2"} {
				dst := filepath.Join(s.client, "clone-v"+proto)
				out, err := gitTry(s.client, s.clientEnv(), "-c", "protocol.version="+proto, "clone", "-q",
					"git://"+proxy+"/project.git", dst)
				if err != nil {
					t.Fatalf("slow clone (protocol v%s) failed: %v\n%s", proto, err, out)
				}
				git(t, dst, s.clientEnv(), "fsck", "--strict", "--no-progress")
				// The server's upload-pack really ran longer than the
				// negotiation timeout, or the test proves nothing.
				var real time.Duration
				waitFor(t, 10*time.Second, "upload-pack finished", func() bool {
					n := 0
					for _, m := range s.a.LogLines("command finished") {
						if m["subcmd"] == "upload-pack" {
							if n == i {
								if r, ok := m["real"].(float64); ok {
									real = time.Duration(r * float64(time.Second))
								} else if r, ok := m["real"].(string); ok {
									real, _ = time.ParseDuration(r)
								}
							}
							n++
						}
					}
					return n > i
				})
				if real < 2*negotiation {
					t.Fatalf("upload-pack ran %v, not beyond twice the negotiation timeout %v: make the transfer slower", real, negotiation)
				}
				t.Logf("protocol v%s: upload-pack ran %v with upload_pack_negotiation = %v", proto, real, negotiation)
			}
			if n := len(s.a.LogLines("timeout: command stopped")); n != 0 {
				t.Errorf("%d commands stopped by a timeout", n)
			}
			if mode.hook {
				if _, err := s.a.WaitLogLines("command finished", 4, 10*time.Second); err != nil {
					t.Errorf("pack-objects did not go through sluice in hook mode: %v", err)
				}
			}
		})
	}
}

// clientEnv is the cloning client's environment: real git, no sluice.
func (s *daemonSetup) clientEnv(extra ...string) []string {
	return append(baseEnv(s.client), extra...)
}

// TestMaxRuntimeStopsRunawayCommand: an upload-pack that never gets its
// request (negotiation timeout disabled with "0s") is stopped at its
// rule's max_runtime and told so on stderr; the metric and log show it.
func TestMaxRuntimeStopsRunawayCommand(t *testing.T) {
	a := startAgent(t, limitRule("upload-pack", "repo", 2, 0, "1s")+`
max_runtime = "1s"

[timeouts]
upload_pack_negotiation = "0s"
kill_grace = "5s"
`, "open")
	repo := makeRepo(t, a.dir, "r", 2)
	p := holdUploadPack(t, a, repo, "CORRELATION_ID=runaway-1")
	p.wait(t, 30*time.Second)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGTERM {
		t.Errorf("upload-pack ended with %v, want SIGTERM", p.cmd.ProcessState)
	}
	if want := `sluice: upload-pack exceeded max_runtime = 1s of limit "upload-pack"; the server stopped it (correlation id runaway-1)`; !strings.Contains(p.stderr.String(), want) {
		t.Errorf("stderr %q lacks %q", p.stderr.String(), want)
	}
	waitFor(t, 10*time.Second, "the timeout counted", func() bool {
		return a.metric(`sluice_timeouts_total{kind="max_runtime",limit="upload-pack"}`) == 1
	})
	// The metric can be counted before the agent's log line is copied
	// into the test's buffer.
	lines := a.waitLogLines(t, "timeout: command stopped", 1)
	if len(lines) != 1 || lines[0]["correlation_id"] != "runaway-1" || lines[0]["kind"] != "max_runtime" {
		t.Errorf("log lines %v", lines)
	}
	if n := a.metric(`sluice_timeouts_total{kind="upload_pack_negotiation",limit="upload-pack"}`); n != 0 {
		t.Errorf("negotiation timeout fired although disabled: %v", n)
	}
}

// TestMaxRuntimeKillsTreeAfterGrace: a command that ignores SIGTERM is
// killed after kill_grace together with its descendants.
func TestMaxRuntimeKillsTreeAfterGrace(t *testing.T) {
	a := startAgent(t, limitRule("upload-pack", "repo", 2, 0, "1s")+`
max_runtime = "1s"

[timeouts]
upload_pack_negotiation = "0s"
kill_grace = "500ms"
`, "open")
	pidFile := filepath.Join(a.dir, "child.pid")
	fake := fakeGit(t, a.dir, fmt.Sprintf("trap '' TERM\nsleep 120 &\necho $! > %s\nwait\nwait", pidFile))
	repo := makeRepo(t, a.dir, "r", 1)
	p := holdUploadPack(t, a, repo, "SLUICE_REAL_GIT="+fake)
	p.wait(t, 30*time.Second)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the shim ended with %v, want SIGKILL", p.cmd.ProcessState)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	child, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitFor(t, 10*time.Second, "the grandchild killed", func() bool { return !alive(child) })
	waitFor(t, 10*time.Second, "the SIGKILL logged", func() bool {
		return len(a.LogLines("timeout: command still running after kill_grace; sent SIGKILL to it and its descendants")) == 1
	})
}

// TestQueuedCloneShowsWaiting: a clone over git daemon whose pack-objects
// waits for a slot (hook mode) shows "remote: sluice: waiting for a slot…"
// and completes; one that waits briefly shows nothing.
func TestQueuedCloneShowsWaiting(t *testing.T) {
	s := startDaemonSetup(t, limitRule("pack-objects", "remote_ip", 1, 5, "60s"), `queue_feedback_after = "3s"`, true, 64<<10)
	hold := func() *proc {
		t.Helper()
		// Hold the only slot of 127.0.0.1 with a pack-objects that waits
		// for its revisions on stdin.
		p := startProc(t, s.repo, s.a.env("GIT_DIR=.", "REMOTE_ADDR=127.0.0.1"), bins.shim, "git", "pack-objects", "--revs", "--stdout")
		waitFor(t, 10*time.Second, "the slot held", func() bool {
			return s.a.metric(`sluice_concurrency_limiting_in_progress{limit="pack-objects"}`) == 1
		})
		return p
	}
	clone := func(name string) (*exec.Cmd, *lockedBuffer, chan error) {
		cmd := exec.Command(bins.realGit, "clone", "--progress", fmt.Sprintf("git://127.0.0.1:%d/project.git", s.port), filepath.Join(s.client, name))
		cmd.Dir = s.client
		cmd.Env = s.clientEnv()
		stderr := &lockedBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		exited := make(chan struct{})
		go func() { done <- cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			select {
			case <-exited:
			default:
				cmd.Process.Kill()
				<-exited
			}
		})
		return cmd, stderr, done
	}
	queued := func() {
		waitFor(t, 20*time.Second, "the clone's pack-objects queued", func() bool {
			return s.a.metric(`sluice_concurrency_limiting_queued{limit="pack-objects"}`) == 1
		})
	}
	finish := func(name string, done chan error, stderr *lockedBuffer) {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("clone %s: %v\n%s", name, err, stderr.String())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("clone %s did not finish:\n%s", name, stderr.String())
		}
		git(t, filepath.Join(s.client, name), s.clientEnv(), "fsck", "--strict", "--no-progress")
	}

	t.Run("long wait", func(t *testing.T) {
		h := hold()
		_, stderr, done := clone("long")
		queued()
		waitFor(t, 20*time.Second, "the waiting line on the client's stderr", func() bool {
			return strings.Contains(stderr.String(), "remote: sluice: waiting for a slot for project.git (position 1 of 1, ")
		})
		h.closeStdin()
		h.wait(t, 10*time.Second)
		finish("long", done, stderr)
		out := stderr.String()
		if !strings.Contains(out, "remote: sluice: waited ") || !strings.Contains(out, "for a slot for project.git, running") {
			t.Errorf("no end of the waiting line in:\n%q", out)
		}
		t.Logf("client stderr:\n%s", out)
	})
	t.Run("short wait", func(t *testing.T) {
		h := hold()
		_, stderr, done := clone("short")
		queued()
		h.closeStdin()
		h.wait(t, 10*time.Second)
		finish("short", done, stderr)
		if strings.Contains(stderr.String(), "sluice:") {
			t.Errorf("a short wait printed:\n%s", stderr.String())
		}
	})
}

// TestUploadArchiveNegotiation: a git:// upload-archive client that sends
// no arguments is cut off at upload_archive_negotiation; a real `git
// archive --remote` whose writer starts in time completes.
func TestUploadArchiveNegotiation(t *testing.T) {
	s := startDaemonSetup(t, limitRule("upload-archive", "repo", 5, 5, "10s")+`

[timeouts]
upload_archive_negotiation = "1s"
kill_grace = "2s"
`, "", false, 64<<10)
	out := filepath.Join(s.client, "a.tar")
	if msg, err := gitTry(s.client, s.clientEnv(), "archive", "--remote", fmt.Sprintf("git://127.0.0.1:%d/project.git", s.port), "-o", out, "HEAD"); err != nil {
		t.Fatalf("git archive --remote: %v\n%s", err, msg)
	}
	if st, err := os.Stat(out); err != nil || st.Size() < 64<<10 {
		t.Fatalf("archive: %v %v", st, err)
	}

	conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(s.port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pkt(conn, fmt.Sprintf("git-upload-archive /project.git\x00host=127.0.0.1:%d\x00", s.port))
	waitFor(t, 10*time.Second, "the upload-archive admitted", func() bool {
		return s.a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-archive"}`) == 1
	})
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server still held the stalled upload-archive after 30s")
	}
	waitFor(t, 10*time.Second, "the timeout counted", func() bool {
		return s.a.metric(`sluice_timeouts_total{kind="upload_archive_negotiation",limit="upload-archive"}`) == 1
	})
	if n := len(s.a.waitLogLines(t, "timeout: command stopped", 1)); n != 1 {
		t.Errorf("%d timeout log lines, want 1 (the real archive must not time out)", n)
	}
}
