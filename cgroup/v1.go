package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.uber.org/zap"
)

// v1Manager serves ModeV1 and ModeHybrid: limits and stats on the v1 memory,
// cpu and cpuacct hierarchies, placement also in pids and (hybrid) the unified
// tree.
type v1Manager struct {
	log          *zap.Logger
	mode         Mode
	mount        string
	root         string
	bases        map[cgroup1.Name]string // the agent's own path per hierarchy
	subsystems   []cgroup1.Subsystem     // memory, cpu, cpuacct and, where mounted, pids
	uni          *v2Manager              // the unified tree (ModeHybrid), nil in ModeV1
	procPressure string                  // the system-wide PSI directory, for ModeV1
	idle         idleCache               // statistics of empty buckets (idle.go)

	mu      sync.RWMutex // guards the fields below
	cfg     Config
	parent  cgroup1.Cgroup
	buckets []cgroup1.Cgroup
	// count is the bucket count in force: set once New or Update has
	// succeeded in every hierarchy, the unified tree included.
	count int
}

func newV1(cfg Config, mode Mode, own map[string]string, log *zap.Logger) (Manager, error) {
	m := &v1Manager{
		log:          log,
		mode:         mode,
		mount:        cfg.Mountpoint,
		root:         cfg.Root,
		bases:        make(map[cgroup1.Name]string),
		procPressure: "/proc/pressure",
	}
	for _, name := range []cgroup1.Name{cgroup1.Memory, cgroup1.Cpu, cgroup1.Cpuacct, cgroup1.Pids} {
		hier := filepath.Join(cfg.Mountpoint, string(name))
		if _, err := os.Stat(filepath.Join(hier, "cgroup.procs")); err != nil {
			if name == cgroup1.Pids {
				log.Info("cgroup v1 pids hierarchy not mounted; placing without it", zap.String("path", hier))
				continue
			}
			return nil, &UnsupportedError{
				Feature: fmt.Sprintf("cgroup v1 %s controller at %s", name, hier),
				Need:    fmt.Sprintf("mount it (mount -t cgroup -o %s cgroup %s) or set [cgroups] mountpoint; or set [cgroups] enabled = false", name, hier),
			}
		}
		m.bases[name] = ownBase(own, string(name), hier, log)
		switch name {
		case cgroup1.Memory:
			m.subsystems = append(m.subsystems, cgroup1.NewMemory(cfg.Mountpoint))
		case cgroup1.Cpu:
			m.subsystems = append(m.subsystems, cgroup1.NewCpu(cfg.Mountpoint))
		case cgroup1.Cpuacct:
			m.subsystems = append(m.subsystems, cgroup1.NewCpuacct(cfg.Mountpoint))
		case cgroup1.Pids:
			m.subsystems = append(m.subsystems, cgroup1.NewPids(cfg.Mountpoint))
		}
	}
	if mode == ModeHybrid {
		uniMount := filepath.Join(cfg.Mountpoint, "unified")
		uni, err := newV2Tree(cfg, uniMount, ownBase(own, "", uniMount, log), false, log)
		if err != nil {
			return nil, err
		}
		m.uni = uni
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.applyLocked(cfg); err != nil {
		return nil, err
	}
	m.count = cfg.Buckets
	return m, nil
}

// pathFor is the containerd Path of <base>/<root>/<rel> in every hierarchy.
func (m *v1Manager) pathFor(rel string) cgroup1.Path {
	return func(name cgroup1.Name) (string, error) {
		b, ok := m.bases[name]
		if !ok {
			return "", cgroup1.ErrControllerNotActive
		}
		return path.Join(b, m.root, rel), nil
	}
}

func (m *v1Manager) hierarchy() ([]cgroup1.Subsystem, error) { return m.subsystems, nil }

// dir is the directory of <base>/<root>/<rel> in hierarchy name.
func (m *v1Manager) dir(name cgroup1.Name, rel string) string {
	return filepath.Join(m.mount, string(name), m.bases[name], m.root, rel)
}

// v1Resources maps Limits to v1 settings. "None" is written explicitly (-1,
// 1024 shares) so that a reload can lift a limit.
func v1Resources(l Limits) *specs.LinuxResources {
	mem := int64(-1)
	if l.MemoryBytes > 0 {
		mem = l.MemoryBytes
	}
	shares := uint64(1024)
	if l.CPUShares > 0 {
		shares = l.CPUShares
	}
	quota := int64(-1)
	if l.CPUQuotaUs > 0 {
		quota = l.CPUQuotaUs
	}
	period := uint64(cpuPeriodUs)
	return &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &mem},
		CPU:    &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period},
	}
}

// applyLocked creates or adopts the tree for cfg and applies its limits.
func (m *v1Manager) applyLocked(cfg Config) error {
	opt := cgroup1.WithHierarchy(m.hierarchy)
	parent, err := cgroup1.New(m.pathFor(""), v1Resources(cfg.Parent), opt)
	if err != nil {
		return permissionError("create or update", m.dir(cgroup1.Memory, ""), err)
	}
	buckets := make([]cgroup1.Cgroup, cfg.Buckets)
	res := v1Resources(cfg.Bucket)
	for i := range buckets {
		// New on an existing cgroup adopts it: it only mkdirs and writes limits.
		if buckets[i], err = cgroup1.New(m.pathFor(bucketRel(i)), res, opt); err != nil {
			return permissionError("create or update", m.dir(cgroup1.Memory, bucketRel(i)), err)
		}
	}
	m.parent, m.buckets, m.cfg = parent, buckets, cfg
	pruneSurplus(m.dir(cgroup1.Memory, "repos"), cfg.Buckets, m.log, func(rel string) error {
		c, err := cgroup1.Load(m.pathFor(rel), opt)
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		if err != nil {
			return err
		}
		return c.Delete()
	})
	return nil
}

func (m *v1Manager) Mode() Mode { return m.mode }

func (m *v1Manager) bucket(i int) (cgroup1.Cgroup, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if i < 0 || i >= len(m.buckets) {
		return nil, fmt.Errorf("bucket %d out of range [0, %d)", i, len(m.buckets))
	}
	return m.buckets[i], nil
}

func (m *v1Manager) ParentPath() string { return path.Join(m.bases[cgroup1.Memory], m.root) }

func (m *v1Manager) Buckets() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.count
}

func (m *v1Manager) Bucket(repo []byte) int { return BucketFor(repo, m.Buckets()) }

func (m *v1Manager) BucketPath(i int) string {
	if _, err := m.bucket(i); err != nil {
		return ""
	}
	return path.Join(m.bases[cgroup1.Memory], m.root, bucketRel(i))
}

func (m *v1Manager) UnifiedDir(i int) string {
	if m.uni == nil {
		return ""
	}
	return m.uni.UnifiedDir(i)
}

func (m *v1Manager) Place(pid, i int) error {
	b, err := m.bucket(i)
	if err != nil {
		return err
	}
	if pid <= 0 {
		return fmt.Errorf("place pid %d: invalid pid", pid)
	}
	if err := b.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("place pid %d in bucket %d: %w", pid, i, err)
	}
	if m.uni != nil {
		return m.uni.Place(pid, i)
	}
	return nil
}

func (m *v1Manager) Update(cfg Config) error {
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
	if err := m.applyLocked(cfg); err != nil {
		return err
	}
	if m.uni != nil {
		if err := m.uni.Update(cfg); err != nil {
			return err
		}
	}
	m.count = cfg.Buckets
	return nil
}

func (m *v1Manager) stats(rel string) (Stats, error) {
	psiMem := filepath.Join(m.procPressure, "memory")
	psiCPU := filepath.Join(m.procPressure, "cpu")
	if m.uni != nil {
		psiMem = filepath.Join(m.uni.dir(rel), "memory.pressure")
		psiCPU = filepath.Join(m.uni.dir(rel), "cpu.pressure")
	}
	return readV1Stats(m.dir(cgroup1.Memory, rel), m.dir(cgroup1.Cpu, rel), m.dir(cgroup1.Cpuacct, rel), psiMem, psiCPU)
}

func (m *v1Manager) ParentStats() (Stats, error) { return m.stats("") }

func (m *v1Manager) BucketStats(i int) (Stats, error) {
	if _, err := m.bucket(i); err != nil {
		return Stats{}, err
	}
	rel := bucketRel(i)
	mem := m.dir(cgroup1.Memory, rel)
	// A bucket's own PSI exists only in the unified tree (ModeHybrid); in
	// ModeV1 it would be the host's /proc/pressure again, the parent's.
	psiMem, psiCPU := "", ""
	if m.uni != nil {
		psiMem, psiCPU = filepath.Join(m.uni.dir(rel), "memory.pressure"), filepath.Join(m.uni.dir(rel), "cpu.pressure")
	}
	acct := m.dir(cgroup1.Cpuacct, rel)
	usage := func() (time.Duration, error) {
		u, err := readUintFile(filepath.Join(acct, "cpuacct.usage"))
		return time.Duration(u), err
	}
	return m.idle.read(i, mem, usage, func() (Stats, error) {
		return readV1Stats(mem, m.dir(cgroup1.Cpu, rel), m.dir(cgroup1.Cpuacct, rel), psiMem, psiCPU)
	})
}

func (m *v1Manager) Processes(i int) ([]int, error) {
	if _, err := m.bucket(i); err != nil {
		return nil, err
	}
	return readProcs(m.dir(cgroup1.Memory, bucketRel(i)))
}

func (m *v1Manager) Destroy() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.subsystems {
		if err := checkEmpty(m.dir(s.Name(), "")); err != nil {
			return err
		}
	}
	if m.uni != nil {
		if err := checkEmpty(m.uni.dir("")); err != nil {
			return err
		}
	}
	opt := cgroup1.WithHierarchy(m.hierarchy)
	err := destroyTree(m.dir(cgroup1.Memory, ""), func(rel string) error {
		c, err := cgroup1.Load(m.pathFor(rel), opt)
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		if err != nil {
			return err
		}
		return c.Delete()
	})
	if err != nil {
		return err
	}
	m.buckets = nil
	if m.uni != nil {
		return m.uni.Destroy()
	}
	return nil
}
