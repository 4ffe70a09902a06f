package procfs

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fixture is the proc tree in testdata/proc (see testdata/README).
var fixture = FS{Root: filepath.Join("testdata", "proc")}

func TestStat(t *testing.T) {
	s, err := fixture.Stat(4242)
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{Comm: "git daemon) (x", State: 'S', PPID: 1, UTime: 250, STime: 30, CUTime: 7, CSTime: 3, StartTime: 123456}
	if s != want {
		t.Errorf("Stat(4242) = %+v, want %+v", s, want)
	}
	if s.CPU() != 290 || s.CPU().Microseconds() != 2900000 {
		t.Errorf("CPU = %d ticks = %d µs, want 290 = 2900000", s.CPU(), s.CPU().Microseconds())
	}
	if s, err := fixture.Stat(4301); err != nil || s.State != 'Z' || s.PPID != 4300 {
		t.Errorf("Stat(4301) = %+v, %v; want a zombie under 4300", s, err)
	}
	if pp, err := fixture.PPID(4300); err != nil || pp != 4242 {
		t.Errorf("PPID(4300) = %d, %v", pp, err)
	}
	if st, err := fixture.StartTime(4300); err != nil || st != 200000 {
		t.Errorf("StartTime(4300) = %d, %v", st, err)
	}
	if _, err := fixture.Stat(7); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a missing process: %v, want fs.ErrNotExist", err)
	}
	for _, bad := range []string{
		"", "1 (x", "1 x) S", "1 (x) S 1 2 3",
		"1 (x) S 1 1 1 0 -1 0 0 0 0 0 a 0 0 0 20 0 1 0 5",  // utime
		"1 (x) S y 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5",  // ppid
		"1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5", // starttime
	} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) = nil error", bad)
		}
	}
}

func TestTable(t *testing.T) {
	tab := fixture.ReadTable()
	if !slices.Equal(tab.Children[1], []int{4242}) || !slices.Equal(tab.Children[4242], []int{4300}) {
		t.Errorf("children: %v", tab.Children)
	}
	if got := tab.Descendants(1, 8, 256); !slices.Equal(got, []int{4242, 4300, 4301}) {
		t.Errorf("Descendants(1) = %v", got)
	}
	if got := tab.Descendants(1, 2, 256); !slices.Equal(got, []int{4242, 4300}) {
		t.Errorf("Descendants(1, depth 2) = %v", got)
	}
	if got := tab.Descendants(1, 8, 1); !slices.Equal(got, []int{4242}) {
		t.Errorf("Descendants(1, at most 1) = %v", got)
	}
	if got := tab.TreeCPU(4242); got != 290+50+6 {
		t.Errorf("TreeCPU(4242) = %d, want 346", got)
	}
	if got := (FS{Root: filepath.Join(t.TempDir(), "none")}).ReadTable(); len(got.Children) != 0 {
		t.Errorf("table of a missing root: %v", got)
	}
}

func TestStatus(t *testing.T) {
	s, err := fixture.Status(4242)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "git daemon) (x" || s.UID != [4]uint32{0, 998, 998, 998} || s.GID != [4]uint32{0, 997, 997, 997} ||
		!slices.Equal(s.Groups, []uint32{4, 24, 997}) || s.CapEff != 0x1ffffffffff {
		t.Errorf("Status(4242) = %+v", s)
	}
	if self, err := fixture.SelfStatus(); err != nil || self.UID != s.UID {
		t.Errorf("SelfStatus = %+v, %v", self, err)
	}
	if g, err := fixture.Groups(4242); err != nil || !slices.Equal(g, []uint32{4, 24, 997}) {
		t.Errorf("Groups = %v, %v", g, err)
	}
	s, err = ParseStatus(strings.NewReader("Name:\tx\nGroups:\t\n"))
	if err != nil || len(s.Groups) != 0 || !s.Has("Groups") || s.Has("Uid") || s.Has("CapEff") {
		t.Errorf("empty Groups: = %+v, %v", s, err)
	}
	for _, bad := range []string{"Groups:\t4 x\n", "Uid:\t1 2\n", "Gid:\t1 2 3 -4\n", "CapEff:\tzz\n"} {
		if _, err := ParseStatus(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseStatus(%q) = nil error", bad)
		}
	}
	if _, err := fixture.Groups(4300); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Groups without a status file: %v", err)
	}
}

func TestCmdlineCommEnviron(t *testing.T) {
	want := []string{"/usr/lib/git-core/git-daemon", "--export-all", "--base-path=/srv/git"}
	if got, err := fixture.Cmdline(4242, 0); err != nil || !slices.Equal(got, want) {
		t.Errorf("Cmdline = %q, %v", got, err)
	}
	if got, err := fixture.Cmdline(4242, 32); err != nil || !slices.Equal(got, []string{want[0], "--e"}) {
		t.Errorf("Cmdline with a 32-byte limit = %q, %v", got, err)
	}
	if got, err := fixture.Cmdline(4301, 4096); err != nil || got != nil {
		t.Errorf("empty cmdline = %q, %v; want nil", got, err)
	}
	if _, err := fixture.Cmdline(7, 4096); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Cmdline of a missing process: %v", err)
	}
	if c, err := fixture.Comm(4300); err != nil || c != "git-upload-pack" {
		t.Errorf("Comm = %q, %v", c, err)
	}
	env, err := fixture.Environ(4242)
	if err != nil || env["PATH"] != "/usr/lib/sluice/bin:/usr/bin" || env["GIT_EXEC_PATH"] != "/usr/lib/sluice/git-core" || len(env) != 3 {
		t.Errorf("Environ = %v, %v", env, err)
	}
	if exe, err := fixture.Exe(4242); err != nil || exe != "/usr/lib/git-core/git-daemon" {
		t.Errorf("Exe = %q, %v", exe, err)
	}
	if _, err := fixture.Exe(4300); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Exe without a link: %v", err)
	}
	if cwd, err := fixture.Cwd(4242); err != nil || cwd != "/srv/git" {
		t.Errorf("Cwd = %q, %v", cwd, err)
	}
}

func TestIO(t *testing.T) {
	io, err := fixture.IO(4242)
	if err != nil || io != (IO{RChar: 6976, WChar: 1234}) {
		t.Errorf("IO = %+v, %v", io, err)
	}
	if _, err := ParseIO([]byte("rchar: 1\n")); err == nil {
		t.Error("no error without wchar")
	}
	if _, err := ParseIO([]byte("wchar: x\n")); err == nil {
		t.Error("no error for a malformed wchar")
	}
}

func TestCgroup(t *testing.T) {
	m, err := fixture.Cgroup(4242)
	if err != nil || m["memory"] != "/process_api/7d2672a5bd58bb65f2446ac48214074e" || m["name=systemd"] != "/" ||
		m["cpu"] != "/a:b" || m["cpuacct"] != "/a:b" || m[""] != "/system.slice/git-daemon.service" {
		t.Errorf("Cgroup(4242) = %v, %v", m, err)
	}
	if self, err := fixture.SelfCgroup(); err != nil || self[""] != m[""] {
		t.Errorf("SelfCgroup = %v, %v", self, err)
	}
	m, err = ReadCgroupFile(filepath.Join("testdata", "cgroup_hybrid"))
	if err != nil || !strings.HasPrefix(m["memory"], "/process_api/") {
		t.Errorf("hybrid: %v, %v", m, err)
	}
	for _, k := range []string{"cpu", "cpuacct", "pids", "name=systemd", ""} {
		if _, ok := m[k]; !ok {
			t.Errorf("hybrid: key %q missing: %v", k, m)
		}
	}
	m, err = ReadCgroupFile(filepath.Join("testdata", "cgroup_unified"))
	if err != nil || len(m) != 1 || m[""] != "/system.slice/sluiced.service" {
		t.Errorf("unified: %v, %v", m, err)
	}
	if _, err := ParseCgroup(strings.NewReader("garbage\n")); err == nil {
		t.Error("malformed line: no error")
	}
}

// TestLiveSelf reads this process in the host's /proc.
func TestLiveSelf(t *testing.T) {
	pid := os.Getpid()
	s, err := Default.Stat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if s.PPID != os.Getppid() || s.StartTime == 0 || s.State != 'R' && s.State != 'S' {
		t.Errorf("Stat(self) = %+v; ppid want %d", s, os.Getppid())
	}
	st, err := Default.SelfStatus()
	if err != nil || st.UID[1] != uint32(os.Geteuid()) || st.GID[1] != uint32(os.Getegid()) || !st.Has("Groups") {
		t.Errorf("SelfStatus = %+v, %v", st, err)
	}
	if argv, err := Default.Cmdline(pid, 0); err != nil || !slices.Equal(argv, os.Args) {
		t.Errorf("Cmdline(self) = %q, %v; want %q", argv, err, os.Args)
	}
	exe, _ := os.Executable()
	if got, err := Default.Exe(pid); err != nil || got != exe {
		t.Errorf("Exe(self) = %q, %v; want %q", got, err, exe)
	}
	if env, err := Default.Environ(pid); err != nil || len(env) == 0 {
		t.Errorf("Environ(self) = %d variables, %v", len(env), err)
	}
	if _, err := Default.IO(pid); err != nil {
		t.Errorf("IO(self): %v", err)
	}
	if m, err := Default.SelfCgroup(); err != nil || len(m) == 0 {
		t.Errorf("SelfCgroup = %v, %v", m, err)
	}
	// A child shows in the table under this process.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep to run a child: %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if !slices.Contains(Default.ReadTable().Descendants(pid, 1, 256), cmd.Process.Pid) {
		t.Errorf("child %d not among the descendants of %d", cmd.Process.Pid, pid)
	}
	if c, err := Default.Comm(cmd.Process.Pid); err != nil || c != "sleep" {
		t.Errorf("Comm(child) = %q, %v", c, err)
	}
}
