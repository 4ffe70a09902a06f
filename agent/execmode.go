package agent

import (
	"os"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// Exec-in-place mode.
//
// In supervising mode the shim stays alive as the parent of git, holds the
// lease by its connection and reports what git used. In exec mode the shim
// execs the real git in its own pid after admission, so no shim stays
// resident; the agent then holds the lease by that process (a pidfd taken
// from the socket's peer credentials, never from the request) and learns
// how it ended from the kernel: the eBPF tracer reports the exit of the
// whole thread group with exactly what wait4(2) would have reported (CPU
// of every thread and every reaped child, max RSS, exit status).
//
// The agent offers exec mode only when a tracer runs and the shim says it
// can exec (AdmitRequest.can_exec); otherwise supervising mode applies.

// ProcessTracer follows processes in the kernel from admission to exit.
// The eBPF tracer implements it (wired up by sluiced).
type ProcessTracer interface {
	// Track reports pid's exit, and marks processes it forks from now on as
	// its descendants. It returns the tracked root pid already descended
	// from (e.g. the upload-pack of a pack-objects hook), or 0.
	Track(pid int) (previousRoot int, err error)
	// Untrack stops tracking pid.
	Untrack(pid int)
}

// ProcessExit is how a tracked process ended, as the kernel saw it.
type ProcessExit struct {
	PID int
	// User and System are the CPU of all its threads and reaped children.
	User, System time.Duration
	MaxRSSKiB    int64
	// ExitCode is the exit status, -1 when killed by Signal.
	ExitCode int
	Signal   int
	End      time.Time
}

// exitEventGrace is how long a lease whose process is gone (pidfd readable)
// waits for the tracer's exit event before it is released without one.
const exitEventGrace = 250 * time.Millisecond

// execLease is the agent's hold on a process admitted in exec mode.
type execLease struct {
	pid  int
	exit chan ProcessExit // buffered: the tracer never blocks
	// pidfd is a duplicate of the peer's pidfd, owned by the lease; nil
	// when the kernel gave none (exit is then known from the tracer only).
	pidfd *os.File
	// parent is the exec lease this one descends from (a pack-objects
	// hook under an admitted upload-pack), nil when none.
	parent *execLease

	// nested is the CPU of descendant leases, reported separately and so
	// subtracted from this one's; guarded by Agent.execMu.
	nestedUser, nestedSystem time.Duration
}

// startExec puts adm's process under the tracer and registers it, so the
// shim can be told to exec in place. It returns false (supervising mode)
// when the tracer cannot follow it.
func (a *Agent) startExec(adm *admission, peer PeerCred) bool {
	pid := int(peer.PID)
	var pidfd *os.File
	if peer.pidfd >= 0 {
		fd, err := unix.FcntlInt(uintptr(peer.pidfd), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			if err := unix.SetNonblock(fd, true); err == nil {
				pidfd = os.NewFile(uintptr(fd), "pidfd")
			} else {
				unix.Close(fd)
			}
		}
	}
	prev, err := a.tracer.Track(pid)
	if err != nil {
		if pidfd != nil {
			pidfd.Close()
		}
		a.log.Warn("exec mode: cannot trace the process; it runs supervised", append(a.leaseFields(adm.lease), zap.Error(err))...)
		return false
	}
	el := &execLease{pid: pid, exit: make(chan ProcessExit, 1), pidfd: pidfd}
	a.execMu.Lock()
	if prev != 0 {
		el.parent = a.execLeases[prev]
	}
	a.execLeases[pid] = el
	a.execMu.Unlock()
	adm.exec = el
	return true
}

// ProcessExited delivers the tracer's report of a process's end. Exits of
// processes without an exec lease are ignored.
func (a *Agent) ProcessExited(e ProcessExit) {
	a.execMu.Lock()
	el := a.execLeases[e.PID]
	a.execMu.Unlock()
	if el == nil {
		return
	}
	select {
	case el.exit <- e:
	default:
	}
}

// holdExec waits until the process admitted in exec mode exits and
// returns how it ended (nil when the process is gone without an exit
// event). ok is false when the agent is shutting down first: the process
// keeps running and the lease is left for the next agent to adopt.
func (a *Agent) holdExec(adm *admission) (fin *admitpb.Finished, ok bool) {
	el := adm.exec
	gone := make(chan struct{})
	if el.pidfd != nil {
		go func() {
			waitReadable(el.pidfd)
			close(gone)
		}()
	}
	var e ProcessExit
	select {
	case e = <-el.exit:
	case <-gone:
		select {
		case e = <-el.exit:
		case <-time.After(exitEventGrace):
			a.log.Warn("exec mode: the process exited but the tracer reported no exit; its CPU is not recorded",
				a.leaseFields(adm.lease)...)
			return nil, true
		}
	case <-a.stopping.Done():
		return nil, false
	}
	user, sys := e.User, e.System
	a.execMu.Lock()
	user -= el.nestedUser
	sys -= el.nestedSystem
	if p := el.parent; p != nil {
		p.nestedUser += e.User
		p.nestedSystem += e.System
	}
	a.execMu.Unlock()
	real := e.End.Sub(adm.admitted)
	return &admitpb.Finished{
		ExitCode:   int32(e.ExitCode),
		Signal:     int32(e.Signal),
		UserUsec:   max(user, 0).Microseconds(),
		SystemUsec: max(sys, 0).Microseconds(),
		MaxRssKib:  e.MaxRSSKiB,
		RealUsec:   max(real, 0).Microseconds(),
	}, true
}

// runExec holds an exec-mode lease to its end (see holdExec).
func (a *Agent) runExec(adm *admission) {
	fin, ok := a.holdExec(adm)
	if ok {
		a.finish(adm, fin)
		return
	}
	a.abandon(adm)
}

// abandon lets go of a running lease without recording an outcome, when
// the agent stops while the command still runs.
func (a *Agent) abandon(adm *admission) {
	// A waiter the released slot admits is turned away by admit: the
	// agent is stopping.
	if adm.release != nil {
		adm.release()
	}
	adm.watch.disarm() // this agent no longer enforces its timeouts
	if adm.exec != nil {
		a.endExec(adm)
	}
	a.leases.Remove(adm.lease)
	a.log.Info("agent stopping: the command keeps running without a lease", a.leaseFields(adm.lease)...)
}

// endExec forgets adm's exec lease: called by finish.
func (a *Agent) endExec(adm *admission) {
	el := adm.exec
	a.execMu.Lock()
	if a.execLeases[el.pid] == el {
		delete(a.execLeases, el.pid)
	}
	a.execMu.Unlock()
	if a.tracer != nil {
		a.tracer.Untrack(el.pid)
	}
	if el.pidfd != nil {
		el.pidfd.Close() // also ends holdExec's waiter
	}
}

// waitReadable blocks until f (a non-blocking pidfd) is readable, which
// happens when its process exits, or f is closed. The wait parks in the
// runtime's netpoller: no thread per lease.
func waitReadable(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 0)
		return err != nil && err != unix.EINTR || n > 0
	})
}

// holdSupervised waits for the end of a supervised lease and returns the
// shim's report: the Finished message (nil when the connection closed
// without one, next is then closed) — or the exit of the peer process,
// whichever comes first. A lease is the peer's, not the connection's: a
// shim that handed its connection to a process that lives on (or leaked
// it to git) must not keep the slot after it exited. A shim that reported
// before exiting has its Finished in the socket already, so it is still
// taken when it arrives within exitEventGrace of the exit. Without a
// pidfd (kernel without SO_PEERPIDFD and pidfd_open failing at accept)
// only the connection counts.
func (a *Agent) holdSupervised(adm *admission, next <-chan *admitpb.Finished) *admitpb.Finished {
	var f *os.File
	if p := adm.lease.Peer.pidfd; p >= 0 {
		if fd, err := unix.FcntlInt(uintptr(p), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			if err := unix.SetNonblock(fd, true); err == nil {
				f = os.NewFile(uintptr(fd), "pidfd")
			} else {
				unix.Close(fd)
			}
		}
	}
	if f == nil {
		return <-next
	}
	defer f.Close() // also ends the waiter below
	gone := make(chan struct{})
	go func() {
		waitReadable(f)
		close(gone)
	}()
	select {
	case fin := <-next:
		return fin
	case <-gone:
	}
	select {
	case fin := <-next:
		return fin
	case <-time.After(exitEventGrace):
	}
	a.log.Warn("the process holding the lease exited but its connection is still open (handed to another process?); lease released",
		a.leaseFields(adm.lease)...)
	return nil
}
