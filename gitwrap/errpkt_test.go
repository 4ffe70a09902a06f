package gitwrap

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestAppendErrPkt(t *testing.T) {
	if got := string(AppendErrPkt(nil, "sluice: busy\nsecond")); got != "0015ERR sluice: busy\n" {
		t.Errorf("got %q", got)
	}
	long := AppendErrPkt(nil, strings.Repeat("x", 70000))
	typ, payload, rest, err := ParsePkt(long)
	if err != nil || typ != PktData || len(rest) != 0 || len(long) != PktMax || !strings.HasPrefix(string(payload), "ERR xxx") {
		t.Errorf("long message: %d bytes, %v", len(long), err)
	}
}

func TestClientStream(t *testing.T) {
	for _, c := range []struct {
		argv []string
		want Stream
	}{
		{[]string{"git-upload-pack", "/r"}, Stream{ERR: true}},
		{[]string{"git", "upload-pack", "--strict", "--timeout=0", "."}, Stream{ERR: true}},
		{[]string{"git", "upload-pack", "--stateless-rpc", "--advertise-refs", "."}, Stream{ERR: true}},
		{[]string{"git", "receive-pack", "--stateless-rpc", "."}, Stream{ERR: true, DrainEOF: true}},
		{[]string{"git-upload-archive", "/r"}, Stream{ERR: true, DrainFlush: true}},
		{[]string{"sluice-shim", "git", "pack-objects", "--stdout"}, Stream{}},
		{[]string{"git", "pack-objects", "--stdout"}, Stream{}},
		{[]string{"git", "rev-parse"}, Stream{}},
	} {
		inv := Parse(c.argv)
		if got := ClientStream(&inv); got != c.want {
			t.Errorf("%q: %+v, want %+v", c.argv, got, c.want)
		}
	}
}

// Drain stops at the flush packet (were it not to, it would block until
// the hour-long deadline and the test binary's timeout), and at EOF.
func TestDrain(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	// A flush split across writes, then bytes that must stay unread.
	w.WriteString("000aargs\n00")
	go w.WriteString("00tail")
	Drain(int(r.Fd()), true, 1<<20, time.Now().Add(time.Hour))
	w.Close()
	rest := make([]byte, 16)
	n, _ := r.Read(rest)
	// One read got the first write, a second the flush and what follows
	// it (pipe reads cannot stop mid-write); the tail is consumed only in
	// the same read as the flush.
	if n != 0 && string(rest[:n]) != "tail" {
		t.Errorf("left %q", rest[:n])
	}
	r2, w2, _ := os.Pipe()
	defer r2.Close()
	w2.WriteString("no pkt-lines here")
	w2.Close()
	Drain(int(r2.Fd()), false, 1<<20, time.Now().Add(time.Minute))
	if n, _ := r2.Read(rest); n != 0 {
		t.Errorf("left %d bytes before EOF", n)
	}
}

func TestSideband(t *testing.T) {
	cmd := "0000000000000000000000000000000000000000 1111111111111111111111111111111111111111 refs/heads/x"
	for _, c := range []struct {
		first string
		want  bool
	}{
		{cmd + "\x00 report-status side-band-64k quiet object-format=sha1 agent=git/2.39.5", true},
		{cmd + "\x00report-status side-band", true},
		{cmd + "\x00report-status", false},
		{cmd, false},
		{"", false},
	} {
		if got := SidebandRequested([]byte(c.first)); got != c.want {
			t.Errorf("%q: %v", c.first, got)
		}
	}
	if got := string(AppendBand3Pkt(nil, "sluice: busy\nmore")); got != "0012\x03sluice: busy\n" {
		t.Errorf("band 3 packet %q", got)
	}
}

// Drain returns the first pkt-line of a request read to EOF.
func TestDrainFirst(t *testing.T) {
	r, w, _ := os.Pipe()
	defer r.Close()
	go func() { w.WriteString("0009first0008next0000PACK\x00\x01binary"); w.Close() }()
	if got := string(Drain(int(r.Fd()), false, 1<<20, time.Now().Add(time.Hour))); got != "first" {
		t.Errorf("first %q", got)
	}
}
