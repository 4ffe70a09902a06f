package gitwrap

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestPktLine(t *testing.T) {
	var b []byte
	b, _ = AppendPktString(b, "command=ls-refs\n")
	b = AppendDelim(b)
	b, _ = AppendPkt(b, []byte("peel\n"))
	b = AppendFlush(b)
	b = AppendResponseEnd(b)
	b, _ = AppendPkt(b, nil)
	want := "0014command=ls-refs\n00010009peel\n000000020004"
	if string(b) != want {
		t.Fatalf("encoded %q, want %q", b, want)
	}
	r := bytes.NewReader(b)
	var got []string
	for {
		typ, p, err := ReadPkt(r, nil)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, []string{"data:", "flush", "delim", "end"}[typ]+string(p))
	}
	if strings.Join(got, "|") != "data:command=ls-refs\n|delim|data:peel\n|flush|end|data:" {
		t.Errorf("read %q", got)
	}
	rest := b
	var n int
	for len(rest) > 0 {
		var err error
		_, _, rest, err = ParsePkt(rest)
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 6 {
		t.Errorf("ParsePkt saw %d packets", n)
	}
}

func TestPktLineLimitsAndErrors(t *testing.T) {
	if _, err := AppendPkt(nil, make([]byte, PktDataMax+1)); err != ErrPktTooLarge {
		t.Errorf("oversize: %v", err)
	}
	b, err := AppendPkt(nil, make([]byte, PktDataMax))
	if err != nil || string(b[:4]) != "fff0" {
		t.Errorf("max: %q %v", b[:4], err)
	}
	for _, bad := range []string{"0003", "fff1", "00g0", "-001"} {
		if _, _, err := ReadPkt(strings.NewReader(bad+"xxxx"), nil); err != ErrPktLength {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if typ, p, err := ReadPkt(strings.NewReader("000Aabcdef"), nil); err != nil || typ != PktData || string(p) != "abcdef" {
		t.Errorf("upper-case hex: %v %q %v", typ, p, err)
	}
	if _, _, err := ReadPkt(strings.NewReader("0009ab"), nil); err != io.ErrUnexpectedEOF {
		t.Errorf("short: %v", err)
	}
	if _, _, _, err := ParsePkt([]byte("0009ab")); err != io.ErrUnexpectedEOF {
		t.Errorf("ParsePkt short: %v", err)
	}
}

func FuzzParsePkt(f *testing.F) {
	f.Add([]byte("0014command=ls-refs\n00010009peel\n000000020004"))
	f.Add([]byte("0003"))
	f.Add([]byte("fff0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rest := b
		for len(rest) > 0 {
			typ, p, next, err := ParsePkt(rest)
			if err != nil {
				break
			}
			if len(next) >= len(rest) {
				t.Fatalf("no progress at %q", rest)
			}
			// Re-encoding what was parsed gives the same bytes (modulo hex case).
			var enc []byte
			switch typ {
			case PktData:
				enc, _ = AppendPkt(nil, p)
			case PktFlush:
				enc = AppendFlush(nil)
			case PktDelim:
				enc = AppendDelim(nil)
			case PktResponseEnd:
				enc = AppendResponseEnd(nil)
			}
			if !bytes.EqualFold(enc, rest[:len(rest)-len(next)]) {
				t.Fatalf("round trip %q → %q", rest[:len(rest)-len(next)], enc)
			}
			// ReadPkt agrees with ParsePkt.
			rt, rp, rerr := ReadPkt(bytes.NewReader(rest), nil)
			if rerr != nil || rt != typ || !bytes.Equal(rp, p) {
				t.Fatalf("ReadPkt disagrees on %q: %v %q %v", rest, rt, rp, rerr)
			}
			rest = next
		}
	})
}
