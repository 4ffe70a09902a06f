package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/policy"
)

const testPolicy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = 1
max_queue_size = 2
max_queue_wait = "10s"
`

// startTestAgent serves an agent on a socket in a temp dir.
func startTestAgent(t *testing.T, toml string) (*Agent, string) {
	t.Helper()
	return startTestAgentOpts(t, toml, Options{})
}

// startTestAgentOpts is startTestAgent with more options (Policy, Log and
// Version are filled in).
func startTestAgentOpts(t *testing.T, toml string, opts Options) (*Agent, string) {
	t.Helper()
	cfg, err := policy.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	opts.Policy, opts.Log, opts.Version = cfg, zaptest.NewLogger(t), "test"
	a := New(opts)
	sock, err := Listen(SocketOptions{Path: filepath.Join(t.TempDir(), "s.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return a, sock.Path
}

func grpcClient(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// admitGRPC sends one admit request over gRPC and returns the final reply.
func admitGRPC(t *testing.T, cc *grpc.ClientConn, req *admitpb.AdmitRequest) (admitpb.Admission_AdmitClient, *admitpb.ServerMsg) {
	t.Helper()
	stream, err := admitpb.NewAdmissionClient(cc).Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: req}}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if m.GetQueued() == nil {
			return stream, m
		}
	}
}

func TestGRPCAdmitAndInvalidRequests(t *testing.T) {
	a, socket := startTestAgent(t, testPolicy)
	cc := grpcClient(t, socket)

	bad := []struct {
		name string
		req  *admitpb.AdmitRequest
		want string
	}{
		{"dotdot", &admitpb.AdmitRequest{Subcommand: "upload-pack", Repo: []byte("/srv/../etc")}, "not clean"},
		{"relative", &admitpb.AdmitRequest{Subcommand: "upload-pack", Repo: []byte("srv/x.git")}, "not absolute"},
		{"nul", &admitpb.AdmitRequest{Subcommand: "upload-pack", Repo: []byte("/srv/x\x00.git")}, "NUL"},
		{"subcommand", &admitpb.AdmitRequest{Subcommand: "Upload Pack"}, "subcommand"},
		{"ip", &admitpb.AdmitRequest{Subcommand: "upload-pack", RemoteIp: "not-an-ip"}, "remote_ip"},
		{"huge repo", &admitpb.AdmitRequest{Subcommand: "upload-pack", Repo: append([]byte("/"), bytes.Repeat([]byte("a"), 5000)...)}, "bytes"},
	}
	for _, c := range bad {
		_, m := admitGRPC(t, cc, c.req)
		r := m.GetRejected()
		if r == nil || r.Reason != admitpb.RejectReason_REJECT_REASON_INVALID || !strings.HasPrefix(r.Message, "sluice: ") || !strings.Contains(r.Message, c.want) {
			t.Errorf("%s: reply %v, want an invalid rejection mentioning %q", c.name, m, c.want)
		}
	}

	// A non-UTF-8 repository path is a valid Linux path: admitted.
	stream, m := admitGRPC(t, cc, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/\xff\xfe.git"), CorrelationId: "c1"})
	if m.GetAdmitted() == nil {
		t.Fatalf("non-UTF-8 repo: %v", m)
	}
	if st := a.Limiters()[0]; st.Running != 1 {
		t.Fatalf("running = %d", st.Running)
	}
	leases := a.Leases()
	if len(leases) != 1 || leases[0].CorrelationID != "c1" || leases[0].State != StateRunning {
		t.Fatalf("leases = %+v", leases)
	}
	if err := stream.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Finished{Finished: &admitpb.Finished{ExitCode: 0}}}); err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	waitUntil(t, "lease released", func() bool { return a.Limiters()[0].Running == 0 && len(a.Leases()) == 0 })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawShim speaks the shim framing by hand.
func rawShim(t *testing.T, socket string, payload []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	return c
}

func readReply(t *testing.T, c net.Conn) *admitpb.ServerMsg {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := shimproto.ReadFrame(c, nil)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	var m admitpb.ServerMsg
	if err := proto.Unmarshal(f, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// readFinal reads replies until one that is not Queued.
func readFinal(t *testing.T, c net.Conn) *admitpb.ServerMsg {
	t.Helper()
	for {
		if m := readReply(t, c); m.GetQueued() == nil {
			return m
		}
	}
}

func admitFrame(t *testing.T, req *admitpb.AdmitRequest) []byte {
	b, err := proto.Marshal(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: req}})
	if err != nil {
		t.Fatal(err)
	}
	return shimproto.AppendFrame([]byte(shimproto.Magic), b)
}

// TestGarbageKeepsServing throws malformed input at the socket and checks
// the agent still admits afterwards.
func TestGarbageKeepsServing(t *testing.T) {
	a, socket := startTestAgent(t, testPolicy)
	huge := make([]byte, 4)
	binary.BigEndian.PutUint32(huge, 1<<30)
	garbage := [][]byte{
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		[]byte("SLUICE/2\n"),
		append([]byte(shimproto.Magic), huge...),                           // oversized frame
		shimproto.AppendFrame([]byte(shimproto.Magic), []byte{0xff, 0xff}), // not protobuf
		append([]byte(shimproto.Magic), 0, 0, 0),                           // truncated
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage"),
	}
	for _, g := range garbage {
		c := rawShim(t, socket, g)
		c.(*net.UnixConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c) // the agent closes or answers; it must not hang
		c.Close()
	}
	// A malformed-but-framed message gets an invalid rejection.
	c := rawShim(t, socket, shimproto.AppendFrame([]byte(shimproto.Magic), []byte{0x0a, 0x03, 0x12, 0x01}))
	if r := readReply(t, c).GetRejected(); r == nil || r.Reason != admitpb.RejectReason_REJECT_REASON_INVALID {
		t.Fatalf("malformed frame: %v", r)
	}
	// Oversized gRPC message.
	cc := grpcClient(t, socket)
	stream, err := admitpb.NewAdmissionClient(cc).Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: &admitpb.AdmitRequest{Subcommand: "upload-pack", User: strings.Repeat("u", 100<<10)}}})
	if _, err := stream.Recv(); err == nil || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("oversized gRPC message: err %v, want a size error", err)
	}

	// Still serving: a well-formed request over the shim framing is admitted.
	c = rawShim(t, socket, admitFrame(t, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/a.git")}))
	if m := readReply(t, c); m.GetAdmitted() == nil {
		t.Fatalf("after garbage: %v", m)
	}
	waitUntil(t, "one running", func() bool { return a.Limiters()[0].Running == 1 })
	c.Close() // no Finished: the lease is released on close
	waitUntil(t, "released on close", func() bool { return a.Limiters()[0].Running == 0 })
}

// TestQueuedPositionsAndDisconnect checks Queued messages and that a
// waiter whose connection closes leaves the queue at once.
func TestQueuedPositionsAndDisconnect(t *testing.T) {
	a, socket := startTestAgent(t, testPolicy)
	req := &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/a.git")}
	holder := rawShim(t, socket, admitFrame(t, req))
	if readReply(t, holder).GetAdmitted() == nil {
		t.Fatal("holder not admitted")
	}
	w1 := rawShim(t, socket, admitFrame(t, req))
	if q := readReply(t, w1).GetQueued(); q == nil || q.Position != 1 || q.Limit != "upload-pack" {
		t.Fatalf("w1 queued: %v", q)
	}
	w2 := rawShim(t, socket, admitFrame(t, req))
	if q := readReply(t, w2).GetQueued(); q == nil || q.Position != 2 {
		t.Fatalf("w2 queued: %v", q)
	}
	w1.Close()
	if q := readReply(t, w2).GetQueued(); q == nil || q.Position != 1 {
		t.Fatalf("w2 after w1 left: %v", q)
	}
	waitUntil(t, "w1 gone from the queue", func() bool { return a.Limiters()[0].Queued == 1 })
	// The queue holds 2: a third and fourth waiter; the fourth is rejected.
	w3 := rawShim(t, socket, admitFrame(t, req))
	readReply(t, w3)
	w4 := rawShim(t, socket, admitFrame(t, req))
	if r := readFinal(t, w4).GetRejected(); r == nil || r.Reason != admitpb.RejectReason_REJECT_REASON_MAX_SIZE {
		t.Fatalf("w4: %v", r)
	}
	// Finish the holder properly: w2 is next.
	fin, _ := proto.Marshal(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Finished{Finished: &admitpb.Finished{ExitCode: 0, UserUsec: 1000}}})
	holder.Write(shimproto.AppendFrame(nil, fin))
	if m := readFinal(t, w2); m.GetAdmitted() == nil {
		t.Fatalf("w2 not admitted after holder finished: %v", m)
	}
}

// TestShutdownFailsOverWaiters: waiters get an "unavailable" rejection, so
// their shims apply fail_mode instead of hanging.
func TestShutdownFailsOverWaiters(t *testing.T) {
	cfg, err := policy.Parse("test.toml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t)})
	sock, err := Listen(SocketOptions{Path: filepath.Join(t.TempDir(), "s.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Serve(ctx, sock) }()
	req := &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/a.git")}
	holder := rawShim(t, sock.Path, admitFrame(t, req))
	readReply(t, holder)
	waiter := rawShim(t, sock.Path, admitFrame(t, req))
	readReply(t, waiter) // queued
	cancel()
	if r := readFinal(t, waiter).GetRejected(); r == nil || r.Reason != admitpb.RejectReason_REJECT_REASON_UNAVAILABLE {
		t.Fatalf("waiter at shutdown: %v", r)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
	if _, err := net.Dial("unix", sock.Path); err == nil {
		t.Fatal("socket still accepts after shutdown")
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	_, socket := startTestAgent(t, testPolicy)
	if _, err := Listen(SocketOptions{Path: socket}); err == nil || !strings.Contains(err.Error(), "another sluiced is already serving") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
}

// fakePlacer records placements.
type fakePlacer struct {
	mu     sync.Mutex // guards placed
	placed [][2]int
	err    error
}

func (f *fakePlacer) Bucket(repo []byte) int  { return len(repo) % 4 }
func (f *fakePlacer) BucketPath(i int) string { return fmt.Sprintf("/sluice/repos/%d", i) }
func (f *fakePlacer) Place(pid, bucket int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.placed = append(f.placed, [2]int{pid, bucket})
	return f.err
}

func TestPlacementUsesPeerPID(t *testing.T) {
	cfg, err := policy.Parse("test.toml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakePlacer{}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t), Placer: fp})
	sock, err := Listen(SocketOptions{Path: filepath.Join(t.TempDir(), "s.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Serve(ctx, sock) }()
	defer func() { cancel(); <-done }()

	// The request claims another worker pid: it must be ignored.
	c := rawShim(t, sock.Path, admitFrame(t, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/abc.git"), WorkerPid: 1}))
	if m := readFinal(t, c); m.GetAdmitted() == nil {
		t.Fatalf("not admitted: %v", m)
	}
	fp.mu.Lock()
	placed := append([][2]int(nil), fp.placed...)
	fp.mu.Unlock()
	if len(placed) != 1 || placed[0][0] != os.Getpid() || placed[0][1] != len("/srv/abc.git")%4 {
		t.Fatalf("placed %v, want [[%d %d]] (the peer's own pid)", placed, os.Getpid(), len("/srv/abc.git")%4)
	}
	if l := a.Leases(); len(l) != 1 || l[0].Bucket != fmt.Sprintf("/sluice/repos/%d", placed[0][1]) {
		t.Fatalf("lease bucket: %+v", l)
	}
	c.Close()

	// A failing placement is counted but does not refuse the command.
	fp.mu.Lock()
	fp.err = errors.New("permission denied")
	fp.mu.Unlock()
	c = rawShim(t, sock.Path, admitFrame(t, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/b.git")}))
	if m := readFinal(t, c); m.GetAdmitted() == nil {
		t.Fatalf("placement failure refused the command: %v", m)
	}
	if n := a.PlacementFailures(); n != 1 {
		t.Fatalf("placement failures = %d, want 1", n)
	}
}
