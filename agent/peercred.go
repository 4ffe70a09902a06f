package agent

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// PeerCred is what the kernel says about the process at the other end of a
// Unix socket (SO_PEERCRED), captured when the connection was accepted. The
// agent never trusts a pid, uid or gid that a request claims.
type PeerCred struct {
	PID int32
	UID uint32
	GID uint32
	// pidfd refers to the peer process itself (SO_PEERPIDFD, Linux 6.5+;
	// else pidfd_open at accept time), so a later check cannot be fooled by
	// the pid being reused; -1 when neither is available. Owned by the
	// connection: closed with it. Every signal the agent sends goes
	// through it (or pidfds proven from it), never through PID. Residual
	// risk on kernels before 6.5: the pidfd_open fallback runs at accept,
	// so a peer that connected and exited, and whose pid was reused before
	// the agent accepted, would be mistaken for its successor; with
	// SO_PEERPIDFD the kernel pins the process at connect time.
	pidfd int
}

// peerCred reads SO_PEERCRED (and a pidfd of the peer) from c.
func peerCred(c *net.UnixConn) (PeerCred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return PeerCred{}, err
	}
	var cred *unix.Ucred
	var serr error
	pidfd := -1
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if serr == nil {
			if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
				pidfd = pfd
			} else if pfd, err := unix.PidfdOpen(int(cred.Pid), 0); err == nil {
				pidfd = pfd
			}
		}
	}); err != nil {
		return PeerCred{}, err
	}
	if serr != nil {
		return PeerCred{}, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return PeerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, pidfd: pidfd}, nil
}

// alive reports whether the peer process still exists. With a pidfd the
// answer is about that very process, never a successor reusing its pid;
// without one it is kill(pid, 0), which delivers nothing (cgroup placement
// uses it as a best-effort check only).
func (p PeerCred) alive() bool {
	if p.pidfd >= 0 {
		return unix.PidfdSendSignal(p.pidfd, 0, nil, 0) == nil
	}
	return p.PID > 0 && unix.Kill(int(p.PID), 0) == nil
}

// close releases the pidfd.
func (p PeerCred) close() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
	}
}
