package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// helperEnv selects a helper mode when the test binary is re-executed.
const helperEnv = "SLUICE_CGROUP_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "wait": // block until stdin closes
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	case "hog": // after one byte on stdin, allocate and touch 256 MiB
		waitGo()
		b := make([]byte, 256<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		fmt.Println(len(b))
		os.Exit(0)
	case "burn": // after one byte on stdin, spin for 1 s of wall time
		waitGo()
		n := 0
		for start := time.Now(); time.Since(start) < time.Second; {
			n++
		}
		os.Exit(0)
	default:
		os.Exit(2)
	}
}

func waitGo() {
	var b [1]byte
	if _, err := os.Stdin.Read(b[:]); err != nil {
		os.Exit(3)
	}
}

var testSeq atomic.Int64

// testRoot is a unique hierarchy root for one test.
func testRoot() string {
	return fmt.Sprintf("sluice-test-%d-%d", os.Getpid(), testSeq.Add(1))
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("creating cgroups needs root (euid %d)", os.Geteuid())
	}
}

// newTestManager creates a manager under a unique root and removes the
// hierarchy in t.Cleanup (after the children, which are registered later and
// so cleaned up first).
func newTestManager(t testing.TB, cfg Config) Manager {
	t.Helper()
	requireRoot(t)
	if cfg.Root == "" {
		cfg.Root = testRoot()
	}
	if cfg.Buckets == 0 {
		cfg.Buckets = 4
	}
	m, err := New(cfg, zaptest.NewLogger(t))
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("cgroups unusable here: %v", err)
	}
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Destroy(); err != nil {
			t.Errorf("Destroy: %v", err)
		}
		for _, d := range hierarchyDirs(t, m, cfg) {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup %s left behind (stat: %v)", d, err)
			}
		}
	})
	return m
}

// hierarchyDirs are the parent directories of the manager's tree in every
// hierarchy it uses.
func hierarchyDirs(t testing.TB, m Manager, cfg Config) []string {
	switch mm := m.(type) {
	case *v1Manager:
		var ds []string
		for _, s := range mm.subsystems {
			ds = append(ds, mm.dir(s.Name(), ""))
		}
		if mm.uni != nil {
			ds = append(ds, mm.uni.dir(""))
		}
		return ds
	case *v2Manager:
		return []string{mm.dir("")}
	}
	t.Fatalf("unknown manager %T", m)
	return nil
}

type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   bytes.Buffer
}

// startChild re-executes the test binary in a helper mode; it is killed and
// reaped in t.Cleanup.
func startChild(t testing.TB, mode string, attr *syscall.SysProcAttr) *child {
	t.Helper()
	c := &child{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	c.cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	c.cmd.SysProcAttr = attr
	c.cmd.Stdout = &c.out
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", mode, err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// go sends the byte a "hog" or "burn" helper waits for.
func (c *child) goOn(t testing.TB) {
	t.Helper()
	if _, err := c.stdin.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
}

func procCgroup(t testing.TB, pid int) map[string]string {
	t.Helper()
	m, err := readProcCgroup(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ownCgroup(t testing.TB) map[string]string { return procCgroup(t, os.Getpid()) }

func readTrim(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestModeDetected(t *testing.T) {
	got := detectMode(defaultMountpoint)
	if got == ModeUnavailable {
		t.Skipf("no cgroup filesystem at %s", defaultMountpoint)
	}
	// Compare with an independent statfs of the default mountpoint.
	var st unix.Statfs_t
	if err := unix.Statfs(defaultMountpoint, &st); err != nil {
		t.Fatal(err)
	}
	want := ModeV1
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		want = ModeUnified
	} else if unix.Statfs(defaultMountpoint+"/unified", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		want = ModeHybrid
	}
	if got != want {
		t.Errorf("detectMode = %v, want %v", got, want)
	}
	for m, s := range map[Mode]string{ModeUnavailable: "unavailable", ModeV1: "v1", ModeHybrid: "hybrid", ModeUnified: "unified"} {
		if m.String() != s {
			t.Errorf("%d.String() = %q, want %q", m, m.String(), s)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Buckets: 0},
		{Buckets: 1, Root: "../escape"},
		{Buckets: 1, Root: "/abs"},
		{Buckets: 1, Root: "a/../../b"},
		{Buckets: 1, Bucket: Limits{CPUQuotaUs: 10}},
		{Buckets: 1, Parent: Limits{MemoryBytes: -1}},
		{Buckets: 1, Bucket: Limits{CPUShares: 1}},
	} {
		if _, err := New(cfg, zaptest.NewLogger(t)); err == nil || errors.Is(err, ErrUnsupported) {
			t.Errorf("New(%+v) = %v, want a config error", cfg, err)
		}
	}
}

func TestNewUnsupported(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join("testdata", "proc_self_cgroup_hybrid")
	for _, tc := range []struct {
		mode Mode
		want string
	}{
		{ModeUnavailable, "cgroup filesystem at " + dir},
		{ModeV1, "cgroup v1 memory controller"},
		{ModeUnified, "cgroup2 tree at " + dir},
	} {
		cfg := Config{Mountpoint: dir, Buckets: 1, ProcSelfCgroup: self, forceMode: tc.mode}
		if tc.mode == ModeUnavailable {
			cfg.forceMode = 0 // detect: a tmpfs dir is no cgroup filesystem
		}
		_, err := New(cfg, zaptest.NewLogger(t))
		var ue *UnsupportedError
		if !errors.As(err, &ue) || !errors.Is(err, ErrUnsupported) {
			t.Fatalf("mode %v: New = %v, want *UnsupportedError", tc.mode, err)
		}
		if !strings.Contains(err.Error(), tc.want) || ue.Need == "" {
			t.Errorf("mode %v: error %q does not name %q or says no fix", tc.mode, err, tc.want)
		}
	}
}

// wantPaths returns the cgroup paths bucket i must have in /proc/PID/cgroup,
// per controller key ("" = unified).
func wantPaths(t *testing.T, m Manager, root string, i int) map[string]string {
	own := ownCgroup(t)
	rel := path.Join(root, bucketRel(i))
	want := map[string]string{"memory": m.BucketPath(i)}
	if m.Mode() == ModeUnified {
		want = map[string]string{"": path.Join(own[""], rel)}
		return want
	}
	for _, c := range []string{"cpu", "cpuacct", "pids"} {
		if _, err := os.Stat(filepath.Join(defaultMountpoint, c, "cgroup.procs")); err == nil {
			want[c] = path.Join(own[c], rel)
		}
	}
	if m.Mode() == ModeHybrid {
		want[""] = path.Join(own[""], rel)
	}
	if got := path.Join(own["memory"], rel); want["memory"] != got {
		t.Errorf("BucketPath(%d) = %q, want %q", i, want["memory"], got)
	}
	return want
}

func checkPlaced(t *testing.T, pid int, want map[string]string) {
	t.Helper()
	got := procCgroup(t, pid)
	for k, w := range want {
		if got[k] != w {
			t.Errorf("pid %d: /proc/PID/cgroup %q line = %q, want %q", pid, k, got[k], w)
		}
	}
}

func TestCreateAdoptPlace(t *testing.T) {
	root := testRoot()
	cfg := Config{Root: root, Buckets: 4}
	m := newTestManager(t, cfg)
	if m.Mode() == ModeUnified {
		t.Logf("unified host: checking the cgroup2 tree only")
	}
	for _, d := range hierarchyDirs(t, m, cfg) {
		for i := range cfg.Buckets {
			if _, err := os.Stat(filepath.Join(d, bucketRel(i), "cgroup.procs")); err != nil {
				t.Errorf("bucket %d missing: %v", i, err)
			}
		}
	}
	if m.BucketPath(-1) != "" || m.BucketPath(4) != "" || m.UnifiedDir(4) != "" {
		t.Error("out-of-range bucket has a path")
	}
	if err := m.Place(os.Getpid(), 4); err == nil {
		t.Error("Place into bucket 4 of 4: no error")
	}

	c := startChild(t, "wait", nil)
	if err := m.Place(c.pid(), 2); err != nil {
		t.Fatalf("Place: %v", err)
	}
	want := wantPaths(t, m, root, 2)
	checkPlaced(t, c.pid(), want)
	if pids, err := m.Processes(2); err != nil || !slices.Equal(pids, []int{c.pid()}) {
		t.Errorf("Processes(2) = %v, %v; want [%d]", pids, err, c.pid())
	}
	st, err := m.BucketStats(2)
	if err != nil {
		t.Fatal(err)
	}
	// (No memory check: v1 does not move a process's existing charges with it.)
	if st.Processes != 1 {
		t.Errorf("BucketStats(2) = %+v; want 1 process", st)
	}
	if m.Mode() == ModeHybrid && (st.MemoryPressure == nil || st.CPUPressure == nil) {
		t.Errorf("hybrid BucketStats(2) without per-cgroup PSI from the unified tree: %+v", st)
	}
	ps, err := m.ParentStats()
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeUnified && ps.MemoryUsage < st.MemoryUsage {
		t.Errorf("parent memory %d < bucket memory %d: not hierarchical", ps.MemoryUsage, st.MemoryUsage)
	}
	// The accessors the agent and sluiced use instead of cutting paths.
	if got, want := m.ParentPath(), path.Dir(path.Dir(m.BucketPath(2))); got != want || !strings.HasSuffix(got, "/"+root) {
		t.Errorf("ParentPath() = %q, want %q (ending in /%s)", got, want, root)
	}
	if m.Buckets() != 4 {
		t.Errorf("Buckets() = %d, want 4", m.Buckets())
	}
	for _, repo := range []string{"/srv/a.git", "/srv/b.git", "/srv/c.git"} {
		if got := m.Bucket([]byte(repo)); got != BucketFor([]byte(repo), 4) {
			t.Errorf("Bucket(%q) = %d, want BucketFor(…, 4) = %d", repo, got, BucketFor([]byte(repo), 4))
		}
	}
	if tree := ReadTree(m); tree.ParentErr != nil || tree.Buckets.Processes != 1 || tree.Parent.MemoryLimit != ps.MemoryLimit {
		t.Errorf("ReadTree = %+v, want the parent read and 1 process summed over the buckets", tree)
	}

	// Adopt: a second New on the same hierarchy keeps the process where it is.
	m2, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("adopting New: %v", err)
	}
	checkPlaced(t, c.pid(), want)
	if pids, err := m2.Processes(2); err != nil || !slices.Equal(pids, []int{c.pid()}) {
		t.Errorf("adopted Processes(2) = %v, %v; want [%d]", pids, err, c.pid())
	}
	// Moving between buckets.
	if err := m2.Place(c.pid(), 3); err != nil {
		t.Fatal(err)
	}
	checkPlaced(t, c.pid(), wantPaths(t, m, root, 3))

	// Destroy never kills and refuses while a process is inside.
	if err := m2.Destroy(); err == nil || !strings.Contains(err.Error(), "process") {
		t.Errorf("Destroy with a process inside = %v, want a refusal", err)
	}
	if err := c.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("child gone after a refused Destroy: %v", err)
	}
	for _, d := range hierarchyDirs(t, m, cfg) {
		if _, err := os.Stat(filepath.Join(d, "repos", "3")); err != nil {
			t.Errorf("refused Destroy removed %s: %v", d, err)
		}
	}
}

func TestUpdateLimitsAndBuckets(t *testing.T) {
	cfg := Config{Buckets: 4, Root: testRoot(),
		Parent: Limits{MemoryBytes: 512 << 20},
		Bucket: Limits{MemoryBytes: 128 << 20, CPUShares: 512, CPUQuotaUs: 50000}}
	m := newTestManager(t, cfg)
	mm, ok := m.(*v1Manager)
	if !ok {
		t.Skipf("limit files checked here are v1 (mode %v); see TestUnifiedTree for v2", m.Mode())
	}
	b1 := func(ctrl, file string) string {
		return readTrim(t, filepath.Join(mm.dir(cgroup1.Name(ctrl), bucketRel(1)), file))
	}
	if got := readTrim(t, filepath.Join(mm.dir("memory", ""), "memory.limit_in_bytes")); got != strconv.Itoa(512<<20) {
		t.Errorf("parent memory.limit_in_bytes = %s", got)
	}
	if b1("memory", "memory.limit_in_bytes") != strconv.Itoa(128<<20) || b1("cpu", "cpu.shares") != "512" ||
		b1("cpu", "cpu.cfs_quota_us") != "50000" || b1("cpu", "cpu.cfs_period_us") != "100000" {
		t.Errorf("bucket limits not applied: mem %s shares %s quota %s", b1("memory", "memory.limit_in_bytes"), b1("cpu", "cpu.shares"), b1("cpu", "cpu.cfs_quota_us"))
	}
	if st, err := m.BucketStats(1); err != nil || st.MemoryLimit != 128<<20 {
		t.Errorf("BucketStats(1).MemoryLimit = %d, %v", st.MemoryLimit, err)
	}

	c := startChild(t, "wait", nil)
	if err := m.Place(c.pid(), 3); err != nil {
		t.Fatal(err)
	}
	// Reload: lift every bucket limit, shrink to 2 buckets. Bucket 3 holds a
	// process and stays; bucket 2 is empty and goes.
	cfg2 := cfg
	cfg2.Buckets, cfg2.Bucket = 2, Limits{}
	if err := m.Update(cfg2); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if b1("cpu", "cpu.shares") != "1024" || b1("cpu", "cpu.cfs_quota_us") != "-1" {
		t.Errorf("limits not lifted: shares %s quota %s", b1("cpu", "cpu.shares"), b1("cpu", "cpu.cfs_quota_us"))
	}
	if st, err := m.BucketStats(1); err != nil || st.MemoryLimit != 0 {
		t.Errorf("lifted BucketStats(1).MemoryLimit = %d, %v; want 0 (unlimited)", st.MemoryLimit, err)
	}
	for _, d := range hierarchyDirs(t, m, cfg) {
		if _, err := os.Stat(filepath.Join(d, "repos", "2")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("empty surplus bucket %s/repos/2 kept (%v)", d, err)
		}
		if _, err := os.Stat(filepath.Join(d, "repos", "3")); err != nil {
			t.Errorf("surplus bucket with a process removed: %v", err)
		}
	}
	checkPlaced(t, c.pid(), map[string]string{"memory": path.Join(ownCgroup(t)["memory"], cfg.Root, "repos/3")})
	if m.BucketPath(3) != "" || m.Place(c.pid(), 3) == nil {
		t.Error("bucket 3 still addressable after shrinking to 2")
	}
	if m.Buckets() != 2 || m.Bucket([]byte("/srv/x.git")) != BucketFor([]byte("/srv/x.git"), 2) {
		t.Errorf("after shrinking to 2: Buckets() = %d", m.Buckets())
	}
	// Grow again: bucket 3 is adopted with its process.
	if err := m.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if pids, err := m.Processes(3); err != nil || !slices.Equal(pids, []int{c.pid()}) {
		t.Errorf("Processes(3) after growing = %v, %v", pids, err)
	}
	if b1("cpu", "cpu.cfs_quota_us") != "50000" {
		t.Error("limits not re-applied")
	}
	bad := cfg
	bad.Root = "other"
	if err := m.Update(bad); err == nil {
		t.Error("Update changing the root: no error")
	}
	if m.Buckets() != 4 {
		t.Errorf("Buckets() = %d after growing back and a refused Update, want 4", m.Buckets())
	}
}

func TestMemoryLimitOOMKill(t *testing.T) {
	for _, line := range strings.Split(readTrim(t, "/proc/meminfo"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "SwapTotal:" && f[1] != "0" {
			t.Skipf("swap is on (%s): a 64 MiB memory limit without a memsw limit would swap, not OOM-kill", line)
		}
	}
	m := newTestManager(t, Config{Buckets: 2, Bucket: Limits{MemoryBytes: 64 << 20}})
	if m.Mode() == ModeUnified {
		requireV2Controller(t, m.(*v2Manager), "memory")
	}
	c := startChild(t, "hog", nil)
	if err := m.Place(c.pid(), 1); err != nil {
		t.Fatal(err)
	}
	c.goOn(t)
	err := c.cmd.Wait()
	ws, _ := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("hog in a 64 MiB bucket: wait = %v (status %v, output %q), want killed by SIGKILL", err, ws, c.out.String())
	}
	st, err := m.BucketStats(1)
	if err != nil {
		t.Fatal(err)
	}
	if st.OOMKills < 1 {
		t.Errorf("BucketStats(1).OOMKills = %d, want >= 1", st.OOMKills)
	}
	if st.MemoryLimit != 64<<20 {
		t.Errorf("BucketStats(1).MemoryLimit = %d, want %d", st.MemoryLimit, 64<<20)
	}
	if other, err := m.BucketStats(0); err != nil || other.OOMKills != 0 {
		t.Errorf("BucketStats(0).OOMKills = %d, %v; want 0", other.OOMKills, err)
	}
}

func TestCPUQuotaThrottles(t *testing.T) {
	m := newTestManager(t, Config{Buckets: 2, Bucket: Limits{CPUQuotaUs: 20000}})
	if m.Mode() == ModeUnified {
		requireV2Controller(t, m.(*v2Manager), "cpu")
	}
	c := startChild(t, "burn", nil)
	if err := m.Place(c.pid(), 0); err != nil {
		t.Fatal(err)
	}
	c.goOn(t)
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("burner: %v", err)
	}
	st, err := m.BucketStats(0)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUPeriods == 0 || st.CPUThrottledPeriods == 0 {
		t.Fatalf("burner at 20%% quota: periods %d, throttled %d; want throttling", st.CPUPeriods, st.CPUThrottledPeriods)
	}
	ratio := float64(st.CPUThrottledPeriods) / float64(st.CPUPeriods)
	t.Logf("periods %d throttled %d (%.0f%%) throttled time %v cpu %v", st.CPUPeriods, st.CPUThrottledPeriods, 100*ratio, st.CPUThrottledTime, st.CPUUsage)
	// How many periods are throttled depends on how much CPU the burner
	// got at all (a loaded machine gives it less): only logged. The quota
	// itself is asserted below by the usage cap.
	if st.CPUThrottledTime == 0 || st.CPUUsage == 0 {
		t.Errorf("throttled time %v, usage %v: want both > 0", st.CPUThrottledTime, st.CPUUsage)
	}
	// The quota caps usage: 1 s of wall time at 20% ≈ 200 ms (+ one period of slack and start-up).
	if st.CPUUsage > 600*time.Millisecond {
		t.Errorf("CPU usage %v in 1 s at a 20%% quota", st.CPUUsage)
	}
}

func requireV2Controller(t *testing.T, m *v2Manager, ctrl string) {
	t.Helper()
	if !slices.Contains(m.ctrls, ctrl) {
		b, _ := os.ReadFile(filepath.Join(m.mount, m.base, "cgroup.controllers"))
		t.Skipf("cgroup2 at %s has no %s controller (cgroup.controllers: %s)", m.mount, ctrl, strings.TrimSpace(string(b)))
	}
}

// unifiedConfig returns a config whose manager runs in ModeUnified: the real
// one on a unified host, the unified tree of a hybrid host otherwise.
func unifiedConfig(t *testing.T) Config {
	switch detectMode(defaultMountpoint) {
	case ModeUnified:
		return Config{}
	case ModeHybrid:
		return Config{Mountpoint: defaultMountpoint + "/unified", forceMode: ModeUnified}
	}
	t.Skipf("no cgroup2 tree at %s or %s/unified", defaultMountpoint, defaultMountpoint)
	return Config{}
}

func TestUnifiedTree(t *testing.T) {
	cfg := unifiedConfig(t)
	cfg.Buckets = 3
	cfg.Root = testRoot()
	m := newTestManager(t, cfg)
	mm := m.(*v2Manager)
	if m.Mode() != ModeUnified {
		t.Fatalf("Mode = %v", m.Mode())
	}
	c := startChild(t, "wait", nil)
	if err := m.Place(c.pid(), 1); err != nil {
		t.Fatal(err)
	}
	want := path.Join(ownCgroup(t)[""], cfg.Root, "repos/1")
	checkPlaced(t, c.pid(), map[string]string{"": want})
	if m.BucketPath(1) != want || m.UnifiedDir(1) != filepath.Join(mm.mount, want) {
		t.Errorf("BucketPath %q UnifiedDir %q, want %q under %s", m.BucketPath(1), m.UnifiedDir(1), want, mm.mount)
	}
	if got := m.ParentPath(); got != path.Join(ownCgroup(t)[""], cfg.Root) {
		t.Errorf("ParentPath() = %q, want %q", got, path.Join(ownCgroup(t)[""], cfg.Root))
	}
	if m.Buckets() != 3 {
		t.Errorf("Buckets() = %d, want 3", m.Buckets())
	}
	st, err := m.BucketStats(1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes != 1 || st.CPUPressure == nil || st.MemoryPressure == nil {
		t.Errorf("BucketStats(1) = %+v, want 1 process and PSI", st)
	}
	if pids, err := m.Processes(1); err != nil || !slices.Equal(pids, []int{c.pid()}) {
		t.Errorf("Processes(1) = %v, %v", pids, err)
	}
	if _, err := m.ParentStats(); err != nil {
		t.Error(err)
	}

	// Limits, where the controllers exist.
	cfg.Bucket = Limits{MemoryBytes: 64 << 20, CPUShares: 1024, CPUQuotaUs: 20000}
	if err := m.Update(cfg); err != nil {
		t.Fatalf("Update with limits: %v", err)
	}
	requireV2Controller(t, mm, "memory")
	requireV2Controller(t, mm, "cpu")
	d := m.UnifiedDir(1)
	if got := readTrim(t, d+"/memory.max"); got != strconv.Itoa(64<<20) {
		t.Errorf("memory.max = %s", got)
	}
	if got := readTrim(t, d+"/cpu.max"); got != "20000 100000" {
		t.Errorf("cpu.max = %s", got)
	}
	if got := readTrim(t, d+"/cpu.weight"); got != "39" {
		t.Errorf("cpu.weight = %s", got)
	}
	cfg.Bucket = Limits{}
	if err := m.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(t, d+"/memory.max"); got != "max" {
		t.Errorf("lifted memory.max = %s", got)
	}
}

func TestCloneIntoCgroup(t *testing.T) {
	m := newTestManager(t, Config{Buckets: 2})
	dir := m.UnifiedDir(1)
	if dir == "" {
		t.Skipf("no cgroup2 tree in mode %v: CLONE_INTO_CGROUP needs one", m.Mode())
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c := startChild(t, "wait", &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd})
	var mount string
	switch mm := m.(type) {
	case *v1Manager:
		mount = mm.uni.mount
	case *v2Manager:
		mount = mm.mount
	}
	got := procCgroup(t, c.pid())[""]
	if want := strings.TrimPrefix(dir, mount); got != want {
		t.Errorf("child started with CLONE_INTO_CGROUP: 0:: line = %q, want %q", got, want)
	}
	if pids, err := readProcs(dir); err != nil || !slices.Contains(pids, c.pid()) {
		t.Errorf("%s/cgroup.procs = %v, %v; want %d", dir, pids, err, c.pid())
	}
}

// TestConcurrentUse runs Place, stats and Update at once (for -race).
func TestConcurrentUse(t *testing.T) {
	cfg := Config{Buckets: 3, Root: testRoot()}
	m := newTestManager(t, cfg)
	c := startChild(t, "wait", nil)
	done := make(chan error, 3)
	go func() {
		var err error
		for i := 0; i < 50 && err == nil; i++ {
			err = m.Place(c.pid(), i%2)
		}
		done <- err
	}()
	go func() {
		var err error
		for i := 0; i < 50 && err == nil; i++ {
			_, err = m.BucketStats(i % 2)
			if err == nil {
				_, err = m.Processes(i % 2)
			}
		}
		done <- err
	}()
	go func() {
		var err error
		for i := 0; i < 10 && err == nil; i++ {
			next := cfg
			next.Bucket.CPUShares = uint64(512 + i)
			err = m.Update(next)
		}
		done <- err
	}()
	for range 3 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// TestInjectedOwnCgroup: with an injected /proc/self/cgroup naming a nested
// own cgroup (as a systemd service with Delegate=yes sees it), the hierarchy is
// created below that cgroup in every hierarchy.
func TestInjectedOwnCgroup(t *testing.T) {
	requireRoot(t)
	mode := detectMode(defaultMountpoint)
	if mode != ModeV1 && mode != ModeHybrid {
		t.Skipf("fixture is for v1/hybrid hosts; mode %v", mode)
	}
	own := ownCgroup(t)
	service := testRoot() + "-service"
	var lines []string
	var made []string
	for i, c := range []string{"memory", "cpu", "cpuacct", "pids", ""} {
		hier := filepath.Join(defaultMountpoint, c)
		if c == "" {
			hier = filepath.Join(defaultMountpoint, "unified")
		}
		if _, err := os.Stat(filepath.Join(hier, "cgroup.procs")); err != nil {
			continue
		}
		p := path.Join(own[c], service)
		if err := os.Mkdir(filepath.Join(hier, p), 0o755); err != nil {
			t.Fatal(err)
		}
		made = append(made, filepath.Join(hier, p))
		id := 9 - i
		if c == "" {
			id = 0
		}
		lines = append(lines, fmt.Sprintf("%d:%s:%s", id, c, p))
	}
	t.Cleanup(func() {
		for _, d := range made {
			if err := os.Remove(d); err != nil {
				t.Errorf("remove %s: %v", d, err)
			}
		}
	})
	self := filepath.Join(t.TempDir(), "cgroup")
	if err := os.WriteFile(self, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newTestManager(t, Config{Root: "sluice", Buckets: 2, ProcSelfCgroup: self})
	if want := path.Join(own["memory"], service, "sluice/repos/1"); m.BucketPath(1) != want {
		t.Errorf("BucketPath(1) = %q, want %q", m.BucketPath(1), want)
	}
	for _, d := range made {
		if _, err := os.Stat(filepath.Join(d, "sluice/repos/1/cgroup.procs")); err != nil {
			t.Errorf("bucket not created below the injected own cgroup: %v", err)
		}
	}
	c := startChild(t, "wait", nil)
	if err := m.Place(c.pid(), 1); err != nil {
		t.Fatal(err)
	}
	got := procCgroup(t, c.pid())
	if want := path.Join(own["cpu"], service, "sluice/repos/1"); got["cpu"] != want {
		t.Errorf("cpu line = %q, want %q", got["cpu"], want)
	}
}
