package agent

import (
	"os"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/internal/procfs"
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
	// StartTicks is the process's start time in clock ticks since boot
	// (/proc/PID/stat field 22); 0 when the tracer does not say.
	StartTicks uint64
}

// exitEventGrace is how long a lease whose process is gone (pidfd readable)
// waits for the tracer's exit event before its slot is released without
// one (exec mode), or for the shim's report still in the socket
// (supervising mode).
const exitEventGrace = 250 * time.Millisecond

// lateExitWindow is how long after that the outcome of such a lease still
// waits for the event (reconcileExit); after it the command counts as
// OutcomeUnknown. A variable for tests.
var lateExitWindow = 30 * time.Second

// Late exit events.
//
// Under load the tracer's exit report can reach the agent well after the
// process's pidfd said it was gone. The slot is not held hostage to it:
// after exitEventGrace the lease is released (the limit admits the next
// waiter, the state file is removed) but its outcome is not recorded yet.
// The lease waits in lateExits, by pid, for lateExitWindow; an exit event
// for that pid is its own when the exit it reports happened no later than
// the moment the pidfd said the process was gone (plus clock slack), and,
// when the tracer reports start times, the start time matches: a later
// process reusing the pid exited after that moment. It then gets its real
// outcome, CPU and max RSS (sluice_commands_total and the CPU counters
// count it once, late). Without an event in the window the command counts
// as outcome "unknown" with no CPU: never "signaled" unless the kernel
// said so.

// lateExitSlack allows for the tracer's conversion of kernel time to wall
// time when an exit time is compared with the pidfd's.
const lateExitSlack = 100 * time.Millisecond

// lateExit is a released exec-mode lease awaiting its exit event.
type lateExit struct {
	adm    *grant
	goneAt time.Time // when the pidfd said the process was gone
	start  uint64    // the process's start time (clock ticks), 0: unknown
	timer  *time.Timer
}

// execHold is the agent's hold on a process admitted in exec mode.
type execHold struct {
	pid  int
	exit chan ProcessExit // buffered: the tracer never blocks
	// pidfd is a duplicate of the peer's pidfd, owned by the lease; nil
	// when the kernel gave none (exit is then known from the tracer only).
	pidfd *os.File
	// parent is the exec lease this one descends from (a pack-objects
	// hook under an admitted upload-pack), nil when none.
	parent *execHold

	// start is the process's start time in clock ticks (0: unknown).
	start uint64

	// nested is the CPU of descendant leases, reported separately and so
	// subtracted from this one's; guarded by Agent.execMu.
	nestedUser, nestedSystem time.Duration
}

// startExec puts adm's process under the tracer and registers it, so the
// shim can be told to exec in place. It returns false (supervising mode)
// when the tracer cannot follow it.
func (a *Agent) startExec(adm *grant, peer PeerCred) bool {
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
	el := &execHold{pid: pid, exit: make(chan ProcessExit, 1), pidfd: pidfd}
	el.start, _ = procfs.Default.StartTime(pid)
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
	var late *lateExit
	if el == nil {
		if le := a.lateExits[e.PID]; le != nil && le.owns(e) {
			late = le
			delete(a.lateExits, e.PID)
		}
	}
	a.execMu.Unlock()
	if late != nil {
		a.reconcileExit(late, &e)
		return
	}
	if el == nil {
		return
	}
	select {
	case el.exit <- e:
	default:
	}
}

// owns reports whether exit event e can be the exit of le's process.
func (le *lateExit) owns(e ProcessExit) bool {
	// One tick of slack: the tracer converts the kernel's monotonic start
	// time to boot-time ticks with the clocks' offset read at the event.
	if le.start != 0 && e.StartTicks != 0 && (e.StartTicks+1 < le.start || e.StartTicks > le.start+1) {
		return false
	}
	return e.End.IsZero() || !e.End.After(le.goneAt.Add(lateExitSlack))
}

// exitFinished turns an exit event into the lease's Finished report.
func (a *Agent) exitFinished(adm *grant, e *ProcessExit) *admitpb.Finished {
	el := adm.exec
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
	}
}

// releaseLate releases adm's slot now and leaves its outcome to a late
// exit event (see "Late exit events"). The exec hold is replaced by the
// late-exit entry in one step under execMu, so an event that arrives
// meanwhile finds one or the other: one already handed to the hold is
// taken from it here.
func (a *Agent) releaseLate(adm *grant, goneAt time.Time) {
	el := adm.exec
	window := lateExitWindow
	le := &lateExit{adm: adm, goneAt: goneAt, start: el.start}
	var e ProcessExit
	got := false
	a.execMu.Lock()
	if a.execLeases[el.pid] == el {
		delete(a.execLeases, el.pid)
	}
	select {
	case e = <-el.exit:
		got = true
	default:
	}
	if !got {
		if old := a.lateExits[el.pid]; old != nil {
			// The pid was reused and its next process is late too: the
			// older one can no longer be told apart.
			old.timer.Stop()
			a.untrack(old.adm)
			a.recordUnknown(old.adm, window)
		}
		a.lateExits[el.pid] = le
		le.timer = time.AfterFunc(window, func() {
			a.execMu.Lock()
			mine := a.lateExits[el.pid] == le
			if mine {
				delete(a.lateExits, el.pid)
			}
			a.execMu.Unlock()
			if mine {
				a.untrack(adm)
				a.recordUnknown(adm, window)
			}
		})
	}
	a.execMu.Unlock()
	if got {
		a.finish(adm, a.exitFinished(adm, &e))
		return
	}
	a.release(adm)
	a.log.Info("exec mode: the process exited before the tracer reported it; slot released, its outcome waits for the report",
		append(a.leaseFields(adm.lease), zap.Duration("window", window))...)
}

// reconcileExit records the outcome of a lease released before its exit
// event, now that it came.
func (a *Agent) reconcileExit(le *lateExit, e *ProcessExit) {
	le.timer.Stop()
	a.untrack(le.adm)
	a.record(le.adm, a.exitFinished(le.adm, e), true)
}

// recordUnknown counts a command whose exit was never reported.
func (a *Agent) recordUnknown(adm *grant, window time.Duration) {
	l := adm.lease
	a.obs.CommandFinished(cmdLabel, subcmdLabel(l), OutcomeUnknown, 0, 0, time.Since(l.Arrived)-adm.waited, 0)
	a.log.Warn("exec mode: the tracer never reported the exit; outcome unknown, CPU not recorded",
		append(a.leaseFields(l), zap.Duration("queue_wait", adm.waited), zap.Duration("window", window))...)
}

// untrack stops the tracer following adm's process.
func (a *Agent) untrack(adm *grant) {
	if a.tracer != nil {
		a.tracer.Untrack(adm.exec.pid)
	}
}

// holdExec waits until the process admitted in exec mode exits and
// returns how it ended (nil when the process is gone without an exit
// event; goneAt is then when the pidfd said so). ok is false when the
// agent is shutting down first: the process keeps running and the lease
// is left for the next agent to adopt.
func (a *Agent) holdExec(adm *grant) (fin *admitpb.Finished, goneAt time.Time, ok bool) {
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
		goneAt := time.Now()
		select {
		case e = <-el.exit:
		case <-time.After(exitEventGrace):
			return nil, goneAt, true
		}
	case <-a.stopping.Done():
		return nil, time.Time{}, false
	}
	return a.exitFinished(adm, &e), time.Time{}, true
}

// runExec holds an exec-mode lease to its end (see holdExec).
func (a *Agent) runExec(adm *grant) {
	fin, goneAt, ok := a.holdExec(adm)
	switch {
	case !ok:
		a.abandon(adm)
	case fin == nil && a.tracer != nil:
		a.releaseLate(adm, goneAt)
	default:
		a.finish(adm, fin)
	}
}

// abandon lets go of a running lease without recording an outcome, when
// the agent stops while the command still runs.
func (a *Agent) abandon(adm *grant) {
	// A waiter the released slot admits is turned away by admit: the
	// agent is stopping.
	if adm.release != nil {
		adm.release()
	}
	adm.deadlines.disarm() // this agent no longer enforces its timeouts
	if adm.exec != nil {
		a.endExec(adm)
		a.untrack(adm)
	}
	a.leases.Remove(adm.lease)
	a.log.Info("agent stopping: the command keeps running without a lease", a.leaseFields(adm.lease)...)
}

// endExec forgets adm's exec lease (the tracer keeps following its pid
// until untrack: a late exit event may still come): called by release.
func (a *Agent) endExec(adm *grant) {
	el := adm.exec
	a.execMu.Lock()
	if a.execLeases[el.pid] == el {
		delete(a.execLeases, el.pid)
	}
	a.execMu.Unlock()
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
func (a *Agent) holdSupervised(adm *grant, next <-chan *admitpb.Finished) *admitpb.Finished {
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

// execInPlace reports whether pid is an admitted command exec'd in place
// (its git runs as that pid, under an exec hold).
func (a *Agent) execInPlace(pid int32) bool {
	a.execMu.Lock()
	defer a.execMu.Unlock()
	return a.execLeases[int(pid)] != nil
}
