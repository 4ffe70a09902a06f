package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Stats are the statistics of one cgroup, the same over v1 and v2.
type Stats struct {
	// MemoryUsage is the memory charged to the cgroup in bytes (v1
	// memory.usage_in_bytes, v2 memory.current).
	MemoryUsage uint64
	// MemoryLimit is the memory limit in bytes; 0 = unlimited (v1 reports a
	// huge number, v2 "max": both become 0).
	MemoryLimit uint64
	// InactiveFile and ActiveFile are the page cache (v1 total_inactive_file,
	// total_active_file; v2 inactive_file, active_file); Anon is anonymous memory
	// (v1 total_rss, which excludes shmem as v2 anon does; v2 anon).
	InactiveFile, ActiveFile, Anon uint64
	// CPUUsage is the CPU time used by the cgroup's processes (v1 cpuacct.usage,
	// v2 cpu.stat usage_usec).
	CPUUsage time.Duration
	// CPUPeriods and CPUThrottledPeriods are the CFS enforcement periods and how
	// many of them were throttled (cpu.stat nr_periods, nr_throttled).
	CPUPeriods, CPUThrottledPeriods uint64
	// CPUThrottledTime is the time the cgroup was throttled, summed over CPUs
	// (v1 throttled_time, v2 throttled_usec).
	CPUThrottledTime time.Duration
	// OOMKills counts processes killed by the OOM killer in this cgroup (v1
	// memory.oom_control oom_kill, v2 memory.events oom_kill).
	OOMKills uint64
	// MemoryPressure and CPUPressure are the PSI of the cgroup: the cgroup2
	// directory's memory.pressure / cpu.pressure where there is one (v2 and
	// hybrid), else the system-wide /proc/pressure/*; nil where unavailable.
	MemoryPressure, CPUPressure *PSI
	// Processes is the number of processes in the cgroup itself.
	Processes int
}

// PSI is one pressure stall information file: the share of time some (or all,
// "full") tasks were stalled, averaged over 10 s and 60 s, and the totals.
type PSI struct {
	SomeAvg10, SomeAvg60, FullAvg10, FullAvg60 float64
	SomeTotal, FullTotal                       time.Duration
}

// ParseFlatKeyed parses a flat-keyed cgroup file ("key value" per line), such
// as memory.stat, cpu.stat, memory.events or memory.oom_control.
func ParseFlatKeyed(r io.Reader) (map[string]uint64, error) {
	m := make(map[string]uint64)
	s := bufio.NewScanner(r)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed line %q: %w", line, err)
		}
		m[k] = n
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// ParseMemoryStat parses memory.stat (v1 or v2).
func ParseMemoryStat(r io.Reader) (map[string]uint64, error) { return ParseFlatKeyed(r) }

// ParseCPUStat parses cpu.stat (v1 or v2).
func ParseCPUStat(r io.Reader) (map[string]uint64, error) { return ParseFlatKeyed(r) }

// ParsePSI parses a pressure file (/proc/pressure/*, <cgroup2>/*.pressure):
//
//	some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//
// total is in µs. The "full" line is optional (old kernels omit it for cpu).
func ParsePSI(r io.Reader) (PSI, error) {
	var p PSI
	var sawSome bool
	s := bufio.NewScanner(r)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 {
			continue
		}
		var avg10, avg60 *float64
		var total *time.Duration
		switch fields[0] {
		case "some":
			avg10, avg60, total = &p.SomeAvg10, &p.SomeAvg60, &p.SomeTotal
			sawSome = true
		case "full":
			avg10, avg60, total = &p.FullAvg10, &p.FullAvg60, &p.FullTotal
		default:
			return PSI{}, fmt.Errorf("malformed pressure line %q", s.Text())
		}
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				return PSI{}, fmt.Errorf("malformed pressure field %q", f)
			}
			var err error
			switch k {
			case "avg10":
				*avg10, err = strconv.ParseFloat(v, 64)
			case "avg60":
				*avg60, err = strconv.ParseFloat(v, 64)
			case "total":
				var us uint64
				us, err = strconv.ParseUint(v, 10, 64)
				*total = time.Duration(us) * time.Microsecond
			}
			if err != nil {
				return PSI{}, fmt.Errorf("malformed pressure field %q: %w", f, err)
			}
		}
	}
	if err := s.Err(); err != nil {
		return PSI{}, err
	}
	if !sawSome {
		return PSI{}, errors.New("pressure file without a some line")
	}
	return p, nil
}

// readFlatKeyed reads a flat-keyed file; a missing file yields (nil, nil).
func readFlatKeyed(name string) (map[string]uint64, error) {
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m, err := ParseFlatKeyed(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	return m, nil
}

// readUintFile reads a file holding one number or "max" (→ 0); a missing file
// yields 0.
func readUintFile(name string) (uint64, error) {
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", name, err)
	}
	return n, nil
}

// readPSI reads a pressure file; a missing or unsupported one yields nil.
func readPSI(name string) *PSI {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil // missing, or EOPNOTSUPP with psi=0
	}
	p, err := ParsePSI(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	return &p
}

// readProcs reads the pids in dir/cgroup.procs.
func readProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse %s/cgroup.procs: %w", dir, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// v1UnlimitedFloor: v1 reports "no limit" as PAGE_COUNTER_MAX*PAGE_SIZE
// (0x7FFFFFFFFFFFF000 on 4 KiB pages); anything this large is unlimited.
const v1UnlimitedFloor = 1 << 62

// readV1Stats reads the statistics of a v1 cgroup from its memory, cpu and
// cpuacct directories; psiMem and psiCPU are its PSI files (a cgroup2
// dir's memory.pressure and cpu.pressure, or /proc/pressure/memory and
// cpu), "" for none.
func readV1Stats(memDir, cpuDir, cpuacctDir string, psiMem, psiCPU string) (Stats, error) {
	var st Stats
	var err error
	if st.MemoryUsage, err = readUintFile(filepath.Join(memDir, "memory.usage_in_bytes")); err != nil {
		return st, err
	}
	if st.MemoryLimit, err = readUintFile(filepath.Join(memDir, "memory.limit_in_bytes")); err != nil {
		return st, err
	}
	if st.MemoryLimit >= v1UnlimitedFloor {
		st.MemoryLimit = 0
	}
	ms, err := readFlatKeyed(filepath.Join(memDir, "memory.stat"))
	if err != nil {
		return st, err
	}
	st.InactiveFile, st.ActiveFile, st.Anon = ms["total_inactive_file"], ms["total_active_file"], ms["total_rss"]
	oc, err := readFlatKeyed(filepath.Join(memDir, "memory.oom_control"))
	if err != nil {
		return st, err
	}
	st.OOMKills = oc["oom_kill"]
	usage, err := readUintFile(filepath.Join(cpuacctDir, "cpuacct.usage"))
	if err != nil {
		return st, err
	}
	st.CPUUsage = time.Duration(usage)
	cs, err := readFlatKeyed(filepath.Join(cpuDir, "cpu.stat"))
	if err != nil {
		return st, err
	}
	st.CPUPeriods, st.CPUThrottledPeriods = cs["nr_periods"], cs["nr_throttled"]
	st.CPUThrottledTime = time.Duration(cs["throttled_time"])
	if psiMem != "" {
		st.MemoryPressure = readPSI(psiMem)
	}
	if psiCPU != "" {
		st.CPUPressure = readPSI(psiCPU)
	}
	pids, err := readProcs(memDir)
	if err != nil {
		return st, err
	}
	st.Processes = len(pids)
	return st, nil
}

// readV2Stats reads the statistics of a cgroup2 directory. Files of
// controllers that are not enabled are missing and leave their fields zero.
func readV2Stats(dir string) (Stats, error) {
	var st Stats
	var err error
	if st.MemoryUsage, err = readUintFile(filepath.Join(dir, "memory.current")); err != nil {
		return st, err
	}
	if st.MemoryLimit, err = readUintFile(filepath.Join(dir, "memory.max")); err != nil {
		return st, err
	}
	ms, err := readFlatKeyed(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return st, err
	}
	st.InactiveFile, st.ActiveFile, st.Anon = ms["inactive_file"], ms["active_file"], ms["anon"]
	ev, err := readFlatKeyed(filepath.Join(dir, "memory.events"))
	if err != nil {
		return st, err
	}
	st.OOMKills = ev["oom_kill"]
	cs, err := readFlatKeyed(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return st, err
	}
	st.CPUUsage = time.Duration(cs["usage_usec"]) * time.Microsecond
	st.CPUPeriods, st.CPUThrottledPeriods = cs["nr_periods"], cs["nr_throttled"]
	st.CPUThrottledTime = time.Duration(cs["throttled_usec"]) * time.Microsecond
	st.MemoryPressure = readPSI(filepath.Join(dir, "memory.pressure"))
	st.CPUPressure = readPSI(filepath.Join(dir, "cpu.pressure"))
	pids, err := readProcs(dir)
	if err != nil {
		return st, err
	}
	st.Processes = len(pids)
	return st, nil
}

// HostStats is the host read as a cgroup with no memory limit: no memory
// figures (a reader that needs them falls back to the host's memory) and
// the system-wide pressure files. The adaptive watchers read it when
// neither sluice's cgroups nor the agent's own cgroup ([FindOwnCgroup])
// have a memory limit.
func HostStats() Stats {
	return Stats{
		MemoryPressure: readPSI("/proc/pressure/memory"),
		CPUPressure:    readPSI("/proc/pressure/cpu"),
	}
}
