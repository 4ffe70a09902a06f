package cgroup

import (
	"os"
	"path"
	"path/filepath"

	"github.com/sluicehq/sluice/internal/procfs"
)

// OwnCgroup is the memory cgroup the agent itself runs in, watched for
// pressure when sluice has no cgroups of its own ([cgroups] enabled =
// false, or unavailable). When sluiced runs beside the Git server in the
// server's cgroup (a container, a systemd slice), that cgroup's limit is
// the host the watchers must protect, not the machine's total memory.
type OwnCgroup struct {
	// Path is the cgroup's path in its hierarchy, for logs
	// ("/process_api/7/sluice-storm-42").
	Path string
	// V2 is true when the memory limit is a cgroup2 memory.max.
	V2 bool
	// MemDir is the v1 memory directory or the cgroup2 directory.
	MemDir string
	// CPUDir and CPUAcctDir are the agent's v1 cpu and cpuacct
	// directories ("" on v2); PSIDir is where memory.pressure and
	// cpu.pressure are read (the agent's cgroup2 directory where there is
	// one, else /proc/pressure with names "memory" and "cpu").
	CPUDir, CPUAcctDir, PSIDir string
	// Limit is the memory limit in bytes found at start.
	Limit uint64
}

// FindOwnCgroup returns the agent's own memory cgroup when it has a memory
// limit, or nil when it has none (the host's memory is then what counts).
// The nearest limited cgroup on the path from the agent's cgroup to the
// root is chosen: a limit on an ancestor bounds the agent's cgroup too.
// mountpoint "" means /sys/fs/cgroup; procSelfCgroup "" means
// /proc/self/cgroup (tests inject fixtures).
func FindOwnCgroup(mountpoint, procSelfCgroup string) (*OwnCgroup, error) {
	if mountpoint == "" {
		mountpoint = defaultMountpoint
	}
	if procSelfCgroup == "" {
		procSelfCgroup = procfs.Default.SelfPath("cgroup")
	}
	own, err := readProcCgroup(procSelfCgroup)
	if err != nil {
		return nil, err
	}
	// v1 memory controller (v1 or hybrid host).
	if p, ok := own["memory"]; ok {
		hier := filepath.Join(mountpoint, "memory")
		for q := path.Clean("/" + p); ; q = path.Dir(q) {
			dir := filepath.Join(hier, q)
			lim, err := readUintFile(filepath.Join(dir, "memory.limit_in_bytes"))
			if err != nil {
				return nil, err
			}
			if lim > 0 && lim < v1UnlimitedFloor {
				o := &OwnCgroup{Path: q, MemDir: dir, Limit: lim, PSIDir: "/proc/pressure"}
				if c, ok := own["cpu"]; ok {
					o.CPUDir = filepath.Join(mountpoint, "cpu", path.Clean("/"+c))
				}
				if c, ok := own["cpuacct"]; ok {
					o.CPUAcctDir = filepath.Join(mountpoint, "cpuacct", path.Clean("/"+c))
				}
				if u, ok := own[""]; ok {
					if d := filepath.Join(mountpoint, "unified", path.Clean("/"+u)); exists(filepath.Join(d, "cgroup.procs")) {
						o.PSIDir = d
					}
				}
				return o, nil
			}
			if q == "/" {
				return nil, nil
			}
		}
	}
	// cgroup2 only.
	if u, ok := own[""]; ok && exists(filepath.Join(mountpoint, "cgroup.controllers")) {
		for q := path.Clean("/" + u); ; q = path.Dir(q) {
			dir := filepath.Join(mountpoint, q)
			lim, err := readUintFile(filepath.Join(dir, "memory.max"))
			if err != nil {
				return nil, err
			}
			if lim > 0 {
				return &OwnCgroup{Path: q, V2: true, MemDir: dir, PSIDir: dir, Limit: lim}, nil
			}
			if q == "/" {
				return nil, nil
			}
		}
	}
	return nil, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Stats reads the cgroup's statistics. OOM kills are summed over the
// cgroup and every cgroup below it on v1, where a kill is counted only in
// the killed task's own cgroup (v2's memory.events is hierarchical).
func (o *OwnCgroup) Stats() (Stats, error) {
	if o.V2 {
		return readV2Stats(o.MemDir)
	}
	psiMem, psiCPU := filepath.Join(o.PSIDir, "memory"), filepath.Join(o.PSIDir, "cpu")
	if o.PSIDir != "/proc/pressure" {
		psiMem, psiCPU = filepath.Join(o.PSIDir, "memory.pressure"), filepath.Join(o.PSIDir, "cpu.pressure")
	}
	s, err := readV1Stats(o.MemDir, o.CPUDir, o.CPUAcctDir, psiMem, psiCPU)
	if err != nil {
		return s, err
	}
	s.OOMKills = subtreeOOMKills(o.MemDir)
	return s, nil
}

// subtreeOOMKills sums memory.oom_control's oom_kill over dir and the v1
// memory cgroups below it, at most maxSubtreeDirs of them (a bound on the
// cost of one sample).
func subtreeOOMKills(dir string) uint64 {
	var n uint64
	seen := 0
	var walk func(d string)
	walk = func(d string) {
		if seen >= maxSubtreeDirs {
			return
		}
		seen++
		if m, err := readFlatKeyed(filepath.Join(d, "memory.oom_control")); err == nil {
			n += m["oom_kill"]
		}
		ents, err := os.ReadDir(d)
		if err != nil {
			return
		}
		for _, e := range ents {
			if e.IsDir() {
				walk(filepath.Join(d, e.Name()))
			}
		}
	}
	walk(dir)
	return n
}

const maxSubtreeDirs = 256

// EventTargets returns where to register memory notifications for the
// cgroup: v1 OOM and the given pressure levels on its memory directory
// (its descendants' OOMs are not notified to it: they are seen at the
// next sample), or inotify on its memory.events on v2.
func (o *OwnCgroup) EventTargets(levels []string) []EventTarget {
	if o.V2 {
		return []EventTarget{{Dir: o.MemDir, V2: true}}
	}
	return []EventTarget{{Dir: o.MemDir, OOM: true, PressureLevels: levels}}
}
