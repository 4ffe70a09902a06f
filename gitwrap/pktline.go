package gitwrap

import (
	"errors"
	"io"
)

// Pkt-line limits (git's LARGE_PACKET_MAX).
const (
	PktMax     = 65520      // whole packet, 4-byte header included
	PktDataMax = PktMax - 4 // payload
)

// PktType is the kind of a pkt-line.
type PktType uint8

// Pkt-line kinds.
const (
	PktData        PktType = iota // "LLLL" + payload (LLLL ≥ 4)
	PktFlush                      // "0000"
	PktDelim                      // "0001" (protocol v2)
	PktResponseEnd                // "0002" (protocol v2, stateless-rpc)
)

// Pkt-line errors.
var (
	ErrPktTooLarge = errors.New("pkt-line: payload larger than 65516 bytes")
	ErrPktLength   = errors.New("pkt-line: bad length header")
)

const hexDigits = "0123456789abcdef"

func appendHeader(dst []byte, n int) []byte {
	return append(dst, hexDigits[n>>12&15], hexDigits[n>>8&15], hexDigits[n>>4&15], hexDigits[n&15])
}

// AppendPkt appends a data pkt-line holding data.
func AppendPkt(dst, data []byte) ([]byte, error) {
	if len(data) > PktDataMax {
		return dst, ErrPktTooLarge
	}
	return append(appendHeader(dst, len(data)+4), data...), nil
}

// AppendPktString appends a data pkt-line holding s.
func AppendPktString(dst []byte, s string) ([]byte, error) {
	if len(s) > PktDataMax {
		return dst, ErrPktTooLarge
	}
	return append(appendHeader(dst, len(s)+4), s...), nil
}

// AppendFlush appends "0000".
func AppendFlush(dst []byte) []byte { return append(dst, "0000"...) }

// AppendDelim appends "0001".
func AppendDelim(dst []byte) []byte { return append(dst, "0001"...) }

// AppendResponseEnd appends "0002".
func AppendResponseEnd(dst []byte) []byte { return append(dst, "0002"...) }

// parseHeader decodes the 4 hex digits (either case, as git accepts).
func parseHeader(h []byte) (int, error) {
	n := 0
	for _, c := range h[:4] {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, ErrPktLength
		}
		n = n<<4 | int(v)
	}
	if n == 3 || n > PktMax {
		return 0, ErrPktLength
	}
	return n, nil
}

func kind(n int) PktType {
	switch n {
	case 0:
		return PktFlush
	case 1:
		return PktDelim
	case 2:
		return PktResponseEnd
	}
	return PktData
}

// ParsePkt splits the first pkt-line off b. It returns the payload (nil for
// special packets; it aliases b) and the rest of b; io.ErrUnexpectedEOF
// when b holds only part of a packet.
func ParsePkt(b []byte) (typ PktType, payload, rest []byte, err error) {
	if len(b) < 4 {
		return 0, nil, b, io.ErrUnexpectedEOF
	}
	n, err := parseHeader(b)
	if err != nil {
		return 0, nil, b, err
	}
	if n < 4 {
		return kind(n), nil, b[4:], nil
	}
	if len(b) < n {
		return 0, nil, b, io.ErrUnexpectedEOF
	}
	return PktData, b[4:n:n], b[n:], nil
}

// ReadPkt reads one pkt-line from r; the payload reuses buf when it is big
// enough. A clean EOF before a packet is io.EOF.
func ReadPkt(r io.Reader, buf []byte) (PktType, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n, err := parseHeader(h[:])
	if err != nil {
		return 0, nil, err
	}
	if n < 4 {
		return kind(n), nil, nil
	}
	n -= 4
	if cap(buf) >= n {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return PktData, buf, nil
}
