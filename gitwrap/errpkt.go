package gitwrap

import (
	"strings"
	"syscall"
	"time"
)

// Refusing a command in git's own protocol.
//
// A git client reads the first pkt-line the server sends through a packet
// reader that dies on "ERR <message>" (PACKET_READ_DIE_ON_ERR_PACKET in
// connect.c, remote-curl.c, fetch-pack.c; `git archive --remote` checks for
// it in place of its ACK), printing
//
//	fatal: remote error: <message>
//
// for protocol v0, v1 and v2 alike: v2 clients peek the first line to learn
// the version, and that peek dies on ERR too. The packet is therefore only
// ever sent where it is the first thing the server says: by a shim that
// refused to start upload-pack, receive-pack or upload-archive. Once git
// runs, stdout belongs to git.

// Stream says where the shim's refusal may go.
type Stream struct {
	// ERR is true when stdout is the git protocol stream to the client
	// and nothing has been written on it: an ERR pkt-line may be sent.
	ERR bool
	// DrainFlush: the client sends a request first and the server answers
	// after reading it up to a flush packet (upload-archive's arguments).
	DrainFlush bool
	// DrainEOF: stdin is a finite request body (--stateless-rpc without
	// --advertise-refs: an HTTP POST relayed by git-http-backend).
	DrainEOF bool
}

// ClientStream reports how a refused inv can tell its client. Only
// upload-pack, receive-pack and upload-archive speak pkt-lines on stdout;
// hook mode (pack-objects) writes pack data to upload-pack, which relays
// stderr as "remote: …" — that one gets no ERR.
func ClientStream(inv *Invocation) Stream {
	if inv.Hook {
		return Stream{}
	}
	switch inv.Subcommand {
	case "upload-pack", "receive-pack":
		s := Stream{ERR: true}
		stateless, advertise := false, false
		for _, a := range inv.SubArgs {
			switch a {
			case "--stateless-rpc":
				stateless = true
			case "--advertise-refs", "--http-backend-info-refs":
				advertise = true
			}
		}
		s.DrainEOF = stateless && !advertise
		return s
	case "upload-archive":
		return Stream{ERR: true, DrainFlush: true}
	}
	return Stream{}
}

// AppendErrPkt appends "ERR <msg>\n" as one pkt-line; msg is cut to one
// line and to what a packet holds.
func AppendErrPkt(dst []byte, msg string) []byte {
	msg, _, _ = strings.Cut(msg, "\n")
	if max := PktDataMax - len("ERR \n"); len(msg) > max {
		msg = msg[:max]
	}
	b, _ := AppendPktString(dst, "ERR "+msg+"\n")
	return b
}

// Drain reads and discards the client's request on fd until a flush packet
// (untilFlush) or EOF, at most max bytes and at most until deadline, so the
// refusal is not lost to a TCP reset (a socket closed with unread input
// resets the connection, and the client's kernel may then discard what it
// had not yet read) and a relaying git-http-backend does not fail writing
// the request body. It returns the payload of the request's first pkt-line
// (nil when there was none). It never blocks past deadline.
func Drain(fd int, untilFlush bool, max int, deadline time.Time) (first []byte) {
	buf := make([]byte, 8192)
	var pending []byte // unparsed pkt-line bytes while still parsing
	parsing := true
	for total := 0; total < max; {
		left := time.Until(deadline)
		if left <= 0 || !readable(fd, left) {
			return first
		}
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if n <= 0 || err != nil {
			return first
		}
		total += n
		if !parsing {
			continue
		}
		pending = append(pending, buf[:n]...)
		for parsing {
			typ, payload, rest, err := ParsePkt(pending)
			if err == ErrPktLength {
				parsing = false // not pkt-lines
				break
			}
			if err != nil {
				break // need more bytes
			}
			pending = rest
			if first == nil && typ == PktData {
				first = append([]byte{}, payload...)
			}
			if typ == PktFlush && untilFlush {
				return first
			}
			if first != nil && !untilFlush {
				parsing = false // only the first packet was wanted
			}
		}
		if len(pending) > PktMax {
			parsing = false
		}
		if !parsing {
			pending = nil
			if untilFlush {
				return first
			}
		}
	}
	return first
}

// SidebandRequested reports whether a receive-pack request's first
// command line (payload of its first pkt-line) asks for side-band or
// side-band-64k: the answer is then multiplexed, and a refusal must be a
// band 3 ("fatal error") packet, since the client's demultiplexer reads a
// bare "ERR …" as band 'E'.
func SidebandRequested(first []byte) bool {
	_, caps, ok := strings.Cut(string(first), "\x00")
	if !ok {
		return false
	}
	for _, c := range strings.Fields(caps) {
		if c == "side-band" || c == "side-band-64k" {
			return true
		}
	}
	return false
}

// AppendBand3Pkt appends msg as a side-band fatal-error packet
// ("\x03" + msg + "\n"), which the client prints as "remote: msg".
func AppendBand3Pkt(dst []byte, msg string) []byte {
	msg, _, _ = strings.Cut(msg, "\n")
	if max := PktDataMax - len("\x03\n"); len(msg) > max {
		msg = msg[:max]
	}
	b, _ := AppendPktString(dst, "\x03"+msg+"\n")
	return b
}

// readable waits until fd has input (or EOF), at most d.
func readable(fd int, d time.Duration) bool {
	if fd < 0 || fd >= 1024 {
		return false
	}
	for {
		var set syscall.FdSet
		set.Bits[fd/64] |= 1 << (uint(fd) % 64)
		tv := syscall.NsecToTimeval(d.Nanoseconds())
		n, err := syscall.Select(fd+1, &set, nil, nil, &tv)
		if err == syscall.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}
