package test

// Property 5 of the security review (issue 14): nobody can starve
// admission or the operator. These tests play a local attacker with its
// own uid against the real sluiced: it floods the socket with connections
// that never finish a handshake, that idle, or that hold leases, while a
// shim running as another uid (the Git server's) asks for admission and
// root runs `sluice status`.

import (
	"bytes"
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

// connectEnv makes the test binary, run with it, a helper that connects to
// SLUICE_SOCKET that many times as whatever uid runs it, hands each
// connection to the test over fd 3 (SCM_RIGHTS) and waits for stdin to
// close. The kernel records the helper's credentials (SO_PEERCRED) at
// connect, so the test drives connections that are the attacker's.
const connectEnv = "SLUICE_TEST_CONNECT"

func init() {
	if n := os.Getenv(connectEnv); n != "" {
		os.Exit(connectHelper(n))
	}
}

func connectHelper(n string) int {
	count, err := strconv.Atoi(n)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctl, err := net.FileConn(os.NewFile(3, "ctl"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fd 3:", err)
		return 2
	}
	uc := ctl.(*net.UnixConn)
	for range count {
		c, err := net.Dial("unix", os.Getenv("SLUICE_SOCKET"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		f, err := c.(*net.UnixConn).File()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if _, _, err := uc.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		f.Close()
		c.Close()
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// openSocketToAll lets any uid reach the agent's socket and the test's
// directories (as shimAs does).
func openSocketToAll(t *testing.T, a *agentProc, dirs ...string) {
	t.Helper()
	for _, d := range append(dirs, a.dir, filepath.Dir(a.dir), filepath.Dir(a.socket)) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(a.socket, 0o666); err != nil {
		t.Fatal(err)
	}
}

// connectAs opens n connections to the agent from a process running as u
// and returns them; the helper process lives until the test ends.
func connectAs(t *testing.T, a *agentProc, u testUser, n int) []net.Conn {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(dir, "connect-helper")
	copyExecutable(t, self, helper)
	openSocketToAll(t, a, dir, filepath.Dir(dir))
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	parent, child := os.NewFile(uintptr(fds[0]), "ctl"), os.NewFile(uintptr(fds[1]), "ctl-child")
	defer child.Close()
	pc, err := net.FileConn(parent)
	parent.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cmd := exec.Command(helper)
	cmd.Env = []string{connectEnv + "=" + strconv.Itoa(n), "SLUICE_SOCKET=" + a.socket}
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the connect helper as %s: %v", u.name, err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	child.Close()
	var conns []net.Conn
	uc := pc.(*net.UnixConn)
	uc.SetReadDeadline(time.Now().Add(30 * time.Second))
	for len(conns) < n {
		oob := make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := uc.ReadMsgUnix(make([]byte, 1), oob)
		if err != nil {
			t.Fatalf("connection %d from the helper as %s: %v\n%s", len(conns), u.name, err, stderr.String())
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			t.Fatalf("control message: %v", err)
		}
		rights, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(rights) != 1 {
			t.Fatalf("rights: %v", err)
		}
		f := os.NewFile(uintptr(rights[0]), "conn")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// shimAsUser runs the real shim as git-upload-pack under u, with /bin/true
// standing in for git, and returns its exit code and stderr.
func shimAsUser(t *testing.T, a *agentProc, u testUser, repo string) (int, string) {
	t.Helper()
	dir := t.TempDir()
	shim := filepath.Join(dir, "git-upload-pack")
	copyExecutable(t, bins.shim, shim)
	openSocketToAll(t, a, dir, filepath.Dir(dir))
	cmd := exec.Command(shim, repo)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "SLUICE_SOCKET=" + a.socket, "SLUICE_REAL_GIT=/bin/true",
		"SLUICE_SHIM_LOG=/dev/null"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run shim as %s: %v", u.name, err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// holdLease sends an admit request for repo on c (shim framing) and
// returns the agent's answer.
func holdLease(t *testing.T, c net.Conn, repo string) shimproto.ServerMsg {
	t.Helper()
	req := shimproto.AppendAdmit(nil, &shimproto.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte(repo)})
	if _, err := c.Write(append([]byte(shimproto.Magic), shimproto.AppendFrame(nil, req)...)); err != nil {
		t.Fatalf("write admit request: %v", err)
	}
	return readServerMsg(t, c)
}

// readServerMsg reads the agent's next final frame on c.
func readServerMsg(t *testing.T, c net.Conn) shimproto.ServerMsg {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for {
		f, err := shimproto.ReadFrame(c, nil)
		if err != nil {
			t.Fatalf("read the agent's answer: %v", err)
		}
		m, err := shimproto.DecodeServerMsg(f)
		if err != nil {
			t.Fatal(err)
		}
		if m.Kind != shimproto.ServerQueued {
			return m
		}
	}
}

// statusAsRoot runs `sluice status` as root and fails the test unless it
// answers.
func statusAsRoot(t *testing.T, a *agentProc, when string) {
	t.Helper()
	code, out, errs := runCLI(t, baseEnv(a.dir), "status", "--socket", a.socket)
	if code != 0 || out == "" {
		t.Fatalf("sluice status as root %s: exit %d\n%s%s", when, code, out, errs)
	}
}

// TestConnFloodPerUID: an attacker uid holds as many leases as its
// max_connections_per_uid allows, then asks for more. Its extra
// connections, and its shims, are refused with exit 75 under either
// fail_mode (never pushed into fail-open), while the Git server's uid is
// still admitted and root's `sluice status` answers. Before the fix the
// attacker could take every connection and its shims then ran git
// without a lease under fail_mode open.
func TestConnFloodPerUID(t *testing.T) {
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			attacker, gitsrv := newTestUser(t, "atk"), newTestUser(t, "git")
			a := newAgentDir(t)
			a.agentExtra = "max_connections = 64\nmax_connections_per_uid = 8"
			a.start(uploadPackRule, mode)
			conns := connectAs(t, a, attacker, 9)
			for i, c := range conns[:8] {
				if m := holdLease(t, c, fmt.Sprintf("/srv/attacker-%d.git", i)); m.Kind != shimproto.ServerAdmitted {
					t.Fatalf("attacker connection %d: %+v, want a lease (under its cap)", i, m)
				}
			}
			want := fmt.Sprintf("sluice: too many connections from uid %d ([agent] max_connections_per_uid = 8 in %s)", attacker.uid, filepath.Join(a.dir, "sluice.toml"))
			m := readServerMsg(t, conns[8])
			if m.Kind != shimproto.ServerRejected || m.Reply.Reason != shimproto.ReasonPermission || !strings.HasPrefix(m.Reply.Message, want) {
				t.Fatalf("attacker's 9th connection: %+v; want Rejected PERMISSION %q", m, want)
			}
			code, stderr := shimAsUser(t, a, attacker, "/srv/attacker-shim.git")
			if code != 75 || !strings.HasPrefix(stderr, want) {
				t.Fatalf("attacker's shim over its cap (fail_mode %s): exit %d, stderr %q; want exit 75 and %q", mode, code, stderr, want)
			}
			code, stderr = shimAsUser(t, a, gitsrv, "/srv/security.git")
			if code != 0 || stderr != "" {
				t.Fatalf("Git server's shim while the attacker is at its cap: exit %d, stderr %q; want git (/bin/true) to run", code, stderr)
			}
			waitFor(t, 10*time.Second, "the Git server's command counted under its rule", func() bool {
				return a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`) == 1
			})
			statusAsRoot(t, a, "while the attacker is at its cap")
			if v := a.metric(`sluice_connections_rejected_total{reason="per_uid"}`); v != 2 {
				t.Errorf(`sluice_connections_rejected_total{reason="per_uid"} = %v, want 2`, v)
			}
			// Its leases gone, the attacker is served again.
			for _, c := range conns {
				c.Close()
			}
			waitFor(t, 10*time.Second, "the attacker's connections closed", func() bool { return a.metric("sluice_connections") == 0 })
			if code, stderr := shimAsUser(t, a, attacker, "/srv/attacker-shim.git"); code != 0 {
				t.Fatalf("attacker's shim under its cap: exit %d, %q", code, stderr)
			}
		})
	}
}

// statusAs runs `sluice status` as u with extra supplementary groups and
// returns its exit code and output.
func statusAs(t *testing.T, a *agentProc, u testUser, groups []uint32) (int, string) {
	t.Helper()
	cli := filepath.Join(t.TempDir(), "sluice")
	copyExecutable(t, bins.cli, cli)
	openSocketToAll(t, a, filepath.Dir(cli), filepath.Dir(filepath.Dir(cli)))
	cmd := exec.Command(cli, "status", "--socket", a.socket)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: groups}}
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run sluice status as %s: %v", u.name, err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// TestConnSaturationNeverFailsOpen: the connections open to ordinary uids
// are all taken (here by one uid whose cap allows it, standing for an
// attacker with several uids). Another uid's shim is refused with exit 75
// whatever fail_mode says, never run without a lease, and `sluice status`
// still answers from the reserve, for root and for a member of
// admin_group (by a supplementary group). Before the fix the shim applied
// fail_mode (open: git ran unlimited) and status was refused.
func TestConnSaturationNeverFailsOpen(t *testing.T) {
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			attacker, gitsrv, ops := newTestUser(t, "atk"), newTestUser(t, "git"), newTestUser(t, "ops")
			a := newAgentDir(t)
			// Reserve: min(16, 24/2) = 12, so 12 places for ordinary uids.
			a.agentExtra = fmt.Sprintf("max_connections = 24\nmax_connections_per_uid = 24\nadmin_group = %q", ops.name)
			a.start(uploadPackRule, mode)
			conns := connectAs(t, a, attacker, 13)
			for i, c := range conns[:12] {
				if m := holdLease(t, c, fmt.Sprintf("/srv/attacker-%d.git", i)); m.Kind != shimproto.ServerAdmitted {
					t.Fatalf("attacker connection %d: %+v, want a lease", i, m)
				}
			}
			want := fmt.Sprintf("sluice: the admission service is at its connection limit ([agent] max_connections = 24 in %s); try again later", filepath.Join(a.dir, "sluice.toml"))
			if m := readServerMsg(t, conns[12]); m.Kind != shimproto.ServerRejected || m.Reply.Reason == shimproto.ReasonUnavailable || m.Reply.Message != want {
				t.Fatalf("13th connection: %+v; want Rejected (not UNAVAILABLE) %q", m, want)
			}
			code, stderr := shimAsUser(t, a, gitsrv, "/srv/security.git")
			if code != 75 || !strings.HasPrefix(stderr, want+" (correlation id ") {
				t.Fatalf("Git server's shim with the table full (fail_mode %s): exit %d, stderr %q; want exit 75 and %q, never git without a lease", mode, code, stderr, want)
			}
			statusAsRoot(t, a, "with max_connections reached by another uid")
			if code, out := statusAs(t, a, ops, []uint32{ops.gid}); code != 0 {
				t.Fatalf("sluice status as admin_group member %s with max_connections reached: exit %d\n%s", ops.name, code, out)
			}
			// Not in admin_group: no place in the reserve.
			if code, out := statusAs(t, a, gitsrv, nil); code == 0 {
				t.Fatalf("sluice status as %s (not admin) answered from the reserve:\n%s", gitsrv.name, out)
			}
			statusAsRoot(t, a, "a second time")
			if v := a.metric(`sluice_connections_rejected_total{reason="max_connections"}`); v < 3 {
				t.Errorf(`sluice_connections_rejected_total{reason="max_connections"} = %v, want at least 3`, v)
			}
			if v := a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`); v != 0 {
				t.Errorf("a command ran under the rule while the table was full: ok = %v", v)
			}
		})
	}
}

// h2Preface and h2Settings open an HTTP/2 connection.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

var h2Settings = []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}

// h2EmptyRequest is a DATA frame (END_STREAM) on stream 1 carrying an
// empty gRPC message.
var h2EmptyRequest = []byte{0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0}

// h2CallHeaders opens a call of method on stream 1 (HEADERS, END_HEADERS),
// HPACK-encoded by hand.
func h2CallHeaders(method string) []byte {
	lit := func(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }
	h := []byte{0x83, 0x86}
	h = lit(append(h, 0x04), method)
	h = lit(append(h, 0x01), "local")
	h = lit(append(h, 0x0f, 0x10), "application/grpc")
	h = lit(lit(append(h, 0x00), "te"), "trailers")
	f := []byte{0, 0, 0, 0x1, 0x4, 0, 0, 0, 1}
	f[0], f[1], f[2] = byte(len(h)>>16), byte(len(h)>>8), byte(len(h))
	return append(f, h...)
}

// TestConnHandshakeFlood: an attacker uid opens connections and never
// finishes with them: silent, shim magic only, half a request, half an
// HTTP/2 preface, a preface without SETTINGS, a finished HTTP/2 handshake
// left without a call, a gRPC Admit call that never sends its request, and
// a finished call followed by nothing (ignoring the agent's GOAWAY). The
// agent closes every one of them within its bounds (5 s to say hello and
// send the request, or finish the HTTP/2 handshake and open a call, 5 s
// per call request, 10 s idle after the last call plus 5 s GOAWAY grace),
// counts them, and meanwhile serves the Git server's uid and root. Before
// the fix the gRPC ones stayed open for good.
func TestConnHandshakeFlood(t *testing.T) {
	attacker, gitsrv := newTestUser(t, "atk"), newTestUser(t, "git")
	a := startAgent(t, uploadPackRule, "open")
	half := shimproto.AppendFrame(nil, shimproto.AppendAdmit(nil, &shimproto.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte("/srv/x.git")}))
	kinds := []struct {
		name    string
		payload [][]byte
	}{
		{"silent", nil},
		{"shim magic only", [][]byte{[]byte(shimproto.Magic)}},
		{"half a request", [][]byte{[]byte(shimproto.Magic), half[:len(half)/2]}},
		{"half an HTTP/2 preface", [][]byte{[]byte(h2Preface[:8])}},
		{"preface without SETTINGS", [][]byte{[]byte(h2Preface)}},
		{"HTTP/2 handshake, then idle", [][]byte{[]byte(h2Preface), h2Settings}},
		{"Admit call without request", [][]byte{[]byte(h2Preface), h2Settings, h2CallHeaders("/sluice.v1.Admission/Admit")}},
		// A whole Status call (refused: not admin), then nothing; the
		// client ignores the agent's GOAWAY.
		{"a call, then idle", [][]byte{[]byte(h2Preface), h2Settings, h2CallHeaders("/sluice.v1.Admin/Status"), h2EmptyRequest}},
	}
	const each = 3
	conns := connectAs(t, a, attacker, each*len(kinds))
	for i, c := range conns {
		for _, p := range kinds[i/each].payload {
			if _, err := c.Write(p); err != nil {
				t.Fatalf("%s: write: %v", kinds[i/each].name, err)
			}
		}
	}
	// Every connection, and the Admit calls while they last.
	waitFor(t, 10*time.Second, "the flood counted", func() bool { return a.metric("sluice_connections") >= float64(len(conns)) })
	// Held by the flood, the Git server and the operator are still served.
	if code, stderr := shimAsUser(t, a, gitsrv, "/srv/security.git"); code != 0 || stderr != "" {
		t.Fatalf("Git server's shim during the flood: exit %d, stderr %q", code, stderr)
	}
	statusAsRoot(t, a, "during the flood")
	// Hang detector, not a timing assertion: twice the longest bound.
	limit := 2 * (5*time.Second + 10*time.Second + 5*time.Second)
	type result struct {
		name  string
		err   error
		after time.Duration
	}
	results := make(chan result, len(conns))
	start := time.Now()
	for i, c := range conns {
		go func() {
			c.SetReadDeadline(time.Now().Add(limit))
			// The agent may answer (a GOAWAY, an HTTP/2 SETTINGS) before it
			// closes: read to EOF.
			_, err := io.Copy(io.Discard, c)
			results <- result{kinds[i/each].name, err, time.Since(start)}
		}()
	}
	for range conns {
		if r := <-results; r.err != nil {
			t.Errorf("%s: %v; want the agent to close the connection", r.name, r.err)
		} else {
			t.Logf("%s: closed by the agent after %v", r.name, r.after.Round(100*time.Millisecond))
		}
	}
	waitFor(t, 10*time.Second, "the flood uncounted", func() bool { return a.metric("sluice_connections") == 0 })
	// Every kind but the idle one after a call is a handshake or request
	// timeout.
	if v := a.metric(`sluice_connections_rejected_total{reason="handshake"}`); v < float64(each*(len(kinds)-1)) {
		t.Errorf(`sluice_connections_rejected_total{reason="handshake"} = %v, want at least %d`, v, each*(len(kinds)-1))
	}
}
