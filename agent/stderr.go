package agent

// stderr.go: telling a command on its own stderr why it was stopped.
//
// The agent is root and the command is not. The line goes only through the
// very open file description the command holds as fd 2 (pidfd_getfd), and
// only when that description was opened for writing: the kernel checked the
// command's right to write when the command (or its parent) opened it.
// Reopening a path (/proc/PID/fd/2 or /proc/self/fd/N) would instead be a
// new open by root, which succeeds on a file the command could only read.
//
// Only these kinds of descriptions are written to:
//   - pipes and FIFOs, sockets (send with MSG_DONTWAIT|MSG_NOSIGNAL);
//   - terminals and /dev/null (a char device that answers TCGETS, or 1:3);
//   - regular files without set-user/group-ID bits (a write by root keeps
//     those bits where the command's own write would clear them) and not
//     on a kernel pseudo file system (proc, sysfs, cgroup, debugfs, ...,
//     whose files may check the writer's privileges at write time).
//
// Never blocking the agent: the description is shared with the command, so
// setting O_NONBLOCK on it would change the command's (and its parent's)
// flags; the agent does not. Instead it writes only when poll(2) says the
// descriptor is writable now, writes one line of at most PIPE_BUF bytes
// (atomic on a pipe), and does the write on its own goroutine with a
// bound (stderrWriteWait). A write that still blocks (a terminal stopped
// by ^S, a FUSE file) is abandoned; at most maxStuckWrites such goroutines
// exist at once, after which messages are dropped.

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// stderrWriteWait bounds how long a timeout waits for its message.
	stderrWriteWait = 500 * time.Millisecond
	// maxStuckWrites bounds the goroutines left blocked in write(2).
	maxStuckWrites = 8
	// maxStderrLine bounds the line (PIPE_BUF: atomic on a pipe).
	maxStderrLine = 4096
)

// stuckWrites counts writes to callers' stderr still in progress.
var stuckWrites atomic.Int32

// tellStderr writes msg to the peer's standard error (see above).
func tellStderr(w *deadlines, msg string) error {
	if w.pidfd < 0 {
		return errNoPidfd
	}
	fd, err := unix.PidfdGetfd(w.pidfd, 2, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd of fd 2: %w", err)
	}
	return writeCallerFD(fd, msg)
}

// writeCallerFD writes msg to fd, a duplicate of a caller's descriptor,
// and closes fd.
func writeCallerFD(fd int, msg string) error {
	if len(msg) > maxStderrLine {
		msg = msg[:maxStderrLine-1] + "\n"
	}
	kind, err := callerFDKind(fd)
	if err != nil {
		unix.Close(fd)
		return err
	}
	if kind == unix.S_IFSOCK {
		defer unix.Close(fd)
		_, err := unix.SendmsgN(fd, []byte(msg), nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	if n, err := unix.Poll(pfd, 0); err != nil || n == 0 || pfd[0].Revents&unix.POLLOUT == 0 {
		unix.Close(fd)
		if err == nil {
			err = errors.New("not writable now (a full pipe or a stopped terminal); message dropped")
		}
		return err
	}
	if stuckWrites.Add(1) > maxStuckWrites {
		stuckWrites.Add(-1)
		unix.Close(fd)
		return errors.New("too many earlier stderr writes still blocked; message dropped")
	}
	done := make(chan error, 1)
	go func() {
		defer stuckWrites.Add(-1)
		defer unix.Close(fd)
		for {
			_, err := unix.Write(fd, []byte(msg))
			if err == unix.EINTR {
				continue
			}
			done <- err
			return
		}
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(stderrWriteWait):
		return fmt.Errorf("write did not complete within %v; abandoned", stderrWriteWait)
	}
}

// Kernel pseudo file systems whose files are never written to.
var pseudoFS = map[int64]string{
	unix.PROC_SUPER_MAGIC: "proc", unix.SYSFS_MAGIC: "sysfs", unix.CGROUP_SUPER_MAGIC: "cgroup",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2", unix.DEBUGFS_MAGIC: "debugfs", unix.TRACEFS_MAGIC: "tracefs",
	unix.SECURITYFS_MAGIC: "securityfs", unix.BPF_FS_MAGIC: "bpf", 0x62656570: "configfs",
	unix.EFIVARFS_MAGIC: "efivarfs", unix.SELINUX_MAGIC: "selinuxfs", unix.PSTOREFS_MAGIC: "pstore",
	unix.SMACK_MAGIC: "smackfs",
}

// callerFDKind checks that fd was opened for writing and is of a kind the
// agent writes to (see the top of this file); it returns its file type.
func callerFDKind(fd int) (uint32, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return 0, err
	}
	if fl&unix.O_PATH != 0 {
		return 0, errors.New("stderr is an O_PATH descriptor; not written")
	}
	if acc := fl & unix.O_ACCMODE; acc != unix.O_WRONLY && acc != unix.O_RDWR {
		return 0, errors.New("stderr is not open for writing; not written (the agent never reopens it)")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	kind := st.Mode & unix.S_IFMT
	switch kind {
	case unix.S_IFIFO, unix.S_IFSOCK:
		return kind, nil
	case unix.S_IFCHR:
		if unix.Major(st.Rdev) == 1 && unix.Minor(st.Rdev) == 3 {
			return kind, nil // /dev/null
		}
		if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
			return kind, nil
		}
		return 0, fmt.Errorf("stderr is a character device %d:%d that is not a terminal; not written", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	case unix.S_IFREG:
		if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			return 0, fmt.Errorf("stderr is a set-user/group-ID file (mode %04o); not written", st.Mode&0o7777)
		}
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(fd, &sfs); err != nil {
			return 0, err
		}
		if name, ok := pseudoFS[int64(sfs.Type)]; ok {
			return 0, fmt.Errorf("stderr is a file on %s; not written", name)
		}
		return kind, nil
	}
	return 0, fmt.Errorf("stderr is of type %#o; not written", kind)
}
