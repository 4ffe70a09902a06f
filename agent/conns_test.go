package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// TestConnCounterCaps plays the accept loop's decisions: a uid stops at
// its cap while another uid is still served, the reserve is left to
// privileged peers only, max_connections binds everyone, and closing
// connections gives their places back (and forgets the uid).
func TestConnCounterCaps(t *testing.T) {
	var c connCounter
	l := connLimits{max: 10, perUID: 3, reserve: 2}
	yes := func() bool { return true }
	no := func() bool { return false }
	asked := 0
	counted := func() bool { asked++; return false }
	var held []func()
	take := func(uid uint32, priv func() bool, want string) {
		t.Helper()
		done, reason := c.tryConn(l, uid, priv)
		if reason != want || (done == nil) != (want != "") {
			t.Fatalf("uid %d: reason %q (done %v), want %q", uid, reason, done != nil, want)
		}
		if done != nil {
			held = append(held, done)
		}
	}
	for range 3 {
		take(1000, counted, "")
	}
	if asked != 0 {
		t.Fatalf("privileged() read %d times for connections under every cap", asked)
	}
	take(1000, no, RejectPerUID) // the attacker's 4th
	take(1001, no, "")           // the Git server is still served
	take(1001, no, "")
	take(1001, no, "")
	take(1002, no, "") // 7 open: 8 = max - reserve is the last unprivileged place
	take(1003, no, "")
	take(1004, no, RejectMaxConnections) // only the reserve is left
	take(1000, yes, "")                  // admin_group member over its uid cap
	take(0, yes, "")                     // root: the last place
	take(0, yes, RejectMaxConnections)   // max_connections binds everyone
	c.mu.Lock()
	got := c.perUID[1000]
	c.mu.Unlock()
	if got != 4 {
		t.Fatalf("uid 1000 holds %d, want 4", got)
	}
	held[0]()
	held[0]() // idempotent
	take(1005, no, RejectMaxConnections)
	for _, done := range held {
		done()
	}
	c.mu.Lock()
	open, uids := c.open, len(c.perUID)
	c.mu.Unlock()
	if open != 0 || uids != 0 {
		t.Fatalf("after closing all: open %d, uids tracked %d; want 0, 0", open, uids)
	}
}

// h2Preface is what an HTTP/2 client sends first.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// h2Frame encodes one HTTP/2 frame.
func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[5:], stream)
	return append(b, payload...)
}

// h2CallHeaders is a HEADERS frame (END_HEADERS, not END_STREAM) opening a
// gRPC call of method on stream 1, HPACK-encoded by hand (literals without
// Huffman).
func h2CallHeaders(method string) []byte {
	lit := func(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }
	var h []byte
	h = append(h, 0x83, 0x86)         // :method POST, :scheme http (static table)
	h = lit(append(h, 0x04), method)  // :path, indexed name
	h = lit(append(h, 0x01), "local") // :authority, indexed name
	h = lit(append(h, 0x0f, 0x10), "application/grpc")
	h = lit(lit(append(h, 0x00), "te"), "trailers")
	return h2Frame(0x1, 0x4, 1, h)
}

// readUntilClosed reads c until the agent closes it and says how long
// that took; limit is a hang detector, not a timing assertion.
func readUntilClosed(t *testing.T, c net.Conn, limit time.Duration) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		return nil // EOF
	}
	return err
}

// TestGRPCHandshakeAndIdleBounds plays clients that hold gRPC connections
// without using them: a partial HTTP/2 preface, a finished handshake and
// then no call, calls opened without their request, and a finished call
// followed by nothing. The agent closes each (handshake: ConnectionTimeout;
// no call: the first-call timer; no request: the call is cancelled and the
// connection closed; idle: MaxConnectionIdle, even when the client ignores
// GOAWAY) and uncounts it. Before the fix all of them stayed open for good.
func TestGRPCHandshakeAndIdleBounds(t *testing.T) {
	a, sock := startTestAgent(t, testPolicy)
	dial := func(payload ...[]byte) net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		for _, p := range payload {
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	settings := h2Frame(0x4, 0, 0, nil)
	conns := map[string]net.Conn{
		"partial preface":        dial([]byte(h2Preface[:8])),
		"preface, no settings":   dial([]byte(h2Preface)),
		"handshake, then idle":   dial([]byte(h2Preface), settings),
		"Admit without request":  dial([]byte(h2Preface), settings, h2CallHeaders("/sluice.v1.Admission/Admit")),
		"Status without request": dial([]byte(h2Preface), settings, h2CallHeaders("/sluice.v1.Admin/Status")),
		// A whole Status call, then nothing (and no answer to GOAWAY).
		"a call, then idle": dial([]byte(h2Preface), settings, h2CallHeaders("/sluice.v1.Admin/Status"), h2Frame(0x0, 0x1, 1, make([]byte, 5))),
	}
	// Six connections, and the calls once the agent reads their headers.
	waitUntil(t, "six connections counted", func() bool { open, _ := a.Connections(); return open >= 6 })
	// Bound: the handshake or request timeout, then MaxConnectionIdle,
	// then the GOAWAY grace (5 s); ×2 as a hang detector.
	limit := 2 * (helloTimeout + grpcMaxIdle + 5*time.Second)
	results := make(chan string, len(conns))
	for name, c := range conns {
		go func() {
			if err := readUntilClosed(t, c, limit); err != nil {
				results <- name + ": " + err.Error()
				return
			}
			results <- ""
		}()
	}
	for range conns {
		if r := <-results; r != "" {
			t.Errorf("%s; want the agent to close the connection", r)
		}
	}
	waitUntil(t, "connections uncounted", func() bool { open, _ := a.Connections(); return open == 0 })
	// partial preface, no settings: handshake; the two calls: no request.
	if got := a.ConnectionsRejected()[RejectHandshake]; got < 4 {
		t.Errorf("handshake closes counted: %d, want at least 4", got)
	}
}

// TestGRPCCallsStillServed: the request timer and idle bound leave a
// normal client alone: a queued Admit keeps its stream past helloTimeout,
// and a client whose idle connection was closed reconnects by itself.
func TestGRPCCallsStillServed(t *testing.T) {
	_, sock := startTestAgent(t, "[agent]\n"+`
[[limit]]
name = "one"
match = ["upload-pack"]
key = "repo"
max_per_key = 1
max_queue_size = 5
max_queue_wait = "1m"
`)
	cc := grpcClient(t, sock)
	req := &admitpb.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte("/srv/one.git"), WorkerPid: 1}
	holder, m := admitGRPC(t, cc, req)
	if m.GetAdmitted() == nil {
		t.Fatalf("first: %v", m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiter, err := admitpb.NewAdmissionClient(cc).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := waiter.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: req}}); err != nil {
		t.Fatal(err)
	}
	if m, err := waiter.Recv(); err != nil || m.GetQueued() == nil {
		t.Fatalf("second: %v %v, want Queued", m, err)
	}
	time.Sleep(helloTimeout + time.Second)
	holder.CloseSend()
	m, err = waiter.Recv()
	for err == nil && m.GetQueued() != nil {
		m, err = waiter.Recv()
	}
	if err != nil || m.GetAdmitted() == nil {
		t.Fatalf("queued past helloTimeout: %v %v, want Admitted", m, err)
	}
	waiter.CloseSend()
	cancel()
	// Idle past grpcMaxIdle: the agent closes, the client redials.
	time.Sleep(grpcMaxIdle + 6*time.Second)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if _, err := admitpb.NewAdminClient(cc).Status(ctx2, &admitpb.StatusRequest{}); err != nil {
		t.Fatalf("status after an idle close: %v", err)
	}
}

// TestGRPCCallsCounted: calls multiplexed on one gRPC connection count
// against max_connections like connections, so one connection cannot
// carry more leases than the caps allow; a refused call gets
// RESOURCE_EXHAUSTED with the shim's line, and its place comes back when
// a call ends.
func TestGRPCCallsCounted(t *testing.T) {
	a, sock := startTestAgent(t, "[agent]\nmax_connections = 3\n"+testPolicy)
	cc := grpcClient(t, sock)
	var held []admitpb.Admission_AdmitClient
	for i := range 2 {
		s, m := admitGRPC(t, cc, &admitpb.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte(fmt.Sprintf("/srv/c%d.git", i)), WorkerPid: 1})
		if m.GetAdmitted() == nil {
			t.Fatalf("call %d: %v", i, m)
		}
		held = append(held, s)
	}
	if open, _ := a.Connections(); open != 3 {
		t.Fatalf("one connection with two calls counts %d, want 3", open)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := admitpb.NewAdmissionClient(cc).Admit(ctx)
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "max_connections = 3") {
		t.Fatalf("third call: %v; want RESOURCE_EXHAUSTED naming max_connections", err)
	}
	if r := a.ConnectionsRejected()[RejectMaxConnections]; r != 1 {
		t.Fatalf("refusals counted: %d, want 1", r)
	}
	held[0].CloseSend()
	waitUntil(t, "a call uncounted", func() bool { open, _ := a.Connections(); return open == 2 })
	if _, err := admitpb.NewAdminClient(cc).Status(ctx, &admitpb.StatusRequest{}); err != nil {
		t.Fatalf("status once a call ended: %v", err)
	}
}
