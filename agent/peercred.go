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
}

// peerCred reads SO_PEERCRED from c.
func peerCred(c *net.UnixConn) (PeerCred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return PeerCred{}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return PeerCred{}, err
	}
	if serr != nil {
		return PeerCred{}, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return PeerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}
