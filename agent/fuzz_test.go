package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/gitwrap"
	"github.com/sluicehq/sluice/policy"
)

// fuzzPolicy has a rule for each key kind, so key derivation is exercised.
const fuzzPolicy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo+remote_ip+user"
max_per_key = 1
max_queue_size = 0
max_queue_wait = "1s"

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "global"
max_per_key = 100
max_queue_size = 1
max_queue_wait = "1s"
`

func fuzzAgent(t testing.TB) *Agent {
	cfg, err := policy.Parse("fuzz.toml", []byte(fuzzPolicy))
	if err != nil {
		t.Fatal(err)
	}
	return New(Options{Policy: cfg})
}

// FuzzShimRequest builds the request the shim would send from any argv,
// working directory and environment (gitwrap parsing, then Clamp) and
// checks the agent accepts it as valid: nothing a server passes to git may
// turn into a refused command.
func FuzzShimRequest(f *testing.F) {
	f.Add("git-upload-pack\x00/srv/a.git", "/", "SSH_CONNECTION=192.0.2.1 1 192.0.2.2 22\nUSER=git")
	f.Add("git\x00upload-pack\x00.", "/srv/r", "CORRELATION_ID=\x01\x02"+strings.Repeat("é", 100))
	f.Add("sluice-shim\x00git\x00pack-objects\x00--stdout", "/srv/r.git", "REMOTE_USER="+strings.Repeat("\xff", 300))
	f.Add(strings.Repeat("x", 80)+"\x00git\x00upload-pack", "/"+strings.Repeat("d", 5000), "GL_USERNAME=\x00")
	f.Fuzz(func(t *testing.T, argv, cwd, env string) {
		if !strings.HasPrefix(cwd, "/") {
			cwd = "/" + cwd
		}
		vars := map[string]string{}
		for _, kv := range strings.Split(env, "\n") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				vars[k] = v
			}
		}
		getenv := func(k string) string { return vars[k] }
		var args []string
		if argv != "" {
			args = strings.Split(argv, "\x00")
		}
		inv := gitwrap.Parse(args)
		corr, _ := gitwrap.CorrelationID(getenv)
		r := shimproto.AdmitRequest{
			Command:       inv.Command,
			Subcommand:    inv.Subcommand,
			Repo:          []byte(gitwrap.Repo(&inv, cwd, getenv)),
			RemoteIP:      gitwrap.RemoteIP(getenv),
			User:          gitwrap.User(getenv),
			CorrelationID: corr,
			Hook:          inv.Hook,
		}
		if !isName(r.Subcommand) {
			// The shim sends only subcommands the policy matches.
			r.Subcommand = "upload-pack"
		}
		r.Clamp()
		req := pbRequest(t, &r)
		if err := validateRequest(req); err != nil {
			t.Fatalf("the agent rejects what the shim sends for argv %q cwd %q env %q: %v", argv, cwd, env, err)
		}
	})
}

// FuzzAdmitRequest decodes arbitrary bytes as an AdmitRequest and runs it
// through the agent's whole admission path (validation, rule matching,
// key derivation, limiter, lease table, finish), checking it never panics,
// always answers exactly once, and leaves nothing behind.
func FuzzAdmitRequest(f *testing.F) {
	for _, r := range []*admitpb.AdmitRequest{
		{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/a.git"), RemoteIp: "192.0.2.1", User: "u", CorrelationId: "c"},
		{Command: "sluice-shim", Subcommand: "pack-objects", Hook: true, WorkerPid: 1},
		{Command: "git", Subcommand: "receive-pack", Repo: []byte("/srv/../x")},
		{Subcommand: "UPLOAD", RemoteIp: "not-an-ip"},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	a := fuzzAgent(f)
	self := PeerCred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), pidfd: -1}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req admitpb.AdmitRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		var finals int
		send := func(m *admitpb.ServerMsg) error {
			if m.GetQueued() == nil {
				finals++
			}
			if rj := m.GetRejected(); rj != nil && !strings.HasPrefix(rj.Message, "sluice: ") {
				t.Fatalf("rejection message %q does not start with \"sluice: \"", rj.Message)
			}
			return nil
		}
		adm := a.admit(context.Background(), self, &req, send)
		if finals != 1 {
			t.Fatalf("%d final answers, want 1", finals)
		}
		if adm != nil {
			if err := validateRequest(&req); err != nil {
				t.Fatalf("admitted an invalid request: %v", err)
			}
			a.finish(adm, &admitpb.Finished{})
		}
		for _, st := range a.Limiters() {
			if st.Running != 0 || st.Queued != 0 || st.Keys != 0 {
				t.Fatalf("left behind: %+v", st)
			}
		}
		if n := len(a.Leases()); n != 0 {
			t.Fatalf("%d leases left behind", n)
		}
	})
}

// FuzzServeShim feeds arbitrary bytes to the shim side of the socket
// (serveShim on a real Unix socketpair, as after dispatch read the first
// byte) and checks the agent answers only with well-formed frames, at most
// one final answer, never hangs, and releases everything when the peer
// closes.
func FuzzServeShim(f *testing.F) {
	admit := func(r *admitpb.AdmitRequest) []byte {
		b, _ := proto.Marshal(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: r}})
		return shimproto.AppendFrame([]byte(shimproto.Magic), b)
	}
	fin, _ := proto.Marshal(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Finished{Finished: &admitpb.Finished{ExitCode: 1, UserUsec: 5}}})
	ok := admit(&admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/a.git")})
	f.Add(ok)
	f.Add(shimproto.AppendFrame(ok, fin))
	f.Add(admit(&admitpb.AdmitRequest{Subcommand: "x y"}))
	f.Add(shimproto.AppendFrame([]byte(shimproto.Magic), []byte{0x0a, 0x03, 0x12, 0x01}))
	f.Add(append([]byte(shimproto.Magic), 0xff, 0xff, 0xff, 0xff))
	f.Add([]byte("SLUICE/2\n"))
	a := fuzzAgent(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 || b[0] != shimproto.Magic[0] {
			return // dispatch never hands such a connection to serveShim
		}
		srv, cli := socketPair(t)
		defer cli.Close()
		cred, err := peerCred(srv)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan struct{})
		go func() {
			defer close(served)
			defer cred.close()
			a.serveShim(srv, cred)
		}()
		// Write from another goroutine: a large input must not deadlock
		// against the agent's replies.
		go func() {
			_, _ = cli.Write(b[1:])
			_ = cli.CloseWrite()
		}()
		_ = cli.SetReadDeadline(time.Now().Add(10 * time.Second))
		finals := 0
		for {
			frame, err := shimproto.ReadFrame(cli, nil)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("serveShim neither answered nor closed within 10s")
				}
				if err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("reading the agent's answer: %v", err)
				}
				break
			}
			m, err := shimproto.DecodeServerMsg(frame)
			if err != nil {
				t.Fatalf("agent sent a malformed frame: %v", err)
			}
			if m.Kind == shimproto.ServerAdmitted || m.Kind == shimproto.ServerRejected {
				finals++
			}
		}
		if finals > 1 {
			t.Fatalf("%d final answers", finals)
		}
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("serveShim did not return after the peer closed")
		}
		for _, st := range a.Limiters() {
			if st.Running != 0 || st.Queued != 0 || st.Keys != 0 {
				t.Fatalf("left behind: %+v", st)
			}
		}
	})
}

// socketPair returns the two ends of a Unix stream socketpair.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}
