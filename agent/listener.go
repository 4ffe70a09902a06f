package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SocketOptions say where and how to create the admission socket.
type SocketOptions struct {
	// Path of the socket.
	Path string
	// Group that may connect: the socket is 0660 and, if the agent creates
	// the directory, it is 0750, both owned by this group. "" keeps the
	// agent's own group.
	Group string
}

// Socket is the admission socket, listening.
type Socket struct {
	ln *net.UnixListener
	// Path is where clients connect.
	Path string
	ino  uint64 // identifies our socket file, so shutdown never removes a successor's
}

// Close stops listening and removes the socket file if it is still ours.
// Serve does this itself; Close is for a socket that is never served.
func (s *Socket) Close() error {
	err := s.ln.Close()
	removeSocketIfOurs(s.Path, s.ino)
	return err
}

// Listen creates the admission socket. It refuses to replace a socket that
// another live agent answers on, removes a stale one, and sets mode and
// group before the socket appears under its final name (it listens on a
// temporary name, then renames), so no client ever sees it with the wrong
// permissions.
func Listen(opts SocketOptions) (*Socket, error) {
	path := opts.Path
	gid := -1
	if opts.Group != "" {
		g, err := lookupGroup(opts.Group)
		if err != nil {
			return nil, fmt.Errorf("[agent] socket_group = %q: %v; create the group or set socket_group to an existing one", opts.Group, err)
		}
		gid = g
	}
	// The directory is checked (and created) without following symlinks;
	// an unsafe one is refused (safedir.go). Once checked, no other user can
	// change what is in it, so the names below are safe to use.
	dfd, err := openTrustedDir(filepath.Dir(path), dirRole{what: "socket directory", mode: 0o750, gid: gid})
	if err != nil {
		return nil, err
	}
	unix.Close(dfd)
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*Socket, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o660); err != nil {
		return fail(err)
	}
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return fail(fmt.Errorf("chown socket: %w", err))
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("move socket into place at %s: %w", path, err))
	}
	return &Socket{ln: ln, Path: path, ino: inodeOf(path)}, nil
}

// removeStaleSocket removes path if it is a socket nobody answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; move it away or set [agent] socket (or SLUICE_SOCKET) to another path", path)
	}
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err == nil {
		c.Close()
		return fmt.Errorf("another sluiced is already serving %s; stop it first (systemctl stop sluiced) or set SLUICE_SOCKET to another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket %s: %w; remove it if no agent uses it", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

func lookupGroup(name string) (int, error) {
	if id, err := strconv.Atoi(name); err == nil {
		return id, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

// removeSocketIfOurs unlinks path if it is still the socket ln created
// (same inode), so a stopping agent never removes a successor's socket.
func removeSocketIfOurs(path string, ino uint64) {
	fi, err := os.Lstat(path)
	if err != nil {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Ino == ino {
		os.Remove(path)
	}
}

func inodeOf(path string) uint64 {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// RemoveRuntimeDir removes what the agent put in dir — shim.conf, the
// stopping mark, an empty leases/ — and dir itself, once the socket is gone (Serve removes it). It
// is for a directory the agent created; a lease record still in leases/
// (a command that outlives the agent, for the next agent to adopt) keeps
// everything. dir was checked at Listen (owned by the agent, writable by
// nobody else), so the names in it are the agent's.
func RemoveRuntimeDir(dir string) error {
	if err := os.Remove(filepath.Join(dir, "leases")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: commands still running keep their records: %w", dir, err)
	}
	// The stopping mark tells shims a restart is under way; a directory
	// going away is no restart: they apply fail_mode at once.
	for _, name := range []string{"shim.conf", StoppingMark} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return os.Remove(dir)
}
