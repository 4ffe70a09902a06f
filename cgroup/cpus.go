package cgroup

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/internal/procfs"
)

// AllowedCPUs returns how many CPUs the calling process may use, and how
// that was found: the CPUs of its affinity mask (a cpuset), bounded by the
// tightest CFS quota on its cgroup's path to the root (v1 cpu.cfs_quota_us
// over cpu.cfs_period_us, v2 cpu.max). mountpoint "" means /sys/fs/cgroup.
// A quota may be fractional (50000/100000 is half a CPU).
func AllowedCPUs(mountpoint string) (float64, string) {
	if mountpoint == "" {
		mountpoint = defaultMountpoint
	}
	n := float64(runtime.NumCPU())
	why := fmt.Sprintf("%d CPUs in the affinity mask", runtime.NumCPU())
	own, err := readProcCgroup(procfs.Default.SelfPath("cgroup"))
	if err != nil {
		return n, why
	}
	quota, where := 0.0, ""
	consider := func(q float64, dir string) {
		if q > 0 && (quota == 0 || q < quota) {
			quota, where = q, dir
		}
	}
	if p, ok := own["cpu"]; ok { // v1 (cpu or cpu,cpuacct)
		for _, hier := range []string{"cpu", "cpu,cpuacct"} {
			base := filepath.Join(mountpoint, hier)
			if !exists(base) {
				continue
			}
			for q := path.Clean("/" + p); ; q = path.Dir(q) {
				dir := filepath.Join(base, q)
				qu, err1 := readIntFile(filepath.Join(dir, "cpu.cfs_quota_us"))
				pe, err2 := readIntFile(filepath.Join(dir, "cpu.cfs_period_us"))
				if err1 == nil && err2 == nil && qu > 0 && pe > 0 {
					consider(float64(qu)/float64(pe), dir)
				}
				if q == "/" {
					break
				}
			}
			break
		}
	}
	if u, ok := own[""]; ok && exists(filepath.Join(mountpoint, "cgroup.controllers")) {
		for q := path.Clean("/" + u); ; q = path.Dir(q) {
			dir := filepath.Join(mountpoint, q)
			if b, err := os.ReadFile(filepath.Join(dir, "cpu.max")); err == nil {
				f := strings.Fields(string(b))
				if len(f) == 2 && f[0] != "max" {
					qu, err1 := strconv.ParseFloat(f[0], 64)
					pe, err2 := strconv.ParseFloat(f[1], 64)
					if err1 == nil && err2 == nil && qu > 0 && pe > 0 {
						consider(qu/pe, dir)
					}
				}
			}
			if q == "/" {
				break
			}
		}
	}
	if quota > 0 && quota < n {
		return quota, fmt.Sprintf("CPU quota %.3g CPUs (%s; %s)", quota, where, why)
	}
	return n, why
}

func readIntFile(name string) (int64, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}
