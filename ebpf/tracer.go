//go:build linux && (386 || amd64 || arm64)

package ebpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Event types, as enum event_type in bpf/tracer.bpf.c.
const (
	eventExec = 1
	eventExit = 2
)

// Indexes of the counters map, as enum counter in bpf/tracer.bpf.c.
const (
	counterLost      = 0
	counterTrackFull = 1
)

// Tracer is a loaded and attached set of tracer programs. Track, Untrack
// and Stats are safe for concurrent use; Run is called by one goroutine.
type Tracer struct {
	objs     tracerObjects
	links    []link.Link
	rd       *ringbuf.Reader
	pageSize int

	eventsRead atomic.Uint64
	running    atomic.Bool // a Run is in progress
	closeOnce  sync.Once
	closeErr   error
}

// Open loads and attaches the programs. It does not start reading events.
func Open(opts Options) (*Tracer, error) {
	keys, err := inodeKeys(opts.GitBinaries)
	if err != nil {
		return nil, err
	}
	ringBytes := ringSize(opts.RingBufferBytes)
	maxTracked := opts.MaxTracked
	if maxTracked <= 0 {
		maxTracked = DefaultMaxTracked
	}

	if _, err := os.Stat(KernelBTF); err != nil {
		return nil, fmt.Errorf("%w: no kernel BTF (/sys/kernel/btf/vmlinux: %v); needs a kernel built with CONFIG_DEBUG_INFO_BTF=y", ErrUnavailable, err)
	}
	if _, err := btf.LoadKernelSpec(); err != nil {
		return nil, fmt.Errorf("%w: read kernel BTF: %v", ErrUnavailable, err)
	}
	// Needed only before Linux 5.11 (later kernels charge BPF memory to
	// the memory cgroup); its error matters only if the load then fails.
	memlockErr := rlimit.RemoveMemlock()

	spec, err := loadTracer()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF object: %w", err)
	}
	spec.Maps[tracerMapEvents].MaxEntries = uint32(ringBytes)
	spec.Maps[tracerMapTracked].MaxEntries = uint32(maxTracked)
	if n := uint32(len(keys)); n > spec.Maps[tracerMapGitInodes].MaxEntries {
		spec.Maps[tracerMapGitInodes].MaxEntries = n
	}

	t := &Tracer{pageSize: os.Getpagesize()}
	if err := spec.LoadAndAssign(&t.objs, nil); err != nil {
		if memlockErr != nil && !errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w (and RLIMIT_MEMLOCK could not be raised: %v; kernels before 5.11 need CAP_SYS_RESOURCE or LimitMEMLOCK=infinity)", err, memlockErr)
		}
		return nil, unavailable("load BPF programs", err)
	}
	for _, k := range keys {
		if err := t.objs.GitInodes.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
			t.objs.Close()
			return nil, fmt.Errorf("fill git inode map: %w", err)
		}
	}
	for _, p := range []*ebpf.Program{t.objs.OnExec, t.objs.OnFork, t.objs.OnExit} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			t.Close()
			return nil, unavailable("attach "+p.String(), err)
		}
		t.links = append(t.links, l)
	}
	t.rd, err = ringbuf.NewReader(t.objs.Events)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("%w: open ring buffer: %v", ErrUnavailable, err)
	}
	return t, nil
}

// unavailable wraps a load or attach error in ErrUnavailable with the most
// likely reason for an operator.
func unavailable(what string, err error) error {
	var why string
	var verr *ebpf.VerifierError
	switch {
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		why = " (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN; run sluiced as root or grant them with AmbientCapabilities=)"
	case errors.As(err, &verr):
		why = " (the kernel's verifier refused the program)"
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) || errors.Is(err, ebpf.ErrNotSupported):
		why = " (the kernel lacks BTF-enabled sched_process_{exec,fork,exit} tracepoints whose exit carries group_dead; developed on Linux 6.18)"
	}
	return fmt.Errorf("%w: %s: %w%s", ErrUnavailable, what, err, why)
}

// ringSize rounds n up to a power of two of at least one page.
func ringSize(n int) int {
	if n <= 0 {
		n = DefaultRingBufferBytes
	}
	size := os.Getpagesize()
	for size < n {
		size <<= 1
	}
	return size
}

// inodeKeys stats every path (following symlinks) and returns one key per
// distinct file, in the kernel's encoding of the device number.
func inodeKeys(paths []string) ([]tracerInodeKey, error) {
	seen := make(map[tracerInodeKey]bool)
	var keys []tracerInodeKey
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return nil, fmt.Errorf("git binary %s: %w (ebpf: Options.GitBinaries must name existing executables)", p, err)
		}
		k := tracerInodeKey{Ino: st.Ino, Dev: kernelDev(st.Dev)}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// kernelDev converts stat(2)'s st_dev to the kernel's internal dev_t
// (MAJOR<<20 | MINOR), which is what super_block.s_dev holds.
func kernelDev(dev uint64) uint32 {
	return unix.Major(dev)<<20 | unix.Minor(dev)
}

// Track marks pid (a thread-group id) as the root of a tracked tree: its
// exit, and the execs and exits of processes it forks from now on, are
// reported with Root = pid. It returns the root pid was already tracked
// under (a tracked ancestor, e.g. the upload-pack whose pack-objects hook
// this is), or 0 when it was untracked or already its own root. Errors
// when the map is full.
func (t *Tracer) Track(pid int) (previousRoot int, err error) {
	if pid <= 0 || pid > 1<<22 {
		return 0, fmt.Errorf("track pid %d: not a valid pid", pid)
	}
	key := uint32(pid)
	var prev uint32
	if err := t.objs.Tracked.Lookup(&key, &prev); err == nil && prev != key {
		previousRoot = int(prev)
	}
	if err := t.objs.Tracked.Update(&key, &key, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return 0, fmt.Errorf("track pid %d: tracked-process map full (%d entries): raise ebpf MaxTracked", pid, t.objs.Tracked.MaxEntries())
		}
		return 0, fmt.Errorf("track pid %d: %w", pid, err)
	}
	return previousRoot, nil
}

// Untrack stops tracking pid (used when a lease ends without an exit,
// e.g. it was never run). Descendants already recorded keep their root
// until they exit.
func (t *Tracer) Untrack(pid int) {
	key := uint32(pid)
	_ = t.objs.Tracked.Delete(&key) // ErrKeyNotExist: it exited already
}

// Run reads events until ctx is done or the tracer is closed, calling h
// from one goroutine in order. It returns nil on ctx cancellation/Close.
func (t *Tracer) Run(ctx context.Context, h Handler) error {
	if !t.running.CompareAndSwap(false, true) {
		return errors.New("ebpf: Run called while another Run is in progress")
	}
	defer t.running.Store(false)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			_ = t.rd.Flush() // wakes ReadInto: pending records, then ErrFlushed
		case <-stop:
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	var rec ringbuf.Record
	for {
		if err := t.rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			if errors.Is(err, ringbuf.ErrFlushed) {
				if ctx.Err() != nil {
					return nil
				}
				continue // a Flush from a Run cancelled earlier
			}
			return fmt.Errorf("read ring buffer: %w", err)
		}
		t.eventsRead.Add(1)
		t.dispatch(rec.RawSample, h)
	}
}

// dispatch decodes one ring buffer record and hands it to h.
func (t *Tracer) dispatch(raw []byte, h Handler) {
	if len(raw) < 4 {
		return
	}
	switch binary.NativeEndian.Uint32(raw) {
	case eventExec:
		var e tracerExecEvent
		if _, err := binary.Decode(raw, binary.NativeEndian, &e); err != nil {
			return
		}
		h.Exec(t.exec(&e))
	case eventExit:
		var e tracerExitEvent
		if _, err := binary.Decode(raw, binary.NativeEndian, &e); err != nil {
			return
		}
		h.Exit(t.exit(&e))
	}
}

func (t *Tracer) exec(e *tracerExecEvent) Exec {
	argv := int8Bytes(e.Argv[:])
	if int(e.ArgvLen) < len(argv) {
		argv = argv[:e.ArgvLen]
	}
	return Exec{
		PID:        int(e.Pid),
		PPID:       int(e.Ppid),
		Root:       int(e.Root),
		Comm:       cString(int8Bytes(e.Comm[:])),
		ParentComm: cString(int8Bytes(e.ParentComm[:])),
		Filename:   cString(int8Bytes(e.Filename[:])),
		Argv:       splitArgv(argv),
		CgroupID:   e.CgroupId,
		Time:       monoToWall(e.Ktime),
	}
}

func (t *Tracer) exit(e *tracerExitEvent) Exit {
	user, system := waitCPU(rawCPU{
		utime:     e.SigUtime + e.ThrUtime,
		stime:     e.SigStime + e.ThrStime,
		runtime:   e.SigRuntime + e.ThrRuntime,
		prevUtime: e.PrevUtime,
		prevStime: e.PrevStime,
		cutime:    e.Cutime,
		cstime:    e.Cstime,
	})
	code, sig := waitStatus(e.SigFlags, e.GroupExitCode, e.LeaderExitCode)
	return Exit{
		PID:        int(e.Pid),
		Root:       int(e.Root),
		User:       user,
		System:     system,
		MaxRSSKiB:  maxRSSKiB(t.pageSize, e.Maxrss, e.Cmaxrss, e.HiwaterRss, e.Rss),
		ExitCode:   code,
		Signal:     sig,
		Start:      monoToWall(e.StartTime),
		End:        monoToWall(e.Ktime),
		StartTicks: monoToBootTicks(e.StartTime),
	}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on every
// Linux architecture: kernel ABI; procfs.ClockTicks says the same).
const clockTicks = 100

// monoToBootTicks converts a task's start_time (CLOCK_MONOTONIC ns) to
// /proc/PID/stat's starttime: CLOCK_BOOTTIME in clock ticks, the kernel's
// start_boottime. The two clocks differ by the time the machine was
// suspended; the difference now is used, so after a suspend while the
// process ran the result can be off (callers compare with a tick of
// slack and treat a mismatch as "another process").
func monoToBootTicks(ns uint64) uint64 {
	var mono, boot unix.Timespec
	if ns == 0 || unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono) != nil || unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot) != nil {
		return 0
	}
	off := boot.Nano() - mono.Nano()
	if off < 0 {
		off = 0
	}
	return (ns + uint64(off)) / (1e9 / clockTicks)
}

// int8Bytes views a C char array, which bpf2go types as int8, as bytes.
func int8Bytes(a []int8) []byte {
	if len(a) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&a[0])), len(a))
}

// monoToWall converts a CLOCK_MONOTONIC time in ns (bpf_ktime_get_ns,
// task start_time) to wall-clock time.
func monoToWall(ns uint64) time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return now
	}
	return now.Add(-time.Duration(ts.Nano() - int64(ns)))
}

// Stats returns counters: events read, events lost (ring buffer full),
// tracked entries.
func (t *Tracer) Stats() Stats {
	s := Stats{
		EventsRead: t.eventsRead.Load(),
		EventsLost: t.counter(counterLost),
		TrackFull:  t.counter(counterTrackFull),
	}
	var k, v uint32
	it := t.objs.Tracked.Iterate()
	for it.Next(&k, &v) && s.Tracked < int(t.objs.Tracked.MaxEntries()) {
		s.Tracked++
	}
	return s
}

// ProgramStats returns the kernel's run count and run time of each
// program (see ProgramStat for when the kernel keeps them).
func (t *Tracer) ProgramStats() ([]ProgramStat, error) {
	var out []ProgramStat
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{{"on_exec", t.objs.OnExec}, {"on_fork", t.objs.OnFork}, {"on_exit", t.objs.OnExit}} {
		st, err := p.prog.Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", p.name, err)
		}
		out = append(out, ProgramStat{Name: p.name, RunCount: st.RunCount, RunTime: st.Runtime})
	}
	return out, nil
}

// counter sums one per-CPU counter.
func (t *Tracer) counter(idx uint32) uint64 {
	var perCPU []uint64
	if err := t.objs.Counters.Lookup(&idx, &perCPU); err != nil {
		return 0
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum
}

// Close detaches the programs and frees the maps; a Run in progress
// returns nil.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		var errs []error
		if t.rd != nil {
			errs = append(errs, t.rd.Close())
		}
		for _, l := range t.links {
			errs = append(errs, l.Close())
		}
		errs = append(errs, t.objs.Close())
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}
