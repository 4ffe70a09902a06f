package ebpf

import (
	"errors"
	"time"
)

// Options configure a Tracer.
type Options struct {
	// GitBinaries are paths of the real git executables whose execs are
	// reported (the real git and every regular file in `git --exec-path`;
	// symlinks followed; duplicates by inode collapse). Execs of any other
	// file are filtered out in the kernel. GitBinaries lists them for a git.
	GitBinaries []string
	// RingBufferBytes sizes the ring buffer (0: 256 KiB). It is rounded up
	// to a power of two of at least one page, as the kernel requires.
	RingBufferBytes int
	// MaxTracked bounds the tracked-process map (0: default 65536).
	MaxTracked int
}

// Defaults for the zero Options fields.
const (
	DefaultRingBufferBytes = 256 << 10
	DefaultMaxTracked      = 65536
)

// ErrUnavailable wraps every error that means "eBPF cannot run here"
// (no CAP_BPF/CAP_SYS_ADMIN, no BTF, program refused by the verifier or
// kernel); the message says which and why, for one operator log line.
var ErrUnavailable = errors.New("eBPF tracing unavailable")

// Handler receives the events Run reads, from one goroutine, in order.
type Handler interface {
	Exec(Exec)
	Exit(Exit)
}

// Exec is an execve of one of Options.GitBinaries.
type Exec struct {
	PID, PPID  int
	Root       int    // tracked root this process belongs to, 0 when untracked
	Comm       string // comm after exec
	ParentComm string
	Filename   string   // as passed to execve (bprm->filename)
	Argv       []string // first args, at most 512 bytes in all; the last may be truncated
	CgroupID   uint64   // cgroup2 id
	Time       time.Time
}

// Exit is the death of a whole tracked thread group (reported once, when
// its last thread exits, for roots and for tracked descendants).
type Exit struct {
	PID  int
	Root int // == PID for a root
	// User and System are what wait4(2) would report for it: all its
	// threads plus its reaped children (cutime/cstime). They are read when
	// the last thread starts to exit, so the little CPU the kernel spends
	// after that (unmapping memory, closing files) is not in them.
	User, System time.Duration
	MaxRSSKiB    int64     // as ru_maxrss of wait4 (max of own and children's)
	ExitCode     int       // exit status when it exited, -1 when killed by a signal
	Signal       int       // terminating signal, 0 when it exited
	Start, End   time.Time // process start (task start_time) and exit, wall clock
	// StartTicks is the start time as /proc/PID/stat field 22 gives it
	// (clock ticks since boot, suspend included), to tell this process
	// from a later one with the same pid; 0 when unknown.
	StartTicks uint64
}

// Stats are the tracer's counters.
type Stats struct {
	// EventsRead counts events Run has read from the ring buffer.
	EventsRead uint64
	// EventsLost counts events the kernel dropped because the ring buffer
	// was full (Run not keeping up, or RingBufferBytes too small).
	EventsLost uint64
	// Tracked is the number of entries in the tracked-process map.
	Tracked int
	// TrackFull counts forked children of tracked processes that were not
	// tracked because the map was full (MaxTracked too small).
	TrackFull uint64
}

// ProgramStat is the kernel's run-time accounting of one attached program.
// The kernel counts only while BPF statistics are enabled (sysctl
// kernel.bpf_stats_enabled=1, or BPF_ENABLE_STATS held by some process);
// otherwise both fields stay zero.
type ProgramStat struct {
	Name     string // on_exec, on_fork, on_exit
	RunCount uint64
	RunTime  time.Duration
}
