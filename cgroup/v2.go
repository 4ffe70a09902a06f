package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	"go.uber.org/zap"
)

// v2Controllers are the cgroup2 controllers sluice enables when available.
var v2Controllers = []string{"cpu", "memory", "pids"}

// v2Manager is the cgroup2 side: the whole Manager in ModeUnified, and the
// placement-only unified tree of ModeHybrid (limits == false).
type v2Manager struct {
	log    *zap.Logger
	mount  string   // the cgroup2 mountpoint
	base   string   // the agent's own cgroup2 path, e.g. "/" or "/system.slice/sluiced.service"
	root   string   // Config.Root
	limits bool     // apply limits and enable controllers (ModeUnified only)
	ctrls  []string // controllers enabled for sluice's tree (available ones of v2Controllers)

	idle idleCache // statistics of empty buckets (idle.go)

	mu      sync.RWMutex // guards the fields below
	cfg     Config
	parent  *cgroup2.Manager
	buckets []*cgroup2.Manager
}

func newV2(cfg Config, own map[string]string, log *zap.Logger) (Manager, error) {
	base := ownBase(own, "", cfg.Mountpoint, log)
	if base != "/" && path.Base(base) == agentLeaf {
		// Moved there by an earlier New (see the package doc).
		base = path.Dir(base)
	}
	return newV2Tree(cfg, cfg.Mountpoint, base, true, log)
}

// agentLeaf is the leaf cgroup the agent moves itself to in ModeUnified.
const agentLeaf = "agent"

func newV2Tree(cfg Config, mount, base string, limits bool, log *zap.Logger) (*v2Manager, error) {
	m := &v2Manager{log: log, mount: mount, base: base, root: cfg.Root, limits: limits}
	if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
		return nil, &UnsupportedError{Feature: "cgroup2 tree at " + mount, Need: "mount cgroup2 there (" + err.Error() + ")"}
	}
	if limits {
		if err := m.prepareControllers(); err != nil {
			return nil, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.applyLocked(cfg); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *v2Manager) group(rel string) string { return path.Join(m.base, m.root, rel) }
func (m *v2Manager) dir(rel string) string   { return filepath.Join(m.mount, m.group(rel)) }

// prepareControllers finds which controllers the base cgroup offers and, if
// some are not yet enabled in its subtree_control while it holds processes,
// moves those processes to the leaf <base>/agent (no internal processes).
func (m *v2Manager) prepareControllers() error {
	baseDir := filepath.Join(m.mount, m.base)
	b, err := os.ReadFile(filepath.Join(baseDir, "cgroup.controllers"))
	if err != nil {
		return permissionError("read", baseDir+"/cgroup.controllers", err)
	}
	avail := strings.Fields(string(b))
	var missing []string
	for _, c := range v2Controllers {
		if slices.Contains(avail, c) {
			m.ctrls = append(m.ctrls, c)
		} else {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		m.log.Warn(fmt.Sprintf("limits unavailable on v2: controllers %s missing", strings.Join(missing, ", ")),
			zap.String("cgroup", baseDir), zap.String("cgroup.controllers", strings.TrimSpace(string(b))),
			zap.String("fix", "enable them in the parent's cgroup.subtree_control (systemd: Delegate=yes)"))
	}
	if len(m.ctrls) == 0 || m.base == "/" {
		return nil // nothing to enable, or the root (exempt from the rule)
	}
	b, err = os.ReadFile(filepath.Join(baseDir, "cgroup.subtree_control"))
	if err != nil {
		return permissionError("read", baseDir+"/cgroup.subtree_control", err)
	}
	enabled := strings.Fields(string(b))
	need := false
	for _, c := range m.ctrls {
		need = need || !slices.Contains(enabled, c)
	}
	if !need {
		return nil
	}
	pids, err := readProcs(baseDir)
	if err != nil {
		return permissionError("read", baseDir+"/cgroup.procs", err)
	}
	if len(pids) == 0 {
		return nil
	}
	leaf, err := cgroup2.NewManager(m.mount, path.Join(m.base, agentLeaf), &cgroup2.Resources{})
	if err != nil {
		return permissionError("create", filepath.Join(baseDir, agentLeaf), err)
	}
	for _, pid := range pids {
		if err := leaf.AddProc(uint64(pid)); err != nil && !errors.Is(err, os.ErrNotExist) && !isESRCH(err) {
			return permissionError("move process "+strconv.Itoa(pid)+" to", filepath.Join(baseDir, agentLeaf), err)
		}
	}
	m.log.Info("moved the agent's processes to a leaf cgroup so controllers can be enabled",
		zap.String("leaf", filepath.Join(baseDir, agentLeaf)), zap.Int("processes", len(pids)))
	return nil
}

// applyLocked creates or adopts the tree for cfg and applies its limits.
func (m *v2Manager) applyLocked(cfg Config) error {
	var err error
	if m.parent, err = cgroup2.NewManager(m.mount, m.group(""), &cgroup2.Resources{}); err != nil {
		return permissionError("create", m.dir(""), err)
	}
	if _, err := cgroup2.NewManager(m.mount, m.group("repos"), &cgroup2.Resources{}); err != nil {
		return permissionError("create", m.dir("repos"), err)
	}
	buckets := m.buckets
	for i := len(buckets); i < cfg.Buckets; i++ {
		b, err := cgroup2.NewManager(m.mount, m.group(bucketRel(i)), &cgroup2.Resources{})
		if err != nil {
			return permissionError("create", m.dir(bucketRel(i)), err)
		}
		buckets = append(buckets, b)
	}
	if len(m.ctrls) > 0 {
		// Enables the controllers in base, <root> and <root>/repos.
		if err := buckets[0].ToggleControllers(m.ctrls, cgroup2.Enable); err != nil {
			return permissionError("enable controllers "+strings.Join(m.ctrls, " ")+" below", m.dir(""), err)
		}
	}
	if m.limits {
		m.warnUnenforced(cfg)
		if err := m.setLimits(m.parent, m.dir(""), cfg.Parent); err != nil {
			return err
		}
		for i := range cfg.Buckets {
			if err := m.setLimits(buckets[i], m.dir(bucketRel(i)), cfg.Bucket); err != nil {
				return err
			}
		}
	}
	m.buckets = buckets[:cfg.Buckets]
	m.cfg = cfg
	pruneSurplus(m.dir("repos"), cfg.Buckets, m.log, func(rel string) error {
		c, err := cgroup2.Load(m.group(rel), cgroup2.WithMountpoint(m.mount))
		if err != nil {
			return err
		}
		return c.Delete()
	})
	return nil
}

// warnUnenforced logs the configured limits that a missing controller leaves
// unenforced.
func (m *v2Manager) warnUnenforced(cfg Config) {
	var lost []string
	for _, l := range []Limits{cfg.Parent, cfg.Bucket} {
		if l.MemoryBytes > 0 && !slices.Contains(m.ctrls, "memory") && !slices.Contains(lost, "memory_bytes") {
			lost = append(lost, "memory_bytes")
		}
		if l.CPUShares > 0 && !slices.Contains(m.ctrls, "cpu") && !slices.Contains(lost, "cpu_shares") {
			lost = append(lost, "cpu_shares")
		}
		if l.CPUQuotaUs > 0 && !slices.Contains(m.ctrls, "cpu") && !slices.Contains(lost, "cpu_quota_us") {
			lost = append(lost, "cpu_quota_us")
		}
	}
	if len(lost) > 0 {
		m.log.Warn("configured cgroup limits not enforced: their cgroup2 controllers are missing",
			zap.Strings("limits", lost), zap.Strings("enabled_controllers", m.ctrls), zap.String("cgroup", m.dir("")))
	}
}

// setLimits writes l to one cgroup, for the controllers that are enabled.
func (m *v2Manager) setLimits(c *cgroup2.Manager, dir string, l Limits) error {
	res := &cgroup2.Resources{}
	if slices.Contains(m.ctrls, "cpu") {
		w := uint64(100) // the cgroup2 default
		if l.CPUShares > 0 {
			w = sharesToWeight(l.CPUShares)
		}
		var quota *int64
		if l.CPUQuotaUs > 0 {
			quota = &l.CPUQuotaUs
		}
		period := uint64(cpuPeriodUs)
		res.CPU = &cgroup2.CPU{Weight: &w, Max: cgroup2.NewCPUMax(quota, &period)}
	}
	if slices.Contains(m.ctrls, "memory") {
		if l.MemoryBytes > 0 {
			res.Memory = &cgroup2.Memory{Max: &l.MemoryBytes}
		} else if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte("max"), 0); err != nil {
			// containerd's Memory.Max cannot express "max" (no limit).
			return permissionError("write", dir+"/memory.max", err)
		}
	}
	if err := c.Update(res); err != nil {
		return permissionError("set limits of", dir, err)
	}
	return nil
}

// sharesToWeight converts v1 cpu.shares to v2 cpu.weight as systemd and runc
// do: [2, 262144] → [1, 10000], 1024 → 39.
func sharesToWeight(shares uint64) uint64 {
	if shares < 2 {
		shares = 2
	}
	if shares > 262144 {
		shares = 262144
	}
	return 1 + ((shares-2)*9999)/262142
}

func (m *v2Manager) Mode() Mode { return ModeUnified }

func (m *v2Manager) bucket(i int) (*cgroup2.Manager, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if i < 0 || i >= len(m.buckets) {
		return nil, fmt.Errorf("bucket %d out of range [0, %d)", i, len(m.buckets))
	}
	return m.buckets[i], nil
}

func (m *v2Manager) inRange(i int) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return i >= 0 && i < len(m.buckets)
}

func (m *v2Manager) ParentPath() string { return m.group("") }

// Buckets is the count of the last applyLocked that succeeded (it sets
// cfg last).
func (m *v2Manager) Buckets() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cfg.Buckets
}

func (m *v2Manager) Bucket(repo []byte) int { return BucketFor(repo, m.Buckets()) }

func (m *v2Manager) BucketPath(i int) string {
	if !m.inRange(i) {
		return ""
	}
	return m.group(bucketRel(i))
}

func (m *v2Manager) UnifiedDir(i int) string {
	if !m.inRange(i) {
		return ""
	}
	return m.dir(bucketRel(i))
}

func (m *v2Manager) Place(pid, i int) error {
	b, err := m.bucket(i)
	if err != nil {
		return err
	}
	if err := b.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("place pid %d in %s: %w", pid, m.dir(bucketRel(i)), err)
	}
	return nil
}

func (m *v2Manager) Update(cfg Config) error {
	defer m.idle.reset() // limits may change: no stale idle read
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cfg.Mountpoint != m.cfg.Mountpoint || cfg.Root != m.cfg.Root {
		return errors.New("cgroup mountpoint and hierarchy_root cannot change on reload: restart sluiced")
	}
	return m.applyLocked(cfg)
}

func (m *v2Manager) ParentStats() (Stats, error) { return readV2Stats(m.dir("")) }

func (m *v2Manager) BucketStats(i int) (Stats, error) {
	if _, err := m.bucket(i); err != nil {
		return Stats{}, err
	}
	dir := m.dir(bucketRel(i))
	usage := func() (time.Duration, error) {
		cs, err := readFlatKeyed(filepath.Join(dir, "cpu.stat"))
		return time.Duration(cs["usage_usec"]) * time.Microsecond, err
	}
	return m.idle.read(i, dir, usage, func() (Stats, error) { return readV2Stats(dir) })
}

func (m *v2Manager) Processes(i int) ([]int, error) {
	if _, err := m.bucket(i); err != nil {
		return nil, err
	}
	return readProcs(m.dir(bucketRel(i)))
}

func (m *v2Manager) Destroy() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := destroyTree(m.dir(""), func(rel string) error {
		c, err := cgroup2.Load(m.group(rel), cgroup2.WithMountpoint(m.mount))
		if err != nil {
			return err
		}
		return c.Delete()
	})
	if err == nil {
		m.buckets = nil
	}
	return err
}

// checkEmpty returns an error naming the first cgroup below (and including)
// dir that holds a process.
func checkEmpty(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		pids, err := readProcs(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(pids) > 0 {
			return fmt.Errorf("cgroup %s still holds %d process(es) (e.g. pid %d): not removing it", p, len(pids), pids[0])
		}
		return nil
	})
}

// destroyTree removes the cgroup at dir and every cgroup below it, deepest
// first, through del (called with the path relative to dir), if none holds a
// process.
func destroyTree(dir string, del func(rel string) error) error {
	if err := checkEmpty(dir); err != nil {
		return err
	}
	var rels []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.IsDir() {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			if rel == "." {
				rel = ""
			}
			rels = append(rels, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, rel := range slices.Backward(rels) {
		if err := del(rel); err != nil {
			return fmt.Errorf("remove cgroup %s: %w", filepath.Join(dir, rel), err)
		}
	}
	return nil
}

// pruneSurplus removes bucket directories reposDir/<i> with i >= n that hold
// no process; it keeps (and logs) those that do.
func pruneSurplus(reposDir string, n int, log *zap.Logger, del func(rel string) error) {
	ents, err := os.ReadDir(reposDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		i, err := strconv.Atoi(e.Name())
		if !e.IsDir() || err != nil || i < n {
			continue
		}
		dir := filepath.Join(reposDir, e.Name())
		if err := checkEmpty(dir); err != nil {
			log.Warn("keeping a surplus bucket that holds processes", zap.String("cgroup", dir), zap.Error(err))
			continue
		}
		if err := del(bucketRel(i)); err != nil {
			log.Warn("cannot remove a surplus bucket", zap.String("cgroup", dir), zap.Error(err))
		}
	}
}
