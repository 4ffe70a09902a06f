package agent

// Attack tests for the agent's own trust boundaries (issue 14, properties
// 2, 3 and 4): unsafe state directories, planted lease records, writes to a
// caller's stderr, signals after the peer is gone, caller-supplied text.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create files owned by another uid")
	}
}

// TestListenRefusesUnsafeSocketDir plants socket directories another user
// could write to, or a symlink, and checks Listen refuses each with the
// path, what it found and the fix.
func TestListenRefusesUnsafeSocketDir(t *testing.T) {
	needRoot(t)
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the socket path
		want  []string
	}{
		{"owned by an unprivileged user", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "run")
			mustMkdir(t, d, 0o755, nobody)
			return filepath.Join(d, "s.sock")
		}, []string{"socket directory", "/run is owned by uid 65534", "mode 0755", "chown 0"}},
		{"world-writable", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "run")
			mustMkdir(t, d, 0o777, 0)
			return filepath.Join(d, "s.sock")
		}, []string{"/run is owned by uid 0", "mode 0777", "chmod go-w"}},
		{"group-writable", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "run")
			mustMkdir(t, d, 0o770, 0)
			return filepath.Join(d, "s.sock")
		}, []string{"mode 0770", "chmod go-w"}},
		{"symlink", func(t *testing.T, dir string) string {
			target := filepath.Join(dir, "elsewhere")
			mustMkdir(t, target, 0o750, 0)
			if err := os.Symlink(target, filepath.Join(dir, "run")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, "run", "s.sock")
		}, []string{"/run is a symlink", "never follows symlinks"}},
		{"ancestor owned by an unprivileged user", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "home")
			mustMkdir(t, d, 0o755, nobody)
			return filepath.Join(d, "run", "s.sock")
		}, []string{"/home is owned by uid 65534", "every directory above the socket"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.setup(t, t.TempDir())
			s, err := Listen(SocketOptions{Path: path})
			if err == nil {
				s.Close()
				t.Fatal("Listen accepted an unsafe socket directory")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if _, err := os.Lstat(path); err == nil {
				t.Error("a socket was created anyway")
			}
		})
	}
}

// TestListenCreatesSafeSocketDir: a missing directory is created 0750,
// owned by the agent, with the socket group.
func TestListenCreatesSafeSocketDir(t *testing.T) {
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "a", "run")
	s, err := Listen(SocketOptions{Path: filepath.Join(dir, "s.sock"), Group: "65534"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o750 || st.Uid != 0 || st.Gid != nobody {
		t.Fatalf("socket directory: mode %04o uid %d gid %d, want 0750 0 65534", st.Mode&0o7777, st.Uid, st.Gid)
	}
	// An existing directory as systemd's RuntimeDirectory makes it is fine.
	s.Close()
	if s2, err := Listen(SocketOptions{Path: filepath.Join(dir, "s.sock")}); err != nil {
		t.Fatalf("second start: %v", err)
	} else {
		s2.Close()
	}
}

func mustMkdir(t *testing.T, d string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.Mkdir(d, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, uid, -1); err != nil {
		t.Fatal(err)
	}
}

// startVictim starts a process nobody may touch through sluice and
// returns it with a pidfd; it is killed at the end of the test.
func startVictim(t *testing.T) (*exec.Cmd, int) {
	t.Helper()
	v := exec.Command("sleep", "60")
	if err := v.Start(); err != nil {
		t.Fatal(err)
	}
	fd := openPidfd(t, v.Process.Pid)
	t.Cleanup(func() { v.Process.Kill(); v.Wait(); unix.Close(fd) })
	return v, fd
}

func victimRecord(t *testing.T, pid int) []byte {
	t.Helper()
	st, err := procfs.Default.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(&leaseRecord{PID: pid, Start: st, Limit: "upload-pack", Key: "global",
		Command: "git", Subcommand: "upload-pack", CorrelationID: "planted", Admitted: time.Now(), Arrived: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stateAgent(t *testing.T, dir string, tr ProcessTracer) (*Agent, *observer.ObservedLogs) {
	t.Helper()
	cfg, err := policy.Parse("test.toml", []byte(execPolicy))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	a := New(Options{Policy: cfg, Log: zap.New(core), Tracer: tr, StateDir: dir})
	t.Cleanup(func() { a.stop(); closeStateDir(a) })
	return a, logs
}

// closeStateDir closes the state directory Recover holds open: sluiced
// keeps it for its lifetime, a test's agent ends with the test.
func closeStateDir(a *Agent) {
	if a.stateFD >= 0 {
		unix.Close(a.stateFD)
		a.stateFD = -1
	}
}

// TestRecoverAdoptsOnlyOwnRecords plants lease records the agent could not
// have written, each naming a live victim: owned by another uid, writable
// by others, a symlink to a valid record elsewhere, a hard link. None may
// be adopted (no slot held, the victim not tracked); the symlink's target
// is neither read nor removed. A record the agent could have written is
// adopted (the control).
func TestRecoverAdoptsOnlyOwnRecords(t *testing.T) {
	needRoot(t)
	victim, vfd := startVictim(t)
	rec := victimRecord(t, victim.Process.Pid)
	dir := filepath.Join(t.TempDir(), "leases")
	mustMkdir(t, dir, 0o700, 0)
	outside := t.TempDir()
	target := filepath.Join(outside, "shadow")
	if err := os.WriteFile(target, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name string, mode os.FileMode, uid int) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, rec, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, -1); err != nil {
			t.Fatal(err)
		}
	}
	write("00000000000000a1", 0o600, nobody) // another user's
	write("00000000000000a2", 0o666, 0)      // writable by others
	if err := os.Symlink(target, filepath.Join(dir, "00000000000000a3")); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(outside, "hard")
	if err := os.WriteFile(hard, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(hard, filepath.Join(dir, "00000000000000a4")); err != nil {
		t.Skipf("hard link across the temp dirs: %v", err)
	}
	tr := &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}
	a, logs := stateAgent(t, dir, tr)
	adopted, stale, err := a.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if adopted != 0 || stale != 4 {
		t.Errorf("adopted %d, stale %d; want 0 and 4", adopted, stale)
	}
	if n := inFlight(a, "upload-pack"); n != 0 {
		t.Errorf("in flight after recovery = %d: a planted record holds a slot", n)
	}
	tr.mu.Lock()
	tracked := tr.tracked[victim.Process.Pid]
	tr.mu.Unlock()
	if tracked {
		t.Error("the victim named by a planted record is tracked")
	}
	if !pidfdAlive(vfd) {
		t.Error("the victim was signalled")
	}
	if b, err := os.ReadFile(target); err != nil || !bytes.Equal(b, rec) {
		t.Errorf("the symlink's target changed or vanished: %v", err)
	}
	for _, why := range []string{"owned by uid 65534", "writable by group or others", "a symlink; not followed", "has 2 links"} {
		if logs.FilterMessage("lease state not adopted").Filter(func(e observer.LoggedEntry) bool {
			return strings.Contains(e.ContextMap()["why"].(string), why)
		}).Len() == 0 {
			t.Errorf("no log line saying why %q", why)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d planted records left in the state directory", len(ents))
	}

	// Control: the same record written as the agent would is adopted.
	write("00000000000000b1", 0o600, 0)
	a2, _ := stateAgent(t, dir, &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}})
	if adopted, _, err := a2.Recover(); err != nil || adopted != 1 {
		t.Fatalf("control record: adopted %d, %v; want 1", adopted, err)
	}
}

// TestRecoverRefusesUnsafeStateDir: leases/ as a symlink to a directory
// holding a valid record, or owned by another user, stops recovery with an
// error naming the path; nothing is read or removed through the link.
func TestRecoverRefusesUnsafeStateDir(t *testing.T) {
	needRoot(t)
	victim, _ := startVictim(t)
	rec := victimRecord(t, victim.Process.Pid)

	t.Run("symlink", func(t *testing.T) {
		run := t.TempDir()
		elsewhere := t.TempDir()
		planted := filepath.Join(elsewhere, "00000000000000c1")
		if err := os.WriteFile(planted, rec, 0o600); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(run, "leases")
		if err := os.Symlink(elsewhere, dir); err != nil {
			t.Fatal(err)
		}
		a, _ := stateAgent(t, dir, nil)
		_, _, err := a.Recover()
		if err == nil || !strings.Contains(err.Error(), dir+" is a symlink") {
			t.Fatalf("Recover: %v; want a refusal naming %s as a symlink", err, dir)
		}
		if _, err := os.Stat(planted); err != nil {
			t.Errorf("a file behind the symlink was removed: %v", err)
		}
		if n := inFlight(a, "upload-pack"); n != 0 {
			t.Errorf("in flight = %d", n)
		}
	})
	t.Run("owned by another user", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "leases")
		mustMkdir(t, dir, 0o700, nobody)
		a, _ := stateAgent(t, dir, nil)
		_, _, err := a.Recover()
		if err == nil || !strings.Contains(err.Error(), "is owned by uid 65534") || !errors.Is(err, errUnsafe) {
			t.Fatalf("Recover: %v; want a refusal naming the owner", err)
		}
	})
}

// TestWriteNewFileNeverFollowsSymlink: a symlink planted at a state file's
// name, or at its temporary name, is not written through.
func TestWriteNewFileNeverFollowsSymlink(t *testing.T) {
	t.Run("tmp", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(t.TempDir(), "passwd")
		os.WriteFile(target, []byte("root:x:0:0\n"), 0o644)
		os.Symlink(target, filepath.Join(dir, "00000000000000d2.tmp"))
		fd, err := openTrustedDir(dir, dirRole{what: "state directory", mode: 0o700, gid: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := writeAtomic(fd, "00000000000000d2", []byte(`{"pid":1}`)); err == nil {
			t.Fatal("wrote through a planted symlink at the temporary name")
		}
		if b, _ := os.ReadFile(target); string(b) != "root:x:0:0\n" {
			t.Fatalf("target changed: %q", b)
		}
	})
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(target, []byte("root:x:0:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "00000000000000d1")); err != nil {
		t.Fatal(err)
	}
	fd, err := openTrustedDir(dir, dirRole{what: "state directory", mode: 0o700, gid: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := writeAtomic(fd, "00000000000000d1", []byte(`{"pid":1}`)); err == nil {
		t.Fatal("wrote through a planted symlink")
	}
	if b, _ := os.ReadFile(target); string(b) != "root:x:0:0\n" {
		t.Fatalf("target changed: %q", b)
	}
	if _, err := readTrustedFile(fd, "00000000000000d1", 100); err == nil {
		t.Fatal("read through a planted symlink")
	}
}

// TestTimeoutNeverSignalsReusedPid simulates pid reuse: the lease's peer
// has exited and been reaped, and its pid now names a stranger with a
// child. SIGTERM and the SIGKILL sweep must reach neither, with or
// without a (dead) pidfd of the peer.
func TestTimeoutNeverSignalsReusedPid(t *testing.T) {
	for _, withPidfd := range []bool{true, false} {
		name := "dead pidfd"
		if !withPidfd {
			name = "no pidfd"
		}
		t.Run(name, func(t *testing.T) {
			peer := exec.Command("true")
			if err := peer.Start(); err != nil {
				t.Fatal(err)
			}
			pfd := -1
			if withPidfd {
				pfd = openPidfd(t, peer.Process.Pid)
			}
			peer.Wait() // reaped: its pid is free for reuse
			// The stranger holding the "reused" pid, and its child.
			stranger, child := startTree(t, `bash -c 'exec -a git-pack-objects sleep 60' & wait`)
			sfd, cfd := openPidfd(t, stranger.Process.Pid), openPidfd(t, child)
			defer unix.Close(sfd)
			defer unix.Close(cfd)
			w := &deadlines{pid: stranger.Process.Pid, pidfd: pfd}
			w.mu.Lock()
			if err := termTree(w); err == nil {
				t.Error("termTree reported success on a peer that is gone")
			}
			n, _ := killTree(w)
			w.closeFDsLocked()
			w.mu.Unlock()
			if n != 0 {
				t.Errorf("killTree signalled %d processes", n)
			}
			time.Sleep(50 * time.Millisecond) // let a stray signal land
			if !procRunning(stranger.Process.Pid) || !procRunning(child) {
				t.Fatal("a process reusing the peer's pid (or its child) was signalled")
			}
		})
	}
}

// procRunning reports whether pid exists and is not a zombie.
func procRunning(pid int) bool {
	s, err := procfs.Default.Stat(pid)
	return err == nil && s.State != 'Z'
}

// TestTellStderrOnlyThroughWritableFD: a command whose stderr is a file it
// may only read (a root-owned 0644 file opened O_RDONLY) gets nothing
// written there; stderr opened for writing gets the line; a set-uid file
// and a /proc file are refused; a full pipe does not block the agent.
func TestTellStderrOnlyThroughWritableFD(t *testing.T) {
	run := func(t *testing.T, stderr *os.File, msg string) error {
		t.Helper()
		cmd := exec.Command("sleep", "60")
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		w := &deadlines{pid: cmd.Process.Pid, pidfd: openPidfd(t, cmd.Process.Pid)}
		defer unix.Close(w.pidfd)
		return tellStderr(w, msg)
	}
	dir := t.TempDir()
	const orig = "root:$6$secret:19000:0:99999:7:::\n"

	t.Run("read-only file", func(t *testing.T) {
		p := filepath.Join(dir, "shadow")
		if err := os.WriteFile(p, []byte(orig), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p) // O_RDONLY
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		err = run(t, f, "sluice: pwned\n")
		if err == nil || !strings.Contains(err.Error(), "not open for writing") {
			t.Errorf("tellStderr: %v; want a refusal", err)
		}
		if errors.Is(err, unix.EPERM) {
			t.Skip("pidfd_getfd refused: needs CAP_SYS_PTRACE")
		}
		if b, _ := os.ReadFile(p); string(b) != orig {
			t.Fatalf("a file the command could only read was written: %q", b)
		}
	})
	t.Run("file opened for writing", func(t *testing.T) {
		p := filepath.Join(dir, "log")
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := run(t, f, "sluice: hello\n"); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != "sluice: hello\n" {
			t.Fatalf("file holds %q", b)
		}
	})
	t.Run("set-uid file", func(t *testing.T) {
		p := filepath.Join(dir, "suid")
		if err := os.WriteFile(p, []byte(orig), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(p, 0o4755); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := run(t, f, "x\n"); err == nil {
			t.Fatal("wrote to a set-uid file")
		}
		if b, _ := os.ReadFile(p); string(b) != orig {
			t.Fatalf("set-uid file changed: %q", b)
		}
	})
	t.Run("proc file", func(t *testing.T) {
		fd, err := unix.Open("/proc/self/comm", unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Skip(err)
		}
		defer unix.Close(fd)
		if _, err := callerFDKind(fd); err == nil || !strings.Contains(err.Error(), "proc") {
			t.Fatalf("callerFDKind(/proc/self/comm) = %v; want a refusal", err)
		}
	})
	t.Run("full pipe", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		// Fill it (non-blocking on the test's own end).
		wfd := int(w.Fd()) // Fd puts the file in blocking mode: once
		unix.SetNonblock(wfd, true)
		chunk := make([]byte, 4096)
		for i := 0; i < 1024; i++ {
			if _, err := unix.Write(wfd, chunk); err != nil {
				break
			}
		}
		unix.SetNonblock(wfd, false)
		start := time.Now()
		if err := run(t, w, "sluice: hello\n"); err == nil {
			t.Error("wrote to a full pipe")
		}
		if d := time.Since(start); d > 2*stderrWriteWait+time.Second {
			t.Errorf("tellStderr took %v on a full pipe", d)
		}
	})
}

// TestCleanText: control characters, bidi controls and invalid UTF-8 are
// escaped, and the result is bounded.
func TestCleanText(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"abc-123", "abc-123"},
		{"\x1b[2J\nfake log line\r", `\x1b[2J\nfake log line\r`},
		{"evil\u202egnp.exe", `evil\u202egnp.exe`},
		{"a\u0085b\u2028c\u2066d", `a\u0085b\u2028c\u2066d`},
		{"bad\xffutf8", `bad\xffutf8`},
		{"tab\there\x7f", `tab\there\x7f`},
		{"é日本", "é日本"},
	} {
		if got := cleanText(tt.in, 100); got != tt.want {
			t.Errorf("cleanText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := cleanText(strings.Repeat("é", 100), 11); got != "éééé..." {
		t.Errorf("cut: %q", got)
	}
}

func FuzzCleanText(f *testing.F) {
	f.Add("\x1b[2J\n", 16)
	f.Add("a\u202eb\xff", 5)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 4 || max > 1<<12 {
			return
		}
		out := cleanText(s, max)
		if len(out) > max {
			t.Fatalf("cleanText(%q, %d) = %d bytes", s, max, len(out))
		}
		if !utf8.ValidString(out) {
			t.Fatalf("cleanText(%q) = %q: invalid UTF-8", s, out)
		}
		for _, r := range out {
			if shownControl(r) {
				t.Fatalf("cleanText(%q) = %q keeps control %U", s, out, r)
			}
		}
	})
}

// TestCorrelationIDEscaped admits a request whose correlation id and user
// carry ESC, CR, LF and a bidi override over gRPC (a hand-made client: the
// shim would have clamped them): the lease, the log lines and the timeout
// line on stderr show them escaped.
func TestCorrelationIDEscaped(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	cfg, err := policy.Parse("test.toml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zap.New(core)})
	sock, err := Listen(SocketOptions{Path: filepath.Join(t.TempDir(), "s.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, sock) }()
	defer func() { cancel(); <-done }()
	cc := grpcClient(t, sock.Path)
	const evil = "\x1b[2J\nlevel=error msg=forged\r\u202e"
	const want = `\x1b[2J\nlevel=error msg=forged\r\u202e`
	stream, m := admitGRPC(t, cc, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack",
		Repo: []byte("/srv/a.git"), CorrelationId: evil, User: "bob\x1b]0;title\x07"})
	if m.GetAdmitted() == nil {
		t.Fatalf("not admitted: %v", m)
	}
	ls := a.leases.Snapshot()
	if len(ls) != 1 || ls[0].CorrelationID != want || ls[0].User != `bob\x1b]0;title\x07` {
		t.Fatalf("lease fields %q %q, want escaped", ls[0].CorrelationID, ls[0].User)
	}
	if msg := timeoutMessage(&ls[0], KindMaxRuntime, "upload-pack", time.Second); !strings.Contains(msg, "(correlation id "+want+")\n") ||
		strings.ContainsAny(strings.TrimSuffix(msg, "\n"), "\x1b\r\n\u202e") {
		t.Fatalf("timeout line %q", msg)
	}
	stream.CloseSend()
	waitUntil(t, "lease finished", func() bool { return len(a.leases.Snapshot()) == 0 })
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if f.Key == "correlation_id" && f.String != want {
				t.Errorf("log %q: correlation_id %q", e.Message, f.String)
			}
		}
	}
}

// FuzzLeaseRecord feeds arbitrary state-file contents through the record
// parsing and cleaning recovery does: nothing shown keeps a control
// character or exceeds its bound.
func FuzzLeaseRecord(f *testing.F) {
	f.Add([]byte(`{"pid":1,"correlation_id":"\u001b[2J\n","user":"a\u202eb","repo":"L2V0Yw=="}`))
	f.Add([]byte(`{"pid":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var rec leaseRecord
		if json.Unmarshal(b, &rec) != nil {
			return
		}
		rec.sanitize()
		for name, v := range map[string]string{"correlation_id": rec.CorrelationID, "user": rec.User,
			"command": rec.Command, "remote_ip": rec.RemoteIP, "repo": string(rec.Repo)} {
			for _, r := range v {
				if shownControl(r) {
					t.Fatalf("%s %q keeps control %U", name, v, r)
				}
			}
			if !utf8.ValidString(v) {
				t.Fatalf("%s %q is not UTF-8", name, v)
			}
		}
		if len(rec.CorrelationID) > maxShownCorrID || len(rec.User) > maxShownUser || len(rec.Repo) > maxShownRepo {
			t.Fatal("a field exceeds its bound")
		}
	})
}
