// Package cgroup owns sluice's cgroup hierarchy: it detects the cgroup mode of
// the host once (cgroup v1, hybrid or unified), creates or adopts a parent
// cgroup <base>/<root> with optional limits and N bucket cgroups
// <base>/<root>/repos/<i> with their own limits, places processes into
// buckets, and reads memory, CPU, OOM and PSI statistics. Probe tells
// `sluice check` whether the host's cgroups would let it do so. The agent's
// own cgroups come from /proc/self/cgroup through internal/procfs.
//
// # Where the hierarchy lives
//
// <base> is the agent's OWN cgroup, per hierarchy, read from /proc/self/cgroup:
// the line of each v1 controller (memory, cpu, cpuacct, pids) and the "0::" line
// for the unified (cgroup2) tree. This is what a systemd service with
// Delegate=yes must do: systemd hands the service its own cgroup subtree and
// nothing else, so the agent creates "sluice/…" below it. It also keeps memory
// accounted inside whatever sandbox the agent runs in. On a host where the agent
// runs in "/" (no systemd, started by hand as root), <base> is the root of each
// hierarchy, i.e. the mountpoint itself. If the own path does not exist below
// the mountpoint (a bind-mounted subtree without a cgroup namespace), the
// hierarchy's root is used and a warning is logged. Paths are relative to each
// hierarchy's mount root, which is "/" on hosts and in cgroup namespaces.
//
// Place a process before it does the work to be accounted: cgroup v1 does not
// move the memory a process has already charged (move_charge_at_immigrate is
// deprecated), so the shim is placed before it execs git. Where there is a
// cgroup2 tree, CLONE_INTO_CGROUP with [Manager.UnifiedDir] starts a process
// directly in its bucket; on hybrid hosts the v1 placement is still a separate
// write ([Manager.Place] does both and is idempotent).
//
// A repository maps to a bucket by [BucketFor] (FNV-1a 64 of the repository
// path bytes, mod N); the repository path never becomes a file name.
//
// # Modes
//
// The mode is chosen once, in [New], from containerd's cgroups.Mode() (or a
// statfs of Config.Mountpoint when it is not /sys/fs/cgroup), and one
// implementation of [Manager] serves it: v1.go for ModeV1 and ModeHybrid, v2.go
// for ModeUnified.
//
//   - ModeV1: the memory, cpu, cpuacct and pids hierarchies (only those; not
//     devices, freezer, name=systemd …). Limits: memory.limit_in_bytes,
//     cpu.shares, cpu.cfs_quota_us with cpu.cfs_period_us = 100000. The pids
//     hierarchy is used for placement only, and only where it is mounted.
//   - ModeHybrid: as ModeV1 for limits and stats, plus the same parent and bucket
//     directories in the unified tree (<mountpoint>/unified). Processes are
//     placed there too, because the eBPF tracer's bpf_get_current_cgroup_id()
//     and CLONE_INTO_CGROUP use the cgroup2 tree. Per-cgroup PSI
//     (memory.pressure, cpu.pressure) is read from the unified directory, where
//     it works even without controllers.
//   - ModeUnified: cgroup2 only. Limits: memory.max, cpu.weight (converted from
//     cpu_shares as systemd and runc do: 1 + ((shares-2)*9999)/262142), cpu.max
//     with period 100000. The controllers cpu, memory and pids are enabled in
//     cgroup.subtree_control along the path, but only those listed in the base
//     cgroup's cgroup.controllers; a missing controller is logged ("limits
//     unavailable on v2: controllers … missing"), not an error.
//
// # The cgroup2 "no internal processes" rule
//
// In ModeUnified, enabling a controller in the base cgroup's
// cgroup.subtree_control is refused while the base cgroup holds processes. If
// the agent has to enable a controller there, it first moves every process of
// its own cgroup into the leaf <base>/agent (as a systemd Delegate=yes service
// must). When the agent's own cgroup already is such a leaf (its last path
// element is "agent", e.g. a second New in the same process), its parent is
// used as <base>. Hybrid and v1 hosts do not need this: the unified tree there
// has no domain controllers to enable.
//
// # Adoption, reload, removal
//
// [New] adopts an existing hierarchy: directories that exist are reused and
// processes in them stay; limits are (re)applied. [Manager.Update] applies new
// limits and bucket counts; buckets beyond the new count are removed when empty
// and kept (with a warning) while they hold processes. [Manager.Destroy]
// removes the hierarchy only if no process is in it; it never kills.
//
// A missing controller or a permission problem is reported as an
// *[UnsupportedError] (errors.Is(err, [ErrUnsupported])) saying what is missing
// and how to fix it.
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/internal/procfs"
)

// Mode is the cgroup layout sluice runs on.
type Mode int

// Modes, as detected by [New].
const (
	ModeUnavailable Mode = iota // no cgroup filesystem at the mountpoint
	ModeV1                      // cgroup v1 only
	ModeHybrid                  // v1 controllers plus a cgroup2 tree at <mountpoint>/unified
	ModeUnified                 // cgroup2 only
)

// String returns "unavailable", "v1", "hybrid" or "unified".
func (m Mode) String() string {
	switch m {
	case ModeV1:
		return "v1"
	case ModeHybrid:
		return "hybrid"
	case ModeUnified:
		return "unified"
	default:
		return "unavailable"
	}
}

// Limits are the resource limits of one cgroup. The zero value means no limits.
type Limits struct {
	// MemoryBytes is the memory limit in bytes (v1 memory.limit_in_bytes, v2
	// memory.max); 0 = none.
	MemoryBytes int64
	// CPUShares is the relative CPU weight in v1 shares (default 1024; v2
	// cpu.weight is converted from it); 0 = none (the kernel default).
	CPUShares uint64
	// CPUQuotaUs is the CPU time allowed per 100 ms period, in µs (100000 = one
	// CPU; v1 cpu.cfs_quota_us, v2 cpu.max); 0 = none. At least 1000.
	CPUQuotaUs int64
}

// cpuPeriodUs is the CFS period sluice uses for quotas, v1 and v2.
const cpuPeriodUs = 100000

func (l Limits) validate(what string) error {
	if l.MemoryBytes < 0 {
		return fmt.Errorf("%s memory_bytes %d: must be >= 0", what, l.MemoryBytes)
	}
	if l.CPUQuotaUs < 0 || (l.CPUQuotaUs > 0 && l.CPUQuotaUs < 1000) {
		return fmt.Errorf("%s cpu_quota_us %d: must be 0 (none) or >= 1000", what, l.CPUQuotaUs)
	}
	if l.CPUShares == 1 || l.CPUShares > 262144 {
		return fmt.Errorf("%s cpu_shares %d: must be 0 (none) or 2..262144", what, l.CPUShares)
	}
	return nil
}

// Config configures a [Manager]. Zero values are documented per field.
type Config struct {
	// Mountpoint is where the cgroup filesystems are mounted; "" = "/sys/fs/cgroup".
	Mountpoint string
	// Root is the parent cgroup's name, relative to the agent's own cgroup;
	// "" = "sluice". It may contain "/" but no "..".
	Root string
	// Parent are the limits of <base>/<Root>; zero = none.
	Parent Limits
	// Buckets is the number of bucket cgroups <base>/<Root>/repos/<i>; must be >= 1.
	Buckets int
	// Bucket are the limits of each bucket; zero = none.
	Bucket Limits
	// ProcSelfCgroup is the path of the /proc/self/cgroup file to read the
	// agent's own cgroups from; "" = "/proc/self/cgroup" (tests inject fixtures).
	ProcSelfCgroup string

	// forceMode overrides mode detection (tests only); 0 = detect.
	forceMode Mode
}

const (
	defaultMountpoint = "/sys/fs/cgroup"
	defaultRoot       = "sluice"
)

func (c Config) withDefaults() (Config, error) {
	if c.Mountpoint == "" {
		c.Mountpoint = defaultMountpoint
	}
	c.Mountpoint = filepath.Clean(c.Mountpoint)
	if c.Root == "" {
		c.Root = defaultRoot
	}
	if c.ProcSelfCgroup == "" {
		c.ProcSelfCgroup = procfs.Default.SelfPath("cgroup")
	}
	if path.IsAbs(c.Root) || path.Clean(c.Root) != c.Root || c.Root == "." || strings.HasPrefix(c.Root, "..") {
		return c, fmt.Errorf("cgroup root %q: must be a clean relative path without ..", c.Root)
	}
	if c.Buckets < 1 {
		return c, fmt.Errorf("cgroup bucket count %d: must be >= 1", c.Buckets)
	}
	if err := c.Parent.validate("parent"); err != nil {
		return c, err
	}
	if err := c.Bucket.validate("bucket"); err != nil {
		return c, err
	}
	return c, nil
}

// Manager is sluice's view of its cgroup hierarchy, the same over v1 and v2.
// Its methods are safe for concurrent use.
type Manager interface {
	// Mode is the mode chosen at start-up.
	Mode() Mode
	// ParentPath is the path of <base>/<root> relative to the hierarchy (the
	// memory hierarchy on v1/hybrid, the unified tree on v2), e.g.
	// "/process_api/7/sluice", for logs and status.
	ParentPath() string
	// BucketPath is the path of bucket i relative to the hierarchy, as
	// ParentPath, e.g. "/process_api/7/sluice/repos/17", for logs and
	// status; "" if i is out of range.
	BucketPath(i int) string
	// Buckets is the bucket count in force: Config.Buckets of New or of the
	// last Update that succeeded. Surplus buckets kept because they still
	// hold processes are not counted.
	Buckets() int
	// Bucket chooses repo's bucket: [BucketFor] over the bucket count in
	// force. A reload that changes the count may move a repository to
	// another bucket for new commands.
	Bucket(repo []byte) int
	// Place moves pid into bucket i in every hierarchy sluice uses (v1 memory,
	// cpu, cpuacct, pids; the unified directory).
	Place(pid int, bucket int) error
	// UnifiedDir is the bucket's directory in the cgroup2 tree (for
	// CLONE_INTO_CGROUP), "" if there is none (ModeV1) or i is out of range.
	UnifiedDir(bucket int) string
	// Update applies new limits (reload). A larger bucket count creates the
	// missing buckets; a smaller one removes the surplus buckets that are
	// empty and keeps the ones with processes. Mountpoint and Root cannot change.
	Update(cfg Config) error
	// ParentStats reads the statistics of <base>/<root>.
	ParentStats() (Stats, error)
	// BucketStats reads the statistics of bucket i.
	BucketStats(i int) (Stats, error)
	// Processes returns the pids in bucket i (cgroup.procs of the memory or
	// unified directory).
	Processes(i int) ([]int, error)
	// Destroy removes the hierarchy if no process is in it (for tests and
	// uninstall); it never kills.
	Destroy() error
}

// ErrUnsupported is matched (errors.Is) by every *UnsupportedError.
var ErrUnsupported = errors.New("unsupported")

// UnsupportedError says which cgroup feature is missing and what it needs.
type UnsupportedError struct {
	Feature string // what is missing, e.g. "cgroup v1 memory controller"
	Need    string // what fixes it, e.g. "mount it at /sys/fs/cgroup/memory"
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("cgroup: %s unavailable: %s", e.Feature, e.Need)
}

// Is reports whether target is ErrUnsupported.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// New detects the cgroup mode, creates or adopts <base>/<cfg.Root> and its
// buckets, and applies the limits. log is used as given (name it, e.g.
// log.Named("cgroup")); nil discards. Processes already in an adopted hierarchy
// stay where they are.
func New(cfg Config, log *zap.Logger) (Manager, error) {
	if log == nil {
		log = zap.NewNop()
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	mode := cfg.forceMode
	if mode == ModeUnavailable {
		mode = detectMode(cfg.Mountpoint)
	}
	own, err := readProcCgroup(cfg.ProcSelfCgroup)
	if err != nil {
		return nil, err
	}
	switch mode {
	case ModeV1, ModeHybrid:
		return newV1(cfg, mode, own, log)
	case ModeUnified:
		return newV2(cfg, own, log)
	default:
		return nil, &UnsupportedError{
			Feature: "cgroup filesystem at " + cfg.Mountpoint,
			Need:    "mount cgroup2 (or the v1 memory and cpu controllers) there, or set [cgroups] mountpoint; or set [cgroups] enabled = false",
		}
	}
}

// detectMode returns the cgroup mode of the filesystem at mountpoint; for the
// default mountpoint it asks containerd's cgroups.Mode().
func detectMode(mountpoint string) Mode {
	if mountpoint == defaultMountpoint {
		switch cgroups.Mode() {
		case cgroups.Legacy:
			return ModeV1
		case cgroups.Hybrid:
			return ModeHybrid
		case cgroups.Unified:
			return ModeUnified
		default:
			return ModeUnavailable
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mountpoint, &st); err != nil {
		return ModeUnavailable
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return ModeUnified
	}
	if err := unix.Statfs(filepath.Join(mountpoint, "unified"), &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return ModeHybrid
	}
	if err := unix.Statfs(filepath.Join(mountpoint, "memory"), &st); err == nil && st.Type == unix.CGROUP_SUPER_MAGIC {
		return ModeV1
	}
	return ModeUnavailable
}

// readProcCgroup reads and parses a /proc/PID/cgroup file (see
// procfs.ParseCgroup: controller → path, "" for cgroup2).
func readProcCgroup(name string) (map[string]string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read own cgroup: %w", err)
	}
	m, err := procfs.ParseCgroup(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	return m, nil
}

// ownBase returns the agent's own cgroup path in one hierarchy (mounted at
// hierDir), falling back to "/" when that path does not exist below the mount.
func ownBase(own map[string]string, key, hierDir string, log *zap.Logger) string {
	p, ok := own[key]
	if !ok || p == "" {
		return "/"
	}
	p = path.Clean("/" + p)
	if p == "/" {
		return p
	}
	if _, err := os.Stat(filepath.Join(hierDir, p)); err != nil {
		log.Warn("own cgroup not below the mountpoint; using the hierarchy root",
			zap.String("hierarchy", hierDir), zap.String("own", p), zap.Error(err))
		return "/"
	}
	return p
}

// permissionError turns an EACCES/EPERM/EROFS into an *UnsupportedError.
func permissionError(op, dir string, err error) error {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, unix.EROFS) || errors.Is(err, unix.EPERM) {
		return &UnsupportedError{
			Feature: fmt.Sprintf("%s %s (%v)", op, dir, err),
			Need:    "run sluiced as root, or as a systemd service with Delegate=yes so it may manage its own cgroup subtree",
		}
	}
	return fmt.Errorf("%s %s: %w", op, dir, err)
}

// bucketRel is the path of bucket i relative to <base>/<root>.
func bucketRel(i int) string { return fmt.Sprintf("repos/%d", i) }

func isESRCH(err error) bool { return errors.Is(err, unix.ESRCH) }
