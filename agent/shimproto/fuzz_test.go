package shimproto

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// FuzzDecodeClientMsg checks DecodeClientMsg (the client-message decoder
// of fake servers and tests) against protobuf itself: where both accept,
// they agree; it never accepts what protobuf rejects for a reason other
// than UTF-8 or nesting depth; re-encoding what it decoded is accepted by
// protobuf.
func FuzzDecodeClientMsg(f *testing.F) {
	for _, r := range admitRequests() {
		b := AppendAdmit(nil, &r)
		f.Add(b)
		f.Add(append(b, unknownFields()...))
	}
	f.Add(AppendFinished(nil, &Finished{ExitCode: -1, Signal: 9, UserUsec: 1, SystemUsec: 2, MaxRSSKiB: 3, RealUsec: 4}))
	f.Add([]byte{0x0a, 0x03, 0x12, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeClientMsg(b)
		var pb admitpb.ClientMsg
		perr := proto.Unmarshal(b, &pb)
		if err != nil {
			return
		}
		if perr != nil {
			if !strings.Contains(perr.Error(), "UTF-8") && !strings.Contains(perr.Error(), "depth") {
				t.Fatalf("we accept %x (%+v), protobuf rejects: %v", b, m, perr)
			}
			return
		}
		switch x := pb.Msg.(type) {
		case *admitpb.ClientMsg_Admit:
			a := x.Admit
			want := AdmitRequest{a.Command, a.Subcommand, a.Repo, a.RemoteIp, a.User, a.CorrelationId, a.Hook, a.WorkerPid, a.CanExec, a.QueuedSinceUnixNano}
			if m.Kind != ClientAdmit || m.Admit.Command != want.Command || m.Admit.Subcommand != want.Subcommand ||
				!bytes.Equal(m.Admit.Repo, want.Repo) || m.Admit.RemoteIP != want.RemoteIP || m.Admit.User != want.User ||
				m.Admit.CorrelationID != want.CorrelationID || m.Admit.Hook != want.Hook || m.Admit.WorkerPID != want.WorkerPID || m.Admit.CanExec != want.CanExec || m.Admit.QueuedSince != want.QueuedSince {
				t.Fatalf("decode %x: got %+v, protobuf %+v", b, m, want)
			}
		case *admitpb.ClientMsg_Finished:
			fi := x.Finished
			want := Finished{fi.ExitCode, fi.Signal, fi.UserUsec, fi.SystemUsec, fi.MaxRssKib, fi.RealUsec}
			if m.Kind != ClientFinished || m.Finished != want {
				t.Fatalf("decode %x: got %+v, protobuf %+v", b, m, want)
			}
		default:
			if m.Kind != ClientNone {
				t.Fatalf("decode %x: got %+v, protobuf: no member", b, m)
			}
		}
		// What we decoded, encoded again, is what protobuf decodes.
		var again admitpb.ClientMsg
		if err := proto.Unmarshal(AppendClientMsg(nil, &m), &again); err != nil {
			t.Fatalf("re-encoding of %+v: %v", m, err)
		}
	})
}

// FuzzClamp checks that a clamped request is within every bound and
// encodes to strings protobuf accepts.
func FuzzClamp(f *testing.F) {
	f.Add("git", "/srv/a.git", "u", "c")
	f.Add(strings.Repeat("x", 100), "rel/path", strings.Repeat("\xffu", 300), strings.Repeat("é\x01", 100))
	f.Add("a/b", "/a\x00b", "\x00", "\x7f")
	f.Fuzz(func(t *testing.T, cmd, repo, user, corr string) {
		r := AdmitRequest{Command: cmd, Subcommand: "upload-pack", Repo: []byte(repo), User: user, CorrelationID: corr}
		r.Clamp()
		if len(r.Command) > MaxNameBytes || strings.ContainsAny(r.Command, "/\x00") || !utf8.ValidString(r.Command) {
			t.Fatalf("command %q", r.Command)
		}
		if len(r.Repo) > MaxRepoBytes || (len(r.Repo) > 0 && r.Repo[0] != '/') || bytes.IndexByte(r.Repo, 0) >= 0 {
			t.Fatalf("repo %q", r.Repo)
		}
		if len(r.User) > MaxUserBytes || strings.IndexByte(r.User, 0) >= 0 || !utf8.ValidString(r.User) {
			t.Fatalf("user %q", r.User)
		}
		if len(r.CorrelationID) > MaxCorrelationIDBytes || !utf8.ValidString(r.CorrelationID) {
			t.Fatalf("correlation id %q", r.CorrelationID)
		}
		for _, c := range r.CorrelationID {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("correlation id %q has a control character", r.CorrelationID)
			}
		}
		var pb admitpb.ClientMsg
		if err := proto.Unmarshal(AppendAdmit(nil, &r), &pb); err != nil {
			t.Fatalf("protobuf refuses the clamped request: %v", err)
		}
		if got := pb.GetAdmit(); got.User != r.User || got.CorrelationId != r.CorrelationID {
			t.Fatalf("encoding changed the clamped strings: %q %q", got.User, got.CorrelationId)
		}
	})
}
