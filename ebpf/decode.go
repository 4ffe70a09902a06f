package ebpf

import (
	"bytes"
	"math/bits"
	"time"
)

// signalGroupExit is SIGNAL_GROUP_EXIT from include/linux/sched/signal.h:
// the group is exiting with signal->group_exit_code as its wait status.
const signalGroupExit = 0x4

// rawCPU are the kernel's CPU fields for a dying thread group, in ns.
type rawCPU struct {
	utime, stime, runtime uint64 // thread_group_cputime(): signal + live threads
	prevUtime, prevStime  uint64 // signal->prev_cputime
	cutime, cstime        uint64 // reaped children, already adjusted
}

// waitCPU turns raw fields into the user and system time wait4 reports:
// the group's tick-sampled utime/stime scaled to its precise runtime
// (cputime_adjust in kernel/sched/cputime.c), plus the reaped children.
func waitCPU(c rawCPU) (user, system time.Duration) {
	u, s := cputimeAdjust(c.utime, c.stime, c.runtime, c.prevUtime, c.prevStime)
	return time.Duration(u + c.cutime), time.Duration(s + c.cstime)
}

// cputimeAdjust mirrors the kernel's cputime_adjust: split rtime in the
// ratio stime:utime, never going below what was reported before (prev).
func cputimeAdjust(utime, stime, rtime, prevU, prevS uint64) (uint64, uint64) {
	if prevU+prevS >= rtime {
		return prevU, prevS
	}
	switch {
	case stime == 0:
		utime = rtime
	case utime == 0:
		stime = rtime
	default:
		stime = mulDiv(stime, rtime, stime+utime)
		if stime > rtime {
			stime = rtime
		}
	}
	if stime < prevS {
		stime = prevS
	}
	utime = rtime - stime
	if utime < prevU {
		utime = prevU
		stime = rtime - utime
	}
	return utime, stime
}

// mulDiv returns a*b/c without overflowing the product.
func mulDiv(a, b, c uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi >= c {
		return ^uint64(0)
	}
	q, _ := bits.Div64(hi, lo, c)
	return q
}

// waitStatus decodes the exit status wait4 would return: the group exit
// code when the group exits as one (exit_group, a fatal signal), else the
// leader's own exit code. It returns the exit code (-1 when signalled) and
// the terminating signal (0 when it exited).
func waitStatus(sigFlags uint32, groupExitCode, leaderExitCode int32) (code, signal int) {
	status := leaderExitCode
	if sigFlags&signalGroupExit != 0 {
		status = groupExitCode
	}
	if sig := int(status & 0x7f); sig != 0 {
		return -1, sig
	}
	return int(status>>8) & 0xff, 0
}

// maxRSSKiB is ru_maxrss: the largest of the group's recorded peak, its
// children's, and its memory map's high-water mark, pages to KiB.
func maxRSSKiB(pageSize int, pages ...uint64) int64 {
	var m uint64
	for _, p := range pages {
		m = max(m, p)
	}
	return int64(m) * int64(pageSize) / 1024
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// splitArgv splits NUL-separated arguments; a last argument cut by the
// size bound is kept as it is.
func splitArgv(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	argv := make([]string, len(parts))
	for i, p := range parts {
		argv[i] = string(p)
	}
	return argv
}
