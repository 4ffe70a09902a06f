package shimproto

// The pack cache protocol (issue 18; the design is in agent/packcache's
// package doc). A shim running as uploadpack.packObjectsHook opens its own
// connection on the agent's socket with PackCacheMagic (first byte 'C', so
// the agent's dispatch tells it from gRPC 'P' and admission 'S'), sends a
// PackLookup frame and then exactly StdinLen bytes of pack-objects' stdin in
// frames of at most PackStdinChunk bytes. The agent answers with one
// PackAnswer frame; for Hit, Join and Write the frame carries one file
// descriptor (SCM_RIGHTS): read-only for Hit and Join, write-only for Write.
//
//   - Hit: the entry is complete; Size is its length. The agent closes the
//     connection after the answer.
//   - Join: a writer is still producing the entry; the reader streams what
//     is there and waits for one PackStatus frame (OK with the final Size,
//     or not OK: the writer failed).
//   - Write: this shim is the writer: it gets admitted as usual, runs
//     pack-objects, copies its stdout to its own stdout and to the
//     descriptor (at most MaxBytes), and sends one PackStatus frame. The
//     connection closing without one means the writer failed.
//   - Bypass: run pack-objects as if there were no cache; Message says why.
//
// The encoding is protobuf-compatible like the admission messages, built by
// hand so the shim links no protobuf.

import (
	"errors"
	"strings"
	"syscall"
	"time"
)

// PackCacheMagic opens a pack cache connection.
const PackCacheMagic = "CACHE/1\n"

// PackStdinChunk is the largest stdin chunk per frame.
const PackStdinChunk = 60 << 10

// MaxPackStdin bounds the stdin a shim sends for a key; a larger one (a
// fetch with tens of thousands of haves) bypasses the cache.
const MaxPackStdin = 8 << 20

// Answer kinds.
const (
	PackHit    int32 = 1
	PackJoin   int32 = 2
	PackWrite  int32 = 3
	PackBypass int32 = 4
)

// PackLookup is the first frame of a pack cache connection.
type PackLookup struct {
	ObjDir   []byte   // field 1: resolved object directory
	Args     [][]byte // field 2: pack-objects arguments that change the output, in order
	Env      [][]byte // field 3: NAME=value entries that may change the output, sorted
	StdinLen int64    // field 4: bytes of stdin that follow
}

// PackAnswer is the agent's answer to a PackLookup.
type PackAnswer struct {
	Kind     int32  // field 1
	Size     int64  // field 2: Hit: the entry's length
	MaxBytes int64  // field 3: Write: stop writing the entry beyond this
	Message  string // field 4: Bypass: why
}

// PackStatus ends an entry: the agent tells joined readers, the writer tells
// the agent.
type PackStatus struct {
	OK      bool   // field 1
	Size    int64  // field 2
	Message string // field 3
}

// AppendPackLookup appends l's encoding (no frame header).
func AppendPackLookup(b []byte, l *PackLookup) []byte {
	b = appendBytes(b, 1, l.ObjDir)
	for _, a := range l.Args {
		b = appendTag(b, 2, wireLen)
		b = appendVarint(b, uint64(len(a)))
		b = append(b, a...)
	}
	for _, e := range l.Env {
		b = appendTag(b, 3, wireLen)
		b = appendVarint(b, uint64(len(e)))
		b = append(b, e...)
	}
	return appendInt(b, 4, l.StdinLen)
}

// DecodePackLookup decodes a PackLookup frame.
func DecodePackLookup(b []byte) (PackLookup, error) {
	var l PackLookup
	d := decoder{b: b}
	for {
		num, typ, ok := d.next()
		if !ok {
			break
		}
		switch num {
		case 1:
			if v, ok := d.lenField(num, typ); ok {
				l.ObjDir = v
			}
		case 2:
			if v, ok := d.lenField(num, typ); ok {
				l.Args = append(l.Args, v)
			}
		case 3:
			if v, ok := d.lenField(num, typ); ok {
				l.Env = append(l.Env, v)
			}
		case 4:
			if v, ok := d.intField(num, typ); ok {
				l.StdinLen = int64(v)
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	if d.err != nil {
		return PackLookup{}, d.err
	}
	if l.StdinLen < 0 || l.StdinLen > MaxPackStdin {
		return PackLookup{}, errors.New("wire: pack lookup stdin length out of range")
	}
	return l, nil
}

// AppendPackAnswer appends a's encoding.
func AppendPackAnswer(b []byte, a *PackAnswer) []byte {
	b = appendInt(b, 1, int64(a.Kind))
	b = appendInt(b, 2, a.Size)
	b = appendInt(b, 3, a.MaxBytes)
	return appendString(b, 4, a.Message)
}

// DecodePackAnswer decodes a PackAnswer frame.
func DecodePackAnswer(b []byte) (PackAnswer, error) {
	var a PackAnswer
	d := decoder{b: b}
	for {
		num, typ, ok := d.next()
		if !ok {
			break
		}
		switch num {
		case 1:
			if v, ok := d.intField(num, typ); ok {
				a.Kind = int32(v)
			}
		case 2:
			if v, ok := d.intField(num, typ); ok {
				a.Size = int64(v)
			}
		case 3:
			if v, ok := d.intField(num, typ); ok {
				a.MaxBytes = int64(v)
			}
		case 4:
			if v, ok := d.lenField(num, typ); ok {
				a.Message = string(v)
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	return a, d.err
}

// AppendPackStatus appends s's encoding.
func AppendPackStatus(b []byte, s *PackStatus) []byte {
	b = appendBool(b, 1, s.OK)
	b = appendInt(b, 2, s.Size)
	return appendString(b, 3, s.Message)
}

// DecodePackStatus decodes a PackStatus frame.
func DecodePackStatus(b []byte) (PackStatus, error) {
	var s PackStatus
	d := decoder{b: b}
	for {
		num, typ, ok := d.next()
		if !ok {
			break
		}
		switch num {
		case 1:
			if v, ok := d.intField(num, typ); ok {
				s.OK = v != 0
			}
		case 2:
			if v, ok := d.intField(num, typ); ok {
				s.Size = int64(v)
			}
		case 3:
			if v, ok := d.lenField(num, typ); ok {
				s.Message = string(v)
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	return s, d.err
}

// PackCacheLookup sends l and stdin on a new connection c (from Dial) and
// reads the answer within timeout. fd is the descriptor that came with the
// answer (close-on-exec), or -1.
func (c *Conn) PackCacheLookup(l *PackLookup, stdin []byte, timeout time.Duration) (a PackAnswer, fd int, err error) {
	l.StdinLen = int64(len(stdin))
	b := append(c.buf[:0], PackCacheMagic...)
	b = append(b, 0, 0, 0, 0)
	b = AppendPackLookup(b, l)
	putLen(b[len(PackCacheMagic):], len(b)-len(PackCacheMagic)-4)
	c.buf = b
	c.deadline = time.Now().Add(timeout)
	if _, err := c.Write(b); err != nil {
		return a, -1, errors.New("send pack lookup: " + err.Error())
	}
	var hdr [4]byte
	for len(stdin) > 0 {
		n := min(len(stdin), PackStdinChunk)
		putLen(hdr[:], n)
		if _, err := c.Write(hdr[:]); err != nil {
			return a, -1, errors.New("send pack lookup: " + err.Error())
		}
		if _, err := c.Write(stdin[:n]); err != nil {
			return a, -1, errors.New("send pack lookup: " + err.Error())
		}
		stdin = stdin[n:]
	}
	frame, fd, err := c.readFrameFD()
	if err != nil {
		return a, -1, errors.New("read pack cache answer: " + err.Error())
	}
	a, err = DecodePackAnswer(frame)
	if err != nil {
		if fd >= 0 {
			syscall.Close(fd)
		}
		return a, -1, err
	}
	return a, fd, nil
}

// readFrameFD reads one small frame with recvmsg, keeping a descriptor
// passed with it.
func (c *Conn) readFrameFD() ([]byte, int, error) {
	buf := make([]byte, 1024)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	fd := -1
	have := 0
	for {
		if !c.setTimeout(syscall.SO_RCVTIMEO) {
			return nil, fd, ErrTimeout
		}
		n, oobn, _, _, err := syscall.Recvmsg(c.fd, buf[have:], oob, syscall.MSG_CMSG_CLOEXEC)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return nil, fd, ErrTimeout
		}
		if err != nil {
			return nil, fd, err
		}
		if oobn > 0 {
			if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					fds, err := syscall.ParseUnixRights(&m)
					if err != nil {
						continue
					}
					for _, f := range fds {
						if fd < 0 {
							fd = f
						} else {
							syscall.Close(f)
						}
					}
				}
			}
		}
		if n == 0 {
			return nil, fd, errors.New("agent closed the connection")
		}
		have += n
		if have >= 4 {
			l := int(uint32(buf[0])<<24 | uint32(buf[1])<<16 | uint32(buf[2])<<8 | uint32(buf[3]))
			if l > len(buf)-4 {
				return nil, fd, errors.New("answer frame too large")
			}
			if have >= 4+l {
				return buf[4 : 4+l], fd, nil
			}
		}
	}
}

// PackStatusWait waits up to d for the agent's PackStatus. ready is false
// when none came in time; an error means the connection broke (the entry's
// fate is unknown: treat as failed).
func (c *Conn) PackStatusWait(d time.Duration) (s PackStatus, ready bool, err error) {
	ok, err := pollIn(c.fd, d)
	if err != nil {
		return s, false, err
	}
	if !ok {
		return s, false, nil
	}
	c.deadline = time.Now().Add(time.Second)
	frame, err := ReadFrame(c, c.buf[:cap(c.buf)])
	if err != nil {
		return s, false, err
	}
	s, err = DecodePackStatus(frame)
	return s, err == nil, err
}

// SendPackStatus sends the writer's PackStatus.
func (c *Conn) SendPackStatus(s *PackStatus) error {
	b := append(c.buf[:0], 0, 0, 0, 0)
	b = AppendPackStatus(b, s)
	putLen(b, len(b)-4)
	c.buf = b
	c.deadline = time.Now().Add(time.Second)
	_, err := c.Write(b)
	return err
}

// PackKeyArg reports whether a pack-objects argument belongs in the cache
// key. Only progress switches are left out: they change stderr, never the
// pack on stdout, so a client asking for progress shares with one that
// does not. Every other argument, known or not, is in the key.
func PackKeyArg(arg string) bool {
	switch arg {
	case "--progress", "-q", "--quiet", "--all-progress", "--all-progress-implied":
		return false
	}
	return true
}

// PackKeyEnv reports whether an environment entry ("NAME=value") belongs in
// the cache key: every GIT_* variable (they can change which objects are
// selected: GIT_NAMESPACE, GIT_NO_REPLACE_OBJECTS, GIT_REPLACE_REF_BASE,
// GIT_GRAFT_FILE, GIT_CONFIG_PARAMETERS, GIT_CONFIG_COUNT/KEY/VALUE,
// GIT_ALTERNATE_OBJECT_DIRECTORIES, GIT_PROTOCOL …) except those that only
// describe the caller or its tracing and vary from one request to the next:
// GIT_TRACE*, GIT_HTTP_* (user agent), GIT_COMMITTER_*/GIT_AUTHOR_*
// (http-backend fills them from REMOTE_USER) and GIT_REFLOG_ACTION.
// Nothing outside GIT_* is in the key: REMOTE_ADDR, SSH_CONNECTION,
// CORRELATION_ID, SLUICE_* and the like name the client, not the pack.
func PackKeyEnv(kv string) bool {
	if !strings.HasPrefix(kv, "GIT_") {
		return false
	}
	for _, p := range [...]string{"GIT_TRACE", "GIT_HTTP_", "GIT_COMMITTER_", "GIT_AUTHOR_", "GIT_REFLOG_ACTION="} {
		if strings.HasPrefix(kv, p) {
			return false
		}
	}
	return true
}
