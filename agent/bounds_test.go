package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/agent/shimproto"
)

// grpcClientNoT dials the agent's socket for a helper process.
func grpcClientNoT(socket string) *grpc.ClientConn {
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	return cc
}

// grpcAdmitOnce asks for admission over gRPC and describes the answer the
// way TestAdmitHelperProcess prints shim answers.
func grpcAdmitOnce(cc *grpc.ClientConn) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := admitpb.NewAdmissionClient(cc).Admit(ctx)
	if err != nil {
		return err.Error()
	}
	if err := stream.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: &admitpb.AdmitRequest{
		Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte("/srv/helper-grpc.git"), WorkerPid: 1}}}); err != nil {
		return err.Error()
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return fmt.Sprintf("%s: %s", status.Code(err), status.Convert(err).Message())
		}
		switch {
		case m.GetAdmitted() != nil:
			return "admitted"
		case m.GetRejected() != nil:
			return fmt.Sprintf("rejected %d: %s", m.GetRejected().Reason, m.GetRejected().Message)
		}
	}
}

// TestMaxConnections fills max_connections and checks that one more
// connection gets an immediate "unavailable" answer, that closed
// connections (shim and gRPC) are uncounted, and that the agent then
// serves again.
func TestMaxConnections(t *testing.T) {
	a, sock := startTestAgent(t, "[agent]\nmax_connections = 3\n"+testPolicy)
	var held []net.Conn
	for i := range 3 {
		c := rawShim(t, sock, admitFrame(t, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte(fmt.Sprintf("/srv/%d.git", i))}))
		if m := readFinal(t, c); m.GetAdmitted() == nil {
			t.Fatalf("connection %d: %v", i, m)
		}
		held = append(held, c)
	}
	if open, rej := a.Connections(); open != 3 || rej != 0 {
		t.Fatalf("Connections() = %d, %d; want 3, 0", open, rej)
	}
	// The fourth: a shim gets Rejected/MAX_SIZE, never UNAVAILABLE (which
	// would make it apply fail_mode): it exits 75 whatever fail_mode says.
	c4, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c4.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := shimproto.ReadFrame(c4, nil)
	c4.Close()
	if err != nil {
		t.Fatalf("over the limit: %v, want a Rejected frame", err)
	}
	rep, err := shimproto.DecodeServerMsg(f)
	if err != nil || rep.Kind != shimproto.ServerRejected || rep.Reply.Reason == shimproto.ReasonUnavailable || !strings.Contains(rep.Reply.Message, "max_connections = 3") {
		t.Fatalf("over the limit: %+v, %v; want Rejected (not UNAVAILABLE) naming max_connections", rep, err)
	}
	if _, rej := a.Connections(); rej != 1 {
		t.Fatalf("rejected = %d, want 1", rej)
	}
	if r := a.ConnectionsRejected(); r[RejectMaxConnections] != 1 || r[RejectPerUID] != 0 {
		t.Fatalf("rejected by reason = %v", r)
	}
	// A gRPC client over the limit fails; it does not hang.
	cc := grpcClient(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = admitpb.NewAdminClient(cc).Status(ctx, &admitpb.StatusRequest{})
	cancel()
	if err == nil {
		t.Fatal("gRPC call over max_connections succeeded")
	}
	cc.Close()

	// Free two: one shim, and a gRPC connection opened afterwards is
	// counted while open and uncounted when closed.
	held[0].Close()
	held[1].Close()
	waitUntil(t, "two connections uncounted", func() bool { open, _ := a.Connections(); return open == 1 })
	cc = grpcClient(t, sock)
	if _, err := admitpb.NewAdminClient(cc).Status(context.Background(), &admitpb.StatusRequest{}); err != nil {
		t.Fatalf("status under the limit: %v", err)
	}
	if open, _ := a.Connections(); open != 2 {
		t.Fatalf("open with a gRPC client = %d, want 2", open)
	}
	cc.Close()
	waitUntil(t, "gRPC connection uncounted", func() bool { open, _ := a.Connections(); return open == 1 })
	c := rawShim(t, sock, admitFrame(t, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/again.git")}))
	if m := readFinal(t, c); m.GetAdmitted() == nil {
		t.Fatalf("after connections closed: %v", m)
	}
	c.Close()
	held[2].Close()
	waitUntil(t, "all uncounted", func() bool { open, _ := a.Connections(); return open == 0 })
}

// TestIdleKeysForgotten sends many distinct keys through a limiter, by
// every path a key can leave (released, queue full, timed out, caller
// gone), and checks that the limiter tracks only live keys and that its
// heap does not grow with the number of keys seen.
func TestIdleKeysForgotten(t *testing.T) {
	l := limiter.New(limiter.Config{Name: "t", Limit: 1, MaxQueueSize: 1, MaxQueueWait: time.Millisecond})
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	const n = 200000
	const window = 64 // keys alive at once
	var live []func()
	before := heap()
	for i := range n {
		rel, _, err := l.Acquire(ctx, fmt.Sprintf("/srv/repo-%d.git", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, rel)
		if len(live) == window {
			for _, r := range live {
				r()
			}
			live = live[:0]
		}
		if i%10000 == 0 {
			if k := l.Stats().Keys; k > window {
				t.Fatalf("after %d keys the limiter tracks %d, want <= %d", i, k, window)
			}
		}
	}
	for _, r := range live {
		r()
	}
	// The other ways out: queue full (MaxQueueSize 0 on a busy key),
	// timed out, caller gone.
	hold, _, _ := l.Acquire(ctx, "busy", nil)
	if _, _, err := l.Acquire(ctx, "busy", nil); !errors.Is(err, limiter.ErrQueueTimeout) {
		t.Fatalf("second on busy key: %v, want timeout", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(0); cancel() }()
	l.Reconfigure(limiter.Config{Limit: 1, MaxQueueSize: 1, MaxQueueWait: time.Hour})
	if _, _, err := l.Acquire(cctx, "busy", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	l.Reconfigure(limiter.Config{Limit: 1, MaxQueueSize: 0, MaxQueueWait: time.Hour})
	if _, _, err := l.Acquire(ctx, "busy", nil); !errors.Is(err, limiter.ErrQueueFull) {
		t.Fatalf("full queue: %v", err)
	}
	hold()
	if st := l.Stats(); st.Keys != 0 || st.Running != 0 || st.Queued != 0 {
		t.Fatalf("after every key went idle: %+v, want no keys", st)
	}
	after := heap()
	grown := int64(after) - int64(before)
	t.Logf("%d distinct keys: heap in use %d -> %d bytes (%+d)", n, before, after, grown)
	// A map that had held all n keys would keep well over 10 MiB.
	if grown > 4<<20 {
		t.Fatalf("heap grew by %d bytes after %d distinct keys: keys are retained", grown, n)
	}
}

// TestRequestBoundsAgree checks the agent validates with the bounds the
// shim clamps to.
func TestRequestBoundsAgree(t *testing.T) {
	if maxRepoBytes != shimproto.MaxRepoBytes || maxUserBytes != shimproto.MaxUserBytes || maxCorrIDBytes != shimproto.MaxCorrelationIDBytes || maxNameBytes != shimproto.MaxNameBytes {
		t.Fatal("agent and wire bounds differ")
	}
	r := shimproto.AdmitRequest{
		Command:       strings.Repeat("g", 100),
		Subcommand:    "upload-pack",
		Repo:          []byte("/" + strings.Repeat("r", 5000)),
		User:          strings.Repeat("\xffu", 300),
		CorrelationID: strings.Repeat("é\x01", 100),
	}
	r.Clamp()
	if err := validateRequest(pbRequest(t, &r)); err != nil {
		t.Fatalf("clamped request is invalid: %v", err)
	}
}

// pbRequest encodes r as the shim does and decodes it as the agent does.
func pbRequest(t testing.TB, r *shimproto.AdmitRequest) *admitpb.AdmitRequest {
	var m admitpb.ClientMsg
	if err := proto.Unmarshal(shimproto.AppendAdmit(nil, r), &m); err != nil {
		t.Fatalf("agent cannot decode the shim's request: %v", err)
	}
	return m.GetAdmit()
}

// TestHelloTimeout opens connections that say nothing, or only the shim
// magic, and checks the agent closes them (after helloTimeout) and
// uncounts them, so idle connections cannot pin max_connections.
func TestHelloTimeout(t *testing.T) {
	a, sock := startTestAgent(t, testPolicy)
	silent := rawShim(t, sock, nil)
	magicOnly := rawShim(t, sock, []byte(shimproto.Magic))
	partial := rawShim(t, sock, append([]byte(shimproto.Magic), 0, 0, 0, 20, 0x0a))
	waitUntil(t, "three connections counted", func() bool { open, _ := a.Connections(); return open == 3 })
	for name, c := range map[string]net.Conn{"silent": silent, "magic only": magicOnly, "partial frame": partial} {
		// The deadline is a hang detector: the agent closes after
		// helloTimeout (5 s).
		c.SetReadDeadline(time.Now().Add(3 * helloTimeout))
		var b [64]byte
		n, err := c.Read(b[:])
		if !errors.Is(err, io.EOF) {
			t.Fatalf("%s: read %d bytes, %v; want the agent to close the connection", name, n, err)
		}
	}
	waitUntil(t, "connections uncounted", func() bool { open, _ := a.Connections(); return open == 0 })
}

// TestFDBudgetMessage: the open-file limit is a warning only when it caps
// connections low enough to matter; otherwise one info line, or nothing.
func TestFDBudgetMessage(t *testing.T) {
	for _, tt := range []struct {
		want, budget int64
		level        zapcore.Level
		says         string
	}{
		{10000, 0, zapcore.InfoLevel, ""},        // limit unknown
		{10000, 20000, zapcore.InfoLevel, ""},    // room for all
		{10000, 9968, zapcore.InfoLevel, "9968"}, // a 20,000 fd limit: fine
		{10000, 480, zapcore.WarnLevel, "at most 480 git commands"},
	} {
		level, msg := fdBudgetMessage(tt.want, tt.budget)
		if level != tt.level || !strings.Contains(msg, tt.says) || (tt.says == "") != (msg == "") {
			t.Errorf("fdBudgetMessage(%d, %d) = %v %q, want %v containing %q", tt.want, tt.budget, level, msg, tt.level, tt.says)
		}
	}
}
