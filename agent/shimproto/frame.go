package shimproto

import (
	"errors"
	"io"
	"strconv"
	"time"
)

// Magic opens every shim connection; its first byte 'S' tells the agent this
// is not gRPC (whose HTTP/2 preface starts with 'P').
const Magic = "SLUICE/1\n"

// MaxFrame is the largest frame payload either side accepts.
const MaxFrame = 64 << 10

// FirstReplyTimeout is how long a client waits for the server's first answer
// (Queued, Admitted or Rejected) to an AdmitRequest. An agent that accepts a
// connection but never answers must not hang git longer than this; an agent
// that queues the request answers with Queued at once.
const FirstReplyTimeout = time.Second

// ErrFrameTooLarge is returned by ReadFrame for a length prefix above MaxFrame.
var ErrFrameTooLarge = errors.New("frame larger than " + strconv.Itoa(MaxFrame) + " bytes")

// ReadFrame reads one frame from r and returns its payload. It reuses buf
// when it is large enough. A clean EOF before the length prefix is io.EOF; an
// EOF inside a frame is io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader, buf []byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := uint32(hdr[0])<<24 | uint32(hdr[1])<<16 | uint32(hdr[2])<<8 | uint32(hdr[3])
	if n > MaxFrame {
		return nil, ErrFrameTooLarge
	}
	if uint32(cap(buf)) >= n {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// AppendFrame appends the length prefix and msg to dst. It does not check
// MaxFrame: writers build only small messages. (encoding/binary is not
// used because it links reflect into the shim.)
func AppendFrame(dst, msg []byte) []byte {
	n := uint32(len(msg))
	dst = append(dst, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	return append(dst, msg...)
}
