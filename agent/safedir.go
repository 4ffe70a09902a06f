package agent

// safedir.go: the directories and files the agent trusts.
//
// The agent runs as root and keeps its socket, shim.conf and leases/ (the
// restart state) in one directory, /run/sluice by default. Whoever can
// write there can make the agent trust a lease record (and so hold a slot
// or signal a process it names), or swap a symlink in so that a write by
// root lands in /etc. So:
//
//   - Every directory on the path is opened one component at a time with
//     openat(O_NOFOLLOW|O_DIRECTORY) relative to its already-checked parent
//     and fstat'ed: a symlink anywhere is refused, and what was checked is
//     what is used (no check-then-open race on a path).
//   - Ancestors (/, /run, /tmp, ...) must be owned by root or the agent's
//     uid and not writable by group or others unless sticky (/tmp is fine:
//     nobody else can rename or remove an entry they do not own there).
//   - The socket directory itself must be owned by the agent's uid and not
//     writable by group or others. It may be group-readable and
//     -searchable: that is how socket_group reaches the socket. When it
//     does not exist the agent creates it 0750 (group socket_group). When it
//     exists with another owner or a group/other-writable mode the agent
//     refuses to start, naming the path, owner, mode and the fix: it does
//     not chmod it, since whatever another user could put there while it
//     was writable would then be trusted. systemd's RuntimeDirectory=
//     (owner User=, RuntimeDirectoryMode=0750 in the shipped unit) and a
//     tmpfiles.d line "d /run/sluice 0750 root <group>" both pass.
//   - leases/ must be owned by the agent's uid and not writable by group or
//     others (the agent creates it 0700). It is held open for the agent's
//     life; every state file is created, read and removed relative to that
//     descriptor: openat(O_CREAT|O_EXCL|O_NOFOLLOW) of a temporary name
//     then renameat2(RENAME_NOREPLACE) to write (atomic: a reader sees the
//     whole record or none),
//     openat(O_NOFOLLOW|O_NONBLOCK) then fstat to read, unlinkat to remove.
//   - A state file is adopted only when it is a regular file with one link,
//     owned by the agent's uid and not writable by group or others: a file
//     the agent itself could have written.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// dirRole says how strictly openTrustedDir checks the last component.
type dirRole struct {
	what string // "socket directory", "state directory": for messages
	mode uint32 // mode to create it with
	gid  int    // group to give it when created; -1 keeps the agent's
}

// errUnsafe marks an unsafe directory or file: the agent refuses it.
var errUnsafe = errors.New("unsafe")

// unsafeError is an operator-facing refusal.
type unsafeError struct{ msg string }

func (e *unsafeError) Error() string        { return e.msg }
func (e *unsafeError) Is(target error) bool { return target == errUnsafe }

// openTrustedDir opens path (creating its last component if missing) as
// described at the top of this file and returns an O_RDONLY|O_DIRECTORY
// descriptor of it.
func openTrustedDir(path string, role dirRole) (int, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return -1, err
	}
	abs = filepath.Clean(abs)
	euid := uint32(os.Geteuid())
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	parts := strings.Split(strings.TrimPrefix(abs, "/"), "/")
	if abs == "/" {
		parts = nil
	}
	cur := "/"
	for i, name := range parts {
		last := i == len(parts)-1
		next := filepath.Join(cur, name)
		created := false
		nfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			// Missing: create it; a missing ancestor gets 0755 like mkdir -p.
			mode := uint32(0o755)
			if last {
				mode = role.mode
			}
			merr := unix.Mkdirat(fd, name, mode)
			if merr != nil && !errors.Is(merr, unix.EEXIST) {
				unix.Close(fd)
				return -1, fmt.Errorf("create %s %s: %w", role.what, next, merr)
			}
			created = merr == nil
			nfd, err = unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		unix.Close(fd)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return -1, &unsafeError{fmt.Sprintf("%s: %s is a symlink or not a directory; the agent never follows symlinks there: remove it (rm %s) or set [agent] socket to another path", role.what, next, next)}
		}
		if err != nil {
			return -1, fmt.Errorf("open %s %s: %w", role.what, next, err)
		}
		fd = nfd
		if created && last {
			// The umask may have narrowed the mode; the group is socket_group.
			if err := unix.Fchmod(fd, role.mode); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("chmod %s %s: %w", role.what, next, err)
			}
			if role.gid >= 0 {
				if err := unix.Fchown(fd, -1, role.gid); err != nil {
					unix.Close(fd)
					return -1, fmt.Errorf("chown %s %s: %w", role.what, next, err)
				}
			}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, err
		}
		if msg := checkDirStat(&st, euid, last); msg != "" {
			unix.Close(fd)
			return -1, &unsafeError{fmt.Sprintf("%s: %s is %s; %s", role.what, next, describeOwner(&st), fixFor(next, msg, euid, last))}
		}
		cur = next
	}
	return fd, nil
}

// checkDirStat says what is wrong with a directory's owner or mode ("" for
// nothing): "owner" or "mode". last is the directory the agent keeps its
// files in; the others are its ancestors.
func checkDirStat(st *unix.Stat_t, euid uint32, last bool) string {
	if last {
		if st.Uid != euid {
			return "owner"
		}
		if st.Mode&0o022 != 0 {
			return "mode"
		}
		return ""
	}
	if st.Uid != 0 && st.Uid != euid {
		return "owner"
	}
	if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return "mode"
	}
	return ""
}

// describeOwner says "owned by uid U gid G, mode 0MMM".
func describeOwner(st *unix.Stat_t) string {
	return fmt.Sprintf("owned by uid %d gid %d with mode %04o", st.Uid, st.Gid, st.Mode&0o7777)
}

func fixFor(path, what string, euid uint32, last bool) string {
	if last {
		if what == "owner" {
			return fmt.Sprintf("it must belong to the agent's user (uid %d) and not be writable by group or others, or another user could plant files the agent trusts: remove it and let sluiced create it, or chown %d %s && chmod go-w %s", euid, euid, path, path)
		}
		return fmt.Sprintf("it must not be writable by group or others, or another user could plant files the agent trusts: chmod go-w %s (RuntimeDirectoryMode=0750 or a tmpfiles.d mode of 0750)", path)
	}
	if what == "owner" {
		return fmt.Sprintf("every directory above the socket must belong to root or the agent's user (uid %d), or its owner could replace what the agent trusts: set [agent] socket to a path under root-owned directories", euid)
	}
	return fmt.Sprintf("every directory above the socket must not be writable by group or others (unless sticky, like /tmp): chmod go-w %s, or set [agent] socket to another path", path)
}

// checkTrustedFile says why the file described by st cannot be trusted
// as the agent's own ("" when it can): a regular file with one link,
// owned by euid, not writable by group or others.
func checkTrustedFile(st *unix.Stat_t, euid uint32) string {
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return fmt.Sprintf("not a regular file (type %#o)", st.Mode&unix.S_IFMT)
	case st.Uid != euid:
		return fmt.Sprintf("owned by uid %d, not the agent's uid %d", st.Uid, euid)
	case st.Mode&0o022 != 0:
		return fmt.Sprintf("writable by group or others (mode %04o)", st.Mode&0o7777)
	case st.Nlink != 1:
		return fmt.Sprintf("has %d links", st.Nlink)
	}
	return ""
}

// readTrustedFile reads at most max bytes of name in the directory dirfd,
// refusing a symlink (O_NOFOLLOW), a FIFO or device (O_NONBLOCK, then the
// type check) and a file the agent could not have written.
func readTrustedFile(dirfd int, name string, max int) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, &unsafeError{"a symlink; not followed"}
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if why := checkTrustedFile(&st, uint32(os.Geteuid())); why != "" {
		return nil, &unsafeError{why}
	}
	buf := make([]byte, max+1)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	if n > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return buf[:n], nil
}

// tmpSuffix ends the name of a state file being written (writeAtomic);
// Recover removes leftovers.
const tmpSuffix = ".tmp"

// writeAtomic writes b as name in dirfd with mode 0600, all or nothing:
// it writes a temporary file name+".tmp" (O_CREAT|O_EXCL|O_NOFOLLOW:
// never following or reusing anything) and renames it to name relative
// to the same descriptor (RENAME_NOREPLACE: never over an existing file).
// A reader therefore sees no file or the whole record, never a torn or
// empty one; on any error nothing is left behind.
func writeAtomic(dirfd int, name string, b []byte) error {
	tmp := name + tmpSuffix
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		unix.Close(fd)
		_ = unix.Unlinkat(dirfd, tmp, 0)
		return err
	}
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fail(err)
		}
		b = b[n:]
	}
	if err := unix.Close(fd); err != nil {
		_ = unix.Unlinkat(dirfd, tmp, 0)
		return err
	}
	if err := unix.Renameat2(dirfd, tmp, dirfd, name, unix.RENAME_NOREPLACE); err != nil {
		_ = unix.Unlinkat(dirfd, tmp, 0)
		return err
	}
	return nil
}
