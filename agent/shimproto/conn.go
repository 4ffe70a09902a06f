package shimproto

import (
	"errors"
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// ErrTimeout is returned (wrapped) by Conn reads and writes that hit their
// deadline.
var ErrTimeout = errors.New("timed out")

// Conn is the shim's side of one admission connection, built on raw
// syscalls (no package net, no poller). Its descriptor is close-on-exec, so
// git never inherits the lease. A Conn is not safe for concurrent use.
type Conn struct {
	fd       int
	deadline time.Time // for reads and writes; zero = none
	buf      []byte
}

// Dial connects to the agent's Unix socket. timeout bounds the connect
// (it only blocks when the listen backlog is full) and is the initial read
// and write timeout.
func Dial(socket string, timeout time.Duration) (*Conn, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, errors.New("socket: " + err.Error())
	}
	c := &Conn{fd: fd}
	if timeout > 0 {
		tv := syscall.NsecToTimeval(int64(timeout))
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		c.deadline = time.Now().Add(timeout)
	}
	for {
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: socket})
		if err != syscall.EINTR {
			break
		}
	}
	if err == syscall.EISCONN {
		err = nil
	}
	if err != nil {
		syscall.Close(fd)
		if err == syscall.EAGAIN {
			return nil, errors.New("connect " + socket + ": " + ErrTimeout.Error() + " (backlog full)")
		}
		// Same text as before; callers match the errno (EACCES: not in
		// the socket group).
		return nil, &os.PathError{Op: "connect", Path: socket, Err: err}
	}
	return c, nil
}

// Fd returns the socket descriptor (for tests and diagnostics).
func (c *Conn) Fd() int { return c.fd }

// SetDeadline sets the deadline for following reads and writes; zero means
// none.
func (c *Conn) SetDeadline(t time.Time) { c.deadline = t }

// setTimeout programs SO_RCVTIMEO/SO_SNDTIMEO for the time left before the
// deadline; it reports false when the deadline has passed.
func (c *Conn) setTimeout(opt int) bool {
	var left time.Duration
	if !c.deadline.IsZero() {
		left = time.Until(c.deadline)
		if left <= 0 {
			return false
		}
	}
	tv := syscall.NsecToTimeval(int64(left))
	if left > 0 && tv.Sec == 0 && tv.Usec == 0 {
		tv.Usec = 1 // 0 would mean "no timeout"
	}
	syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, opt, &tv)
	return true
}

// Read implements io.Reader with the Conn's deadline. A timeout is an error
// wrapping ErrTimeout; end of stream is io.EOF.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if !c.setTimeout(syscall.SO_RCVTIMEO) {
			return 0, ErrTimeout
		}
		n, err := syscall.Read(c.fd, p)
		switch {
		case err == syscall.EINTR:
			continue // SO_RCVTIMEO reads are not restarted after a signal
		case err == syscall.EAGAIN:
			if !c.deadline.IsZero() && time.Until(c.deadline) > 0 {
				continue // woke early (timeval granularity)
			}
			return 0, ErrTimeout
		case err != nil:
			return 0, errors.New("read: " + err.Error())
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write writes all of p with the Conn's deadline, without SIGPIPE.
func (c *Conn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		if !c.setTimeout(syscall.SO_SNDTIMEO) {
			return done, ErrTimeout
		}
		n, err := send(c.fd, p[done:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return done, ErrTimeout
		case err != nil:
			return done, errors.New("write: " + err.Error())
		}
		done += n
	}
	return done, nil
}

// Admit sends Magic and req, then reads answers until Admitted or Rejected,
// calling onQueued (if non-nil) for each Queued. The first answer must arrive
// within FirstReplyTimeout, the final one before deadline. A timeout, EOF or
// malformed frame is an error: the caller applies its fail mode. After
// Admitted the connection is the lease: keep it open until Finish.
func (c *Conn) Admit(req *AdmitRequest, deadline time.Time, onQueued func(Queued)) (Reply, error) {
	return c.AdmitTicking(req, deadline, onQueued, 0, nil)
}

// AdmitTicking is Admit that, once queued, also calls onTick about every
// tick while no answer arrives (tick <= 0 or a nil onTick: never), so the
// caller can show progress. The wait is a poll(2) before each frame, so a
// tick never interrupts a frame half read.
func (c *Conn) AdmitTicking(req *AdmitRequest, deadline time.Time, onQueued func(Queued), tick time.Duration, onTick func()) (Reply, error) {
	b := append(c.buf[:0], Magic...)
	b = append(b, 0, 0, 0, 0)
	b = AppendAdmit(b, req)
	putLen(b[len(Magic):], len(b)-len(Magic)-4)
	c.buf = b
	first := time.Now().Add(FirstReplyTimeout)
	if first.After(deadline) {
		first = deadline
	}
	c.deadline = first
	if _, err := c.Write(b); err != nil {
		// An agent at its connection limit answers and closes without
		// reading: its answer may be waiting even though the write failed.
		if rep, ok := c.answerAfterClose(); ok {
			return rep, nil
		}
		return Reply{}, errors.New("send admit request: " + err.Error())
	}
	queued := false
	for {
		if queued && tick > 0 && onTick != nil {
			wait := min(tick, time.Until(c.deadline))
			if wait > 0 {
				ready, err := pollIn(c.fd, wait)
				if err != nil {
					return Reply{}, errors.New("wait for admission: poll: " + err.Error())
				}
				if !ready {
					onTick()
					continue
				}
			}
		}
		frame, err := ReadFrame(c, c.buf[:cap(c.buf)])
		if err != nil {
			if err == ErrTimeout && c.deadline.Equal(first) && first.Before(deadline) {
				return Reply{}, errors.New("no answer within " + FirstReplyTimeout.String())
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return Reply{}, errors.New("agent closed the connection")
			}
			return Reply{}, errors.New("wait for admission: " + err.Error())
		}
		c.buf = frame
		m, err := DecodeServerMsg(frame)
		if err != nil {
			return Reply{}, err
		}
		switch m.Kind {
		case ServerQueued:
			c.deadline = deadline
			queued = true
			if onQueued != nil {
				onQueued(m.Queued)
			}
		case ServerAdmitted, ServerRejected:
			return m.Reply, nil
		default:
			// An answer this version does not know: it proves the agent is
			// alive, so keep waiting up to the deadline.
			c.deadline = deadline
		}
	}
}

// answerAfterClose reads a final answer the agent sent before closing the
// connection, if there is one.
func (c *Conn) answerAfterClose() (Reply, bool) {
	c.deadline = time.Now().Add(100 * time.Millisecond)
	frame, err := ReadFrame(c, c.buf[:cap(c.buf)])
	if err != nil {
		return Reply{}, false
	}
	m, err := DecodeServerMsg(frame)
	if err != nil || (m.Kind != ServerRejected && m.Kind != ServerAdmitted) {
		return Reply{}, false
	}
	if m.Kind == ServerAdmitted {
		// A lease on a connection we could not write to is useless.
		return Reply{}, false
	}
	return m.Reply, true
}

// Finish reports how git ended. It waits at most a second: the lease is
// released when the connection closes anyway.
func (c *Conn) Finish(f *Finished) error {
	b := append(c.buf[:0], 0, 0, 0, 0)
	b = AppendFinished(b, f)
	putLen(b, len(b)-4)
	c.buf = b
	c.deadline = time.Now().Add(time.Second)
	_, err := c.Write(b)
	return err
}

// Close closes the connection, releasing the lease.
func (c *Conn) Close() error {
	if c.fd < 0 {
		return errors.New("close: already closed")
	}
	err := syscall.Close(c.fd)
	c.fd = -1
	return err
}

func putLen(b []byte, n int) {
	b[0], b[1], b[2], b[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
}

// send is send(2) with MSG_NOSIGNAL: a closed peer gives EPIPE, never
// SIGPIPE. (syscall.Sendto does not report partial writes.)
func send(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, errno := syscall.Syscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])),
		uintptr(len(p)), syscall.MSG_NOSIGNAL, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// pollFd is struct pollfd.
type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

// pollIn waits up to d for fd to become readable (or hung up); it reports
// false when d passed or a signal interrupted the wait.
func pollIn(fd int, d time.Duration) (bool, error) {
	const pollReadable = 0x1 // POLLIN
	p := pollFd{fd: int32(fd), events: pollReadable}
	ts := syscall.NsecToTimespec(int64(d))
	n, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&p)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	switch {
	case errno == syscall.EINTR:
		return false, nil
	case errno != 0:
		return false, errno
	}
	return n > 0, nil
}
