package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ClockTicks is the unit of the times in /proc/PID/stat: USER_HZ, which
// sysconf(_SC_CLK_TCK) reports as 100 on Linux for every architecture Go
// supports (the kernel ABI fixes it; it is not CONFIG_HZ).
const ClockTicks = 100

// Ticks counts clock ticks (1/ClockTicks s).
type Ticks int64

// Microseconds converts clock ticks to µs.
func (t Ticks) Microseconds() int64 { return int64(t) * (1000000 / ClockTicks) }

// Stat is what sluice reads from /proc/PID/stat.
type Stat struct {
	// Comm is the command name (field 2), without its parentheses.
	Comm string
	// State is the one-letter state (field 3): R, S, D, Z, T, ...
	State byte
	// PPID is the parent's pid (field 4).
	PPID int
	// UTime and STime are the CPU time spent in user and system mode
	// (fields 14 and 15); CUTime and CSTime those of the children the
	// process has waited for (fields 16 and 17).
	UTime, STime, CUTime, CSTime Ticks
	// StartTime is when the process started, in clock ticks since boot
	// (field 22): with the pid, it names one process for good.
	StartTime uint64
}

// CPU is the process's CPU time with that of its reaped children
// (utime+stime+cutime+cstime).
func (s Stat) CPU() Ticks { return s.UTime + s.STime + s.CUTime + s.CSTime }

// Stat reads and parses /proc/PID/stat.
func (fs FS) Stat(pid int) (Stat, error) {
	b, err := os.ReadFile(fs.Path(pid, "stat"))
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(b)
}

// PPID returns pid's parent pid.
func (fs FS) PPID(pid int) (int, error) {
	s, err := fs.Stat(pid)
	return s.PPID, err
}

// StartTime returns pid's start time in clock ticks since boot.
func (fs FS) StartTime(pid int) (uint64, error) {
	s, err := fs.Stat(pid)
	return s.StartTime, err
}

// ParseStat parses a /proc/PID/stat line. The command name (field 2) may
// hold spaces and parentheses: fields are counted after its last ')'.
func ParseStat(b []byte) (Stat, error) {
	open := bytes.IndexByte(b, '(')
	i := bytes.LastIndexByte(b, ')')
	if open < 0 || i < open {
		return Stat{}, errors.New("stat: no command name in parentheses")
	}
	// fields[0] is field 3 (state).
	fields := strings.Fields(string(b[i+1:]))
	const (
		state, ppid, utime, start = 3 - 3, 4 - 3, 14 - 3, 22 - 3
	)
	if len(fields) <= start {
		return Stat{}, fmt.Errorf("stat: %d fields after the command name, want at least %d", len(fields), start+1)
	}
	s := Stat{Comm: string(b[open+1 : i])}
	if len(fields[state]) != 1 {
		return Stat{}, fmt.Errorf("stat: state %q", fields[state])
	}
	s.State = fields[state][0]
	var err error
	if s.PPID, err = strconv.Atoi(fields[ppid]); err != nil {
		return Stat{}, fmt.Errorf("stat: ppid %q: %w", fields[ppid], err)
	}
	for j, dst := range []*Ticks{&s.UTime, &s.STime, &s.CUTime, &s.CSTime} {
		n, err := strconv.ParseInt(fields[utime+j], 10, 64)
		if err != nil {
			return Stat{}, fmt.Errorf("stat: field %d %q: %w", 14+j, fields[utime+j], err)
		}
		*dst = Ticks(n)
	}
	if s.StartTime, err = strconv.ParseUint(fields[start], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("stat: starttime %q: %w", fields[start], err)
	}
	return s, nil
}

// Table is every process's parent and CPU time at one instant, read from
// /proc/*/stat. Descendants are found by parent pid rather than
// /proc/PID/task/TID/children, which needs CONFIG_PROC_CHILDREN (off on
// the machines sluice is tested on).
type Table struct {
	// CPU is each process's CPU time, its reaped children's included.
	CPU map[int]Ticks
	// Children lists each pid's children, in directory order.
	Children map[int][]int
}

// ReadTable reads /proc/*/stat. Processes that exit during the scan, or
// whose stat cannot be read, are left out; an unreadable root yields an
// empty table.
func (fs FS) ReadTable() Table {
	t := Table{CPU: map[int]Ticks{}, Children: map[int][]int{}}
	pids, err := fs.PIDs()
	if err != nil {
		return t
	}
	for _, pid := range pids {
		s, err := fs.Stat(pid)
		if err != nil {
			continue
		}
		t.CPU[pid] = s.CPU()
		t.Children[s.PPID] = append(t.Children[s.PPID], pid)
	}
	return t
}

// Descendants returns root's descendants, breadth first (parents before
// their children), at most maxProcs of them and maxDepth levels deep.
func (t Table) Descendants(root, maxDepth, maxProcs int) []int {
	var out []int
	level := []int{root}
	for depth := 0; depth < maxDepth && len(level) > 0; depth++ {
		var next []int
		for _, pid := range level {
			for _, c := range t.Children[pid] {
				if len(out) == maxProcs {
					return out
				}
				out = append(out, c)
				next = append(next, c)
			}
		}
		level = next
	}
	return out
}

// TreeCPU returns the CPU time of pid and every live descendant, each
// including the CPU of the children it has already reaped, so a finished
// child still counts.
func (t Table) TreeCPU(pid int) Ticks {
	var total Ticks
	seen := map[int]bool{}
	stack := []int{pid}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		total += t.CPU[p]
		stack = append(stack, t.Children[p]...)
	}
	return total
}
