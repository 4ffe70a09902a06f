package shimproto

import (
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
)

func admitRequests() []AdmitRequest {
	return []AdmitRequest{
		{},
		{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte("/srv/git/a.git"),
			RemoteIP: "192.0.2.7", User: "alice", CorrelationID: "0123456789abcdef", Hook: true, WorkerPID: 4242, CanExec: true, QueuedSince: 1796000000123456789},
		{Repo: []byte("/srv/\xff\x00bin\xfe"), WorkerPID: -1},
		{WorkerPID: math.MinInt32, Command: strings.Repeat("x", 300)},
		{WorkerPID: math.MaxInt32, User: "ünïcødé", Subcommand: "pack-objects"},
	}
}

func TestAdmitIsProtoCompatible(t *testing.T) {
	for i, r := range admitRequests() {
		b := AppendAdmit(nil, &r)
		var got admitpb.ClientMsg
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatalf("%d: proto.Unmarshal: %v", i, err)
		}
		want := &admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: &admitpb.AdmitRequest{
			Command: r.Command, Subcommand: r.Subcommand, Repo: r.Repo, RemoteIp: r.RemoteIP,
			User: r.User, CorrelationId: r.CorrelationID, Hook: r.Hook, WorkerPid: r.WorkerPID, CanExec: r.CanExec, QueuedSinceUnixNano: r.QueuedSince,
		}}}
		if !proto.Equal(&got, want) {
			t.Errorf("%d: got %v, want %v", i, &got, want)
		}
		// Byte-for-byte identical to proto.Marshal (deterministic for these types).
		pb, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, pb) {
			t.Errorf("%d: encoding differs from proto.Marshal:\n got %x\nwant %x", i, b, pb)
		}
		// And our own decoder round-trips it.
		m, err := DecodeClientMsg(b)
		if err != nil || m.Kind != ClientAdmit {
			t.Fatalf("%d: DecodeClientMsg: %v %v", i, m.Kind, err)
		}
		if m.Admit.Command != r.Command || !bytes.Equal(m.Admit.Repo, r.Repo) || m.Admit.WorkerPID != r.WorkerPID || m.Admit.Hook != r.Hook || m.Admit.CanExec != r.CanExec || m.Admit.QueuedSince != r.QueuedSince {
			t.Errorf("%d: round trip: got %+v want %+v", i, m.Admit, r)
		}
	}
}

func TestAdmitInvalidUTF8StringsStillUnmarshal(t *testing.T) {
	r := AdmitRequest{Command: "git-\xff\xfe", User: "a\xc3", RemoteIP: "\x80", Repo: []byte("/\xff")}
	var got admitpb.ClientMsg
	if err := proto.Unmarshal(AppendAdmit(nil, &r), &got); err != nil {
		t.Fatalf("proto.Unmarshal rejected hand encoding: %v", err)
	}
	a := got.GetAdmit()
	if a.Command != "git-\uFFFD" || a.User != "a\uFFFD" || a.RemoteIp != "\uFFFD" {
		t.Errorf("strings not made valid: %q %q %q", a.Command, a.User, a.RemoteIp)
	}
	if !bytes.Equal(a.Repo, []byte("/\xff")) {
		t.Errorf("repo bytes changed: %q", a.Repo)
	}
}

func TestFinishedIsProtoCompatible(t *testing.T) {
	for i, f := range []Finished{
		{},
		{ExitCode: 0, UserUsec: 1},
		{ExitCode: -1, Signal: 9, UserUsec: 123456789, SystemUsec: 42, MaxRSSKiB: 1 << 40, RealUsec: math.MaxInt64},
		{ExitCode: 128, SystemUsec: math.MinInt64},
	} {
		b := AppendFinished(nil, &f)
		var got admitpb.ClientMsg
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		want := &admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Finished{Finished: &admitpb.Finished{
			ExitCode: f.ExitCode, Signal: f.Signal, UserUsec: f.UserUsec, SystemUsec: f.SystemUsec,
			MaxRssKib: f.MaxRSSKiB, RealUsec: f.RealUsec,
		}}}
		if !proto.Equal(&got, want) {
			t.Errorf("%d: got %v, want %v", i, &got, want)
		}
		m, err := DecodeClientMsg(b)
		if err != nil || m.Kind != ClientFinished || m.Finished != f {
			t.Errorf("%d: DecodeClientMsg = %+v, %v", i, m, err)
		}
	}
}

// unknownFields is every wire type under field numbers the schema does not use.
func unknownFields() []byte {
	var b []byte
	b = protowire.AppendTag(b, 100, protowire.VarintType)
	b = protowire.AppendVarint(b, 1<<63)
	b = protowire.AppendTag(b, 101, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 7)
	b = protowire.AppendTag(b, 102, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("future"))
	b = protowire.AppendTag(b, 103, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 7)
	b = protowire.AppendTag(b, 104, protowire.StartGroupType)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 5)
	b = protowire.AppendTag(b, 105, protowire.StartGroupType)
	b = protowire.AppendTag(b, 105, protowire.EndGroupType)
	b = protowire.AppendTag(b, 104, protowire.EndGroupType)
	b = protowire.AppendTag(b, 536870911, protowire.VarintType)
	b = protowire.AppendVarint(b, 0)
	return b
}

func serverCases() []struct {
	pb   *admitpb.ServerMsg
	want ServerMsg
} {
	return []struct {
		pb   *admitpb.ServerMsg
		want ServerMsg
	}{
		{&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Queued{Queued: &admitpb.Queued{Limit: "upload-pack", Position: 3, QueueLength: 10}}},
			ServerMsg{Kind: ServerQueued, Queued: Queued{Limit: "upload-pack", Position: 3, QueueLength: 10}}},
		{&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Queued{Queued: &admitpb.Queued{Position: -5}}},
			ServerMsg{Kind: ServerQueued, Queued: Queued{Position: -5}}},
		{&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Admitted{Admitted: &admitpb.Admitted{LeaseId: "L-1", Limit: "pack", QueuedUsec: 1234567}}},
			ServerMsg{Kind: ServerAdmitted, Reply: Reply{Admitted: true, LeaseID: "L-1", Limit: "pack", QueuedUsec: 1234567}}},
		{&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Admitted{Admitted: &admitpb.Admitted{}}},
			ServerMsg{Kind: ServerAdmitted, Reply: Reply{Admitted: true}}},
		{&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Admitted{Admitted: &admitpb.Admitted{LeaseId: "L-2", Exec: true}}},
			ServerMsg{Kind: ServerAdmitted, Reply: Reply{Admitted: true, LeaseID: "L-2", Exec: true}}},
		{&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Rejected{Rejected: &admitpb.Rejected{
			Reason: admitpb.RejectReason_REJECT_REASON_MAX_TIME, Message: "sluice: too busy; try again", Limit: "upload-pack"}}},
			ServerMsg{Kind: ServerRejected, Reply: Reply{Reason: 2, Message: "sluice: too busy; try again", Limit: "upload-pack"}}},
		{&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Rejected{Rejected: &admitpb.Rejected{Reason: admitpb.RejectReason(-7), Message: strings.Repeat("m", 5000)}}},
			ServerMsg{Kind: ServerRejected, Reply: Reply{Reason: -7, Message: strings.Repeat("m", 5000)}}},
		{&admitpb.ServerMsg{}, ServerMsg{}},
	}
}

func TestDecodeProtoMarshaledServerMsgs(t *testing.T) {
	for i, c := range serverCases() {
		b, err := proto.Marshal(c.pb)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeServerMsg(b)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if got != c.want {
			t.Errorf("%d: got %+v, want %+v", i, got, c.want)
		}
		// Our encoder matches proto.Marshal byte for byte.
		if enc := AppendServerMsg(nil, &c.want); !bytes.Equal(enc, b) {
			t.Errorf("%d: AppendServerMsg = %x, proto.Marshal = %x", i, enc, b)
		}
	}
}

func TestDecodeServerMsgSkipsUnknownFields(t *testing.T) {
	for i, c := range serverCases() {
		// Unknown fields inside the member message (set through protobuf's own API).
		if c.want.Kind != ServerNone {
			m := proto.Clone(c.pb).(*admitpb.ServerMsg)
			var inner proto.Message
			switch x := m.Msg.(type) {
			case *admitpb.ServerMsg_Queued:
				inner = x.Queued
			case *admitpb.ServerMsg_Admitted:
				inner = x.Admitted
			case *admitpb.ServerMsg_Rejected:
				inner = x.Rejected
			}
			r := inner.ProtoReflect()
			r.SetUnknown(append(unknownFields(), r.GetUnknown()...))
			m.ProtoReflect().SetUnknown(unknownFields())
			b, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeServerMsg(b)
			if err != nil || got != c.want {
				t.Errorf("%d: with unknown fields: got %+v, %v; want %+v", i, got, err, c.want)
			}
		}
		// Unknown fields before and after, outside.
		b, _ := proto.Marshal(c.pb)
		b = append(append(unknownFields(), b...), unknownFields()...)
		got, err := DecodeServerMsg(b)
		if err != nil || got != c.want {
			t.Errorf("%d: wrapped in unknown fields: got %+v, %v; want %+v", i, got, err, c.want)
		}
	}
}

func TestDecodeServerMsgWrongWireTypeIsUnknown(t *testing.T) {
	// A known field number with another wire type is skipped, as proto.Unmarshal does.
	var inner []byte
	inner = protowire.AppendTag(inner, 1, protowire.VarintType) // limit should be bytes
	inner = protowire.AppendVarint(inner, 9)
	inner = protowire.AppendTag(inner, 2, protowire.VarintType)
	inner = protowire.AppendVarint(inner, 4)
	var b []byte
	b = protowire.AppendTag(b, 2, protowire.Fixed32Type) // admitted as fixed32: unknown
	b = protowire.AppendFixed32(b, 1)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, inner)
	var pb admitpb.ServerMsg
	if err := proto.Unmarshal(b, &pb); err != nil {
		t.Fatalf("proto.Unmarshal: %v", err)
	}
	got, err := DecodeServerMsg(b)
	if err != nil {
		t.Fatal(err)
	}
	want := ServerMsg{Kind: ServerQueued, Queued: Queued{Limit: pb.GetQueued().GetLimit(), Position: pb.GetQueued().GetPosition()}}
	if got != want || got.Queued.Position != 4 {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestDecodeServerMsgOneofLastWins(t *testing.T) {
	q := &ServerMsg{Kind: ServerQueued, Queued: Queued{Position: 1}}
	a := &ServerMsg{Kind: ServerAdmitted, Reply: Reply{Admitted: true, LeaseID: "x"}}
	b := AppendServerMsg(AppendServerMsg(nil, q), a)
	var pb admitpb.ServerMsg
	if err := proto.Unmarshal(b, &pb); err != nil {
		t.Fatal(err)
	}
	got, err := DecodeServerMsg(b)
	if err != nil || got.Kind != ServerAdmitted || got.Reply.LeaseID != pb.GetAdmitted().GetLeaseId() {
		t.Errorf("got %+v, %v; protobuf says %v", got, err, &pb)
	}
}

func TestDecodeServerMsgErrors(t *testing.T) {
	for name, b := range map[string][]byte{
		"truncated tag":      {0x80},
		"truncated length":   {0x0a, 0x05, 1, 2},
		"field zero":         {0x00, 0x01},
		"wire type 6":        {0x0e},
		"wire type 7":        {0x0f},
		"end group alone":    {0x0c},
		"unterminated group": {0x0b, 0x08, 0x01},
		"mismatched group":   {0x0b, 0x14},
		"overlong varint":    {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02},
		"bad inner":          {0x12, 0x02, 0x0a, 0x05},
		"deep groups":        bytes.Repeat([]byte{0x0b}, 1000),
	} {
		var pb admitpb.ServerMsg
		if proto.Unmarshal(b, &pb) == nil && name != "deep groups" {
			t.Errorf("%s: protobuf accepts it; the test case is wrong", name)
		}
		if m, err := DecodeServerMsg(b); err == nil {
			t.Errorf("%s: DecodeServerMsg = %+v, want error", name, m)
		}
	}
}

func FuzzDecodeServerMsg(f *testing.F) {
	for _, c := range serverCases() {
		b, _ := proto.Marshal(c.pb)
		f.Add(b)
		f.Add(append(b, unknownFields()...))
	}
	f.Add([]byte{0x0b, 0x0b, 0x0c})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeServerMsg(b)
		var pb admitpb.ServerMsg
		perr := proto.Unmarshal(b, &pb)
		if err != nil {
			return
		}
		if perr != nil {
			// We do not validate UTF-8; protobuf does. Anything else is a disagreement.
			if !strings.Contains(perr.Error(), "UTF-8") && !strings.Contains(perr.Error(), "depth") {
				t.Fatalf("we accept %x (%+v), protobuf rejects: %v", b, m, perr)
			}
			return
		}
		// Where both accept, they agree.
		var want ServerMsg
		switch x := pb.Msg.(type) {
		case *admitpb.ServerMsg_Queued:
			want = ServerMsg{Kind: ServerQueued, Queued: Queued{x.Queued.Limit, x.Queued.Position, x.Queued.QueueLength}}
		case *admitpb.ServerMsg_Admitted:
			want = ServerMsg{Kind: ServerAdmitted, Reply: Reply{Admitted: true, LeaseID: x.Admitted.LeaseId, Limit: x.Admitted.Limit, QueuedUsec: x.Admitted.QueuedUsec, Exec: x.Admitted.Exec}}
		case *admitpb.ServerMsg_Rejected:
			want = ServerMsg{Kind: ServerRejected, Reply: Reply{Reason: int32(x.Rejected.Reason), Message: x.Rejected.Message, Limit: x.Rejected.Limit}}
		}
		if m != want {
			t.Fatalf("decode %x: got %+v, protobuf %+v", b, m, want)
		}
	})
}

func TestFrames(t *testing.T) {
	var b []byte
	b = AppendFrame(b, []byte("hello"))
	b = AppendFrame(b, nil)
	b = AppendFrame(b, bytes.Repeat([]byte{1}, MaxFrame))
	r := bytes.NewReader(b)
	buf := make([]byte, 0, 16)
	f, err := ReadFrame(r, buf)
	if err != nil || string(f) != "hello" || &f[0] != &buf[:1][0] {
		t.Fatalf("frame 1: %q %v (buffer reused: %v)", f, err, err == nil && &f[0] == &buf[:1][0])
	}
	if f, err = ReadFrame(r, buf); err != nil || len(f) != 0 {
		t.Fatalf("empty frame: %q %v", f, err)
	}
	if f, err = ReadFrame(r, buf); err != nil || len(f) != MaxFrame {
		t.Fatalf("max frame: %d %v", len(f), err)
	}
	if _, err = ReadFrame(r, buf); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 1, 0, 1}), nil); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("MaxFrame+1: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 5, 'a'}), nil); err != io.ErrUnexpectedEOF {
		t.Errorf("short frame: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0}), nil); err != io.ErrUnexpectedEOF {
		t.Errorf("short header: %v", err)
	}
	if Magic[0] != 'S' || Magic[0] == "PRI * HTTP/2.0"[0] {
		t.Error("magic must start with S to be told apart from gRPC")
	}
}

func TestShimConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := ShimConfigPath(filepath.Join(dir, "sluice.sock"))
	if path != filepath.Join(dir, "shim.conf") {
		t.Fatalf("ShimConfigPath = %q", path)
	}
	c, err := ReadShimConfig(path)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err = %v, want ErrNotExist", err)
	}
	def := DefaultShimConfig()
	if c.FailClosed || c.GitBin != "" || c.AdmitTimeout != 62*time.Second || strings.Join(c.Match, ",") != "upload-pack,pack-objects,receive-pack,upload-archive" {
		t.Errorf("default = %+v", c)
	}
	if !def.Matches("pack-objects") || def.Matches("rev-parse") || def.Matches("") {
		t.Error("default Matches wrong")
	}
	for _, want := range []ShimConfig{
		{FailClosed: true, GitBin: "/opt/git/bin/git", Match: []string{"upload-pack"}, AdmitTimeout: 1500 * time.Millisecond, QueueFeedbackAfter: 500 * time.Millisecond, RestartGrace: 2500 * time.Millisecond},
		{Match: []string{}, AdmitTimeout: time.Second}, // QueueFeedbackAfter 0: never
		def,
	} {
		if err := WriteShimConfig(path, want); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != 0o644 {
			t.Fatalf("mode: %v %v", st.Mode(), err)
		}
		got, err := ReadShimConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if got.FailClosed != want.FailClosed || got.GitBin != want.GitBin || got.AdmitTimeout != want.AdmitTimeout ||
			got.QueueFeedbackAfter != want.QueueFeedbackAfter || got.RestartGrace != want.RestartGrace ||
			strings.Join(got.Match, ",") != strings.Join(want.Match, ",") {
			t.Errorf("round trip: got %+v, want %+v", got, want)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("temporary files left behind: %v", ents)
	}
	if err := WriteShimConfig(path, ShimConfig{GitBin: "a\nmatch=x"}); err == nil {
		t.Error("newline in git_bin accepted")
	}
}

func TestParseShimConfig(t *testing.T) {
	c := DefaultShimConfig()
	err := parseShimConfig([]byte("# comment\n\n version = 2 \nfail_mode=closed\r\nfuture_key=1\nmatch= upload-pack , ,receive-pack\nadmit_timeout_ms=abc\ngit_bin=/x/git"), &c)
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("err = %v, want the version line reported", err)
	}
	if !c.FailClosed || c.GitBin != "/x/git" || strings.Join(c.Match, ",") != "upload-pack,receive-pack" || c.AdmitTimeout != DefaultAdmitTimeout {
		t.Errorf("parsed %+v", c)
	}
	if c.QueueFeedbackAfter != DefaultQueueFeedbackAfter {
		t.Errorf("queue feedback without the key: %v, want %v", c.QueueFeedbackAfter, DefaultQueueFeedbackAfter)
	}
	c = DefaultShimConfig()
	if err := parseShimConfig([]byte("queue_feedback_after_ms=0\n"), &c); err != nil || c.QueueFeedbackAfter != 0 {
		t.Errorf("queue_feedback_after_ms=0: %v %v, want 0 (never)", err, c.QueueFeedbackAfter)
	}
	c = DefaultShimConfig()
	if err := parseShimConfig([]byte("queue_feedback_after_ms=-5\n"), &c); err == nil || c.QueueFeedbackAfter != DefaultQueueFeedbackAfter {
		t.Errorf("queue_feedback_after_ms=-5: %v %v, want an error and the default", err, c.QueueFeedbackAfter)
	}
	c = DefaultShimConfig()
	if err := parseShimConfig([]byte("fail_mode=sometimes\nnonsense\n"), &c); err == nil || c.FailClosed {
		t.Errorf("bad fail_mode: %v %+v", err, c)
	}
}

func TestSocketPath(t *testing.T) {
	t.Setenv(SocketEnv, "/x/s.sock")
	if got := SocketPath("/configured"); got != "/x/s.sock" {
		t.Errorf("env: %q", got)
	}
	t.Setenv(SocketEnv, "")
	if got := SocketPath("/configured"); got != "/configured" {
		t.Errorf("configured: %q", got)
	}
	if got := SocketPath(""); got != RootSocket {
		t.Errorf("default: %q", got)
	}
}

// TestSocketPathNoUserFallback: whoever runs it, without SLUICE_SOCKET or a
// configured socket the path is RootSocket; $XDG_RUNTIME_DIR and /tmp are
// never consulted (issue 14: another user could plant shim.conf there).
func TestSocketPathNoUserFallback(t *testing.T) {
	env := map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000", "TMPDIR": "/tmp"}
	if got := socketPath("", func(k string) string { return env[k] }); got != RootSocket {
		t.Errorf("non-root user with XDG_RUNTIME_DIR: %q, want %q", got, RootSocket)
	}
	delete(env, "XDG_RUNTIME_DIR")
	if got := socketPath("", func(k string) string { return env[k] }); got != RootSocket {
		t.Errorf("no XDG_RUNTIME_DIR: %q, want %q", got, RootSocket)
	}
}

func TestReasonsMatchProto(t *testing.T) {
	for got, want := range map[int32]admitpb.RejectReason{
		ReasonMaxSize:     admitpb.RejectReason_REJECT_REASON_MAX_SIZE,
		ReasonMaxTime:     admitpb.RejectReason_REJECT_REASON_MAX_TIME,
		ReasonInvalid:     admitpb.RejectReason_REJECT_REASON_INVALID,
		ReasonUnavailable: admitpb.RejectReason_REJECT_REASON_UNAVAILABLE,
		ReasonPermission:  admitpb.RejectReason_REJECT_REASON_PERMISSION,
	} {
		if got != int32(want) {
			t.Errorf("wire reason %d != %v (%d)", got, want, want)
		}
	}
}

// TestRestartGraceKey: restart_grace_ms is read within its bounds, and a
// bad value keeps the default.
func TestRestartGraceKey(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"restart_grace_ms=0":     0,
		"restart_grace_ms=1200":  1200 * time.Millisecond,
		"restart_grace_ms=60001": DefaultRestartGrace,
		"restart_grace_ms=-1":    DefaultRestartGrace,
		"version=1":              DefaultRestartGrace,
	} {
		c := DefaultShimConfig()
		_ = parseShimConfig([]byte(in), &c)
		if c.RestartGrace != want {
			t.Errorf("%s: RestartGrace = %v, want %v", in, c.RestartGrace, want)
		}
	}
}
