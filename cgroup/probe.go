package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/procfs"
)

// ProbeReport is what Probe found about the cgroup setup sluiced would
// use, for `sluice check`.
type ProbeReport struct {
	// Own is the caller's own cgroups, controller → path ("" for the
	// cgroup2 line), as /proc/self/cgroup gives them.
	Own map[string]string
	// V2 is true on a pure cgroup2 host (cgroup.controllers at the
	// mountpoint); otherwise the v1 hierarchies are looked at.
	V2 bool
	// Dir is the own cgroup's directory Probe tried to create a cgroup
	// in: the cgroup2 directory, or the v1 memory one.
	Dir string
	// Missing lists the controllers sluice uses that the host lacks (cpu,
	// memory, pids on cgroup2; memory, cpu, cpuacct, pids on v1).
	Missing []string
}

// Writable names the hierarchy and directory proven writable:
// "cgroup2 DIR" or "v1 memory DIR".
func (r ProbeReport) Writable() string {
	if r.V2 {
		return "cgroup2 " + r.Dir
	}
	return "v1 memory " + r.Dir
}

// The steps at which Probe can fail (ProbeError.Step).
const (
	// ProbeReadOwn: the own cgroup file could not be read or parsed.
	ProbeReadOwn = "read own cgroup"
	// ProbeMount: the own cgroup's directory is not there (no cgroup
	// file system at the mountpoint).
	ProbeMount = "find own cgroup"
	// ProbeCreate: no cgroup could be created in the own cgroup.
	ProbeCreate = "create"
	// ProbeRemove: the probe cgroup was created but not removed (it is
	// left behind at Path).
	ProbeRemove = "remove"
)

// ProbeError says at which step Probe failed.
type ProbeError struct {
	Step string // one of the Probe* steps
	Path string // the file or directory concerned
	Err  error
}

func (e *ProbeError) Error() string { return e.Step + " " + e.Path + ": " + e.Err.Error() }
func (e *ProbeError) Unwrap() error { return e.Err }

// Probe reads the caller's own cgroups from procSelfCgroup ("" =
// /proc/self/cgroup), finds the hierarchy under mountpoint ("" =
// /sys/fs/cgroup) and the controllers it has, and creates and removes a
// throwaway cgroup in the own one to prove it writable. It returns what
// it found so far and a *ProbeError when a step failed; the report's
// Missing is filled in whenever the own cgroups could be read.
func Probe(mountpoint, procSelfCgroup string) (ProbeReport, error) {
	if mountpoint == "" {
		mountpoint = defaultMountpoint
	}
	if procSelfCgroup == "" {
		procSelfCgroup = procfs.Default.SelfPath("cgroup")
	}
	var r ProbeReport
	own, err := procfs.ReadCgroupFile(procSelfCgroup)
	if err != nil {
		return r, &ProbeError{Step: ProbeReadOwn, Path: procSelfCgroup, Err: err}
	}
	r.Own = own
	if _, err := os.Stat(filepath.Join(mountpoint, "cgroup.controllers")); err == nil {
		// Pure cgroup v2.
		r.V2 = true
		data, _ := os.ReadFile(filepath.Join(mountpoint, "cgroup.controllers"))
		have := strings.Fields(string(data))
		for _, c := range []string{"cpu", "memory", "pids"} {
			if !slices.Contains(have, c) {
				r.Missing = append(r.Missing, c)
			}
		}
		r.Dir = filepath.Join(mountpoint, own[""])
	} else {
		for _, c := range []string{"memory", "cpu", "cpuacct", "pids"} {
			if _, err := os.Stat(filepath.Join(mountpoint, c)); err != nil {
				r.Missing = append(r.Missing, c)
			}
		}
		r.Dir = filepath.Join(mountpoint, "memory", own["memory"])
	}
	if _, err := os.Stat(r.Dir); err != nil {
		return r, &ProbeError{Step: ProbeMount, Path: r.Dir, Err: err}
	}
	probe := filepath.Join(r.Dir, fmt.Sprintf("sluice-check-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return r, &ProbeError{Step: ProbeCreate, Path: r.Dir, Err: err}
	}
	if err := os.Remove(probe); err != nil {
		return r, &ProbeError{Step: ProbeRemove, Path: probe, Err: err}
	}
	return r, nil
}
