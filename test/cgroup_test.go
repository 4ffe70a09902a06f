package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/cgroup"
)

// cgroupRule is a policy with upload-pack admitted per repository and
// cgroups on, under a hierarchy root unique to the test.
func cgroupPolicy(root string, bucketLimits string) string {
	return fmt.Sprintf(limitRule("upload-pack", "repo", 4, 4, "10s")+`

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "remote_ip"
max_per_key = 4
max_queue_size = 4
max_queue_wait = "10s"

[cgroups]
enabled = true
required = true
hierarchy_root = %q

[cgroups.repositories]
count = 4
%s
`, root, bucketLimits)
}

// needCgroups skips unless this machine lets the test create cgroups.
func needCgroups(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cgroup tests need root (to create cgroups)")
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		if _, err2 := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err2 != nil {
			t.Skip("no cgroup v1 memory controller nor cgroup2 at /sys/fs/cgroup")
		}
	}
}

// cgroupRoot returns a hierarchy root unique to t and removes the
// hierarchy when the test ends (after its processes are gone).
func cgroupRoot(t *testing.T) string {
	root := fmt.Sprintf("sluice-e2e-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	t.Cleanup(func() {
		m, err := cgroup.New(cgroup.Config{Root: root, Buckets: 4}, nil)
		if err != nil {
			t.Errorf("adopting %s to remove it: %v", root, err)
			return
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			err = m.Destroy()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("removing cgroup hierarchy %s: %v", root, err)
		}
	})
	return root
}

// cgroupOf returns pid's cgroup path for a v1 controller ("memory") or the
// unified hierarchy ("").
func cgroupOf(t *testing.T, pid int, controller string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatalf("read cgroup of %d: %v", pid, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if controller == "" && parts[0] == "0" && parts[1] == "" {
			return parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if controller != "" && c == controller {
				return parts[2]
			}
		}
	}
	return ""
}

func bucketSuffix(root string, repo string) string {
	return fmt.Sprintf("/%s/repos/%d", root, cgroup.BucketFor([]byte(repo), 4))
}

func TestCgroupPlacementOfCloneProcesses(t *testing.T) {
	needCgroups(t)
	root := cgroupRoot(t)
	a := startAgent(t, cgroupPolicy(root, ""), "open")
	repo := makeRepo(t, a.dir, "r", 3)

	// upload-pack, held open: the shim and its git are in the repo's bucket.
	h := holdUploadPack(t, a, repo)
	<-h.first
	upGit := gitOf(t, h.cmd.Process.Pid)
	want := bucketSuffix(root, repo)
	for _, ctl := range []string{"memory", "cpu", "pids", ""} {
		if got := cgroupOf(t, upGit, ctl); !strings.HasSuffix(got, want) {
			t.Errorf("upload-pack's %q cgroup = %q, want …%s", ctl, got, want)
		}
	}
	// pack-objects through the hook: placed by its repository too.
	p := startProc(t, repo, a.env("GIT_DIR=.", "REMOTE_ADDR=127.0.0.2"), bins.shim, "git", "pack-objects", "--revs", "--stdout")
	waitFor(t, 5*time.Second, "pack-objects admitted", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="pack-objects"}`) == 1
	})
	if got := cgroupOf(t, gitOf(t, p.cmd.Process.Pid), "memory"); !strings.HasSuffix(got, want) {
		t.Errorf("pack-objects memory cgroup = %q, want …%s", got, want)
	}
	// Two git processes (with a shim above each in supervising mode).
	if n := a.metric(`sluice_cgroup_processes{scope="buckets"}`); n < 2 {
		t.Errorf("sluice_cgroup_processes{scope=buckets} = %v, want >= 2", n)
	}
	// sluice status shows the cgroup state and each lease's bucket.
	out, err := exec.Command(bins.cli, "status", "--json", "--socket", a.socket).CombinedOutput()
	if err != nil {
		t.Fatalf("sluice status: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"state": "hybrid"`) && !strings.Contains(string(out), `"state": "v1"`) && !strings.Contains(string(out), `"state": "unified"`) {
		t.Errorf("sluice status --json shows no cgroup mode:\n%s", out)
	}
	for _, want := range []string{`"bucket": "`, want, `"socket": "` + a.socket + `"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("sluice status --json lacks %q:\n%s", want, out)
		}
	}
	p.closeStdin()
	p.wait(t, 10*time.Second)

	// Agent restart with the upload-pack in flight: it keeps running in its
	// bucket, the new agent adopts the hierarchy and sees it, and the
	// command completes.
	a.stop()
	a.start(cgroupPolicy(root, ""), "open")
	if got := cgroupOf(t, upGit, "memory"); !strings.HasSuffix(got, want) {
		t.Errorf("after restart upload-pack's cgroup = %q, want …%s", got, want)
	}
	if n := a.metric(`sluice_cgroup_processes{scope="buckets"}`); n < 1 {
		t.Errorf("restarted agent sees %v processes in its buckets, want >= 1", n)
	}
	h.release()
	if code := h.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("upload-pack across the agent restart: exit %d: %s", code, h.stderr.String())
	}
	// And a full clone through the restarted agent works.
	if code, out := cloneVia(t, a, repo, filepath.Join(a.dir, "clone")); code != 0 {
		t.Fatalf("clone after restart: %d %s", code, out)
	}
}

// fakeGit writes a script that stands in for the real git.
func fakeGit(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "fake-git")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCgroupBucketMemoryLimitOOMKills(t *testing.T) {
	needCgroups(t)
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		t.Skip("no cgroup v1 memory controller (and cgroup2 limits are covered by the cgroup package where a memory controller exists)")
	}
	root := cgroupRoot(t)
	a := startAgent(t, cgroupPolicy(root, "memory_bytes = 67108864"), "open")
	repo := makeRepo(t, a.dir, "r", 2)
	// tail keeps a newline-free stream in memory: 512 MiB > the 64 MiB bucket.
	hog := fakeGit(t, a.dir, "head -c 536870912 /dev/zero | tail -n 1 > /dev/null")
	p := startProc(t, a.dir, a.env("SLUICE_REAL_GIT="+hog), filepath.Join(a.shimBin, "git-upload-pack"), repo)
	p.wait(t, 60*time.Second)
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	// The shell in the fake git reports its pipeline's fate; the OOM kill
	// itself is what the metrics must show.
	waitFor(t, 10*time.Second, "OOM kill in the metrics", func() bool {
		return a.metric(`sluice_cgroup_oom_kills_total{scope="buckets"}`) >= 1
	})
	t.Logf("hog ended with %v", ws)
	// The agent is unharmed and still admits.
	if code, out := cloneVia(t, a, repo, filepath.Join(a.dir, "clone")); code != 0 {
		t.Fatalf("clone after the OOM kill: %d %s", code, out)
	}
}

func TestCgroupBucketCPUQuotaThrottles(t *testing.T) {
	needCgroups(t)
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err != nil {
		t.Skip("no cgroup v1 cpu controller with CFS quota")
	}
	root := cgroupRoot(t)
	a := startAgent(t, cgroupPolicy(root, "cpu_quota_us = 20000"), "open")
	repo := makeRepo(t, a.dir, "r", 2)
	burn := fakeGit(t, a.dir, "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	p := startProc(t, a.dir, a.env("SLUICE_REAL_GIT="+burn), filepath.Join(a.shimBin, "git-upload-pack"), repo)
	if code := p.wait(t, 120*time.Second); code != 0 {
		t.Fatalf("burner exit %d: %s", code, p.stderr.String())
	}
	m := a.scrape()
	periods := m[`sluice_cgroup_cpu_periods_total{scope="buckets"}`]
	throttled := m[`sluice_cgroup_cpu_throttled_periods_total{scope="buckets"}`]
	if periods == 0 || throttled == 0 {
		t.Fatalf("no throttling recorded: periods %v throttled %v", periods, throttled)
	}
	t.Logf("burner at 20%% of a CPU: %v of %v periods throttled (%.0f%%), %v s throttled", throttled, periods, 100*throttled/periods,
		m[`sluice_cgroup_cpu_throttled_seconds_total{scope="buckets"}`])
	// The share of throttled periods depends on how much CPU the burner
	// got at all on a loaded machine: logged above, not asserted.
}

// TestCgroupLimitsApplyOnReload changes a bucket limit and sends SIGHUP.
func TestCgroupLimitsApplyOnReload(t *testing.T) {
	needCgroups(t)
	own := cgroupOf(t, os.Getpid(), "memory")
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		t.Skip("no cgroup v1 memory controller")
	}
	root := cgroupRoot(t)
	a := startAgent(t, cgroupPolicy(root, ""), "open")
	limitFile := filepath.Join("/sys/fs/cgroup/memory", own, root, "repos", "2", "memory.limit_in_bytes")
	read := func() string {
		b, err := os.ReadFile(limitFile)
		if err != nil {
			t.Fatalf("bucket limit: %v", err)
		}
		return strings.TrimSpace(string(b))
	}
	if v := read(); v == "134217728" {
		t.Fatalf("limit already set: %s", v)
	}
	cfg, err := os.ReadFile(filepath.Join(a.dir, "sluice.toml"))
	if err != nil {
		t.Fatal(err)
	}
	newCfg := strings.Replace(string(cfg), "count = 4\n", "count = 4\nmemory_bytes = 134217728\n", 1)
	if err := os.WriteFile(filepath.Join(a.dir, "sluice.toml"), []byte(newCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "bucket memory limit updated by the reload", func() bool { return read() == "134217728" })
	// The limit is applied before the reload's log line is written.
	waitFor(t, 5*time.Second, "the reload log line", func() bool {
		return strings.Contains(a.Logs(), `"msg":"reloaded"`)
	})
}

// TestCleanStopRemovesWhatItMade: sluiced run by hand creates its runtime
// directory and its cgroup tree, and a clean stop (SIGTERM) removes both:
// nothing is left behind after a `go run` stopped with Ctrl-C.
func TestCleanStopRemovesWhatItMade(t *testing.T) {
	needCgroups(t)
	root := cgroupRoot(t)
	a := newAgentDir(t)
	run := filepath.Dir(a.socket)
	if _, err := os.Lstat(run); !os.IsNotExist(err) {
		t.Fatalf("%s exists before the agent starts (%v): the test needs the agent to create it", run, err)
	}
	a.start(cgroupPolicy(root, ""), "open")
	var parent string
	for _, l := range a.LogLines("cgroups ready") {
		parent = strings.TrimSuffix(l["bucket0"].(string), "/repos/0")
	}
	mount := "/sys/fs/cgroup/memory"
	if _, err := os.Stat(mount); err != nil {
		mount = "/sys/fs/cgroup"
	}
	tree := filepath.Join(mount, parent)
	if parent == "" {
		t.Fatalf("no cgroups ready line:\n%s", a.Logs())
	}
	if _, err := os.Stat(tree); err != nil {
		t.Fatalf("cgroup tree %s: %v", tree, err)
	}
	if _, err := os.Stat(filepath.Join(run, "shim.conf")); err != nil {
		t.Fatalf("shim.conf: %v", err)
	}
	a.stop()
	if _, err := os.Lstat(run); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(run)
		t.Errorf("runtime directory %s left after a clean stop (%v): %v", run, err, entries)
	}
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("cgroup tree %s left after a clean stop (%v)", tree, err)
	}
	// With fail_mode "closed" shim.conf stays: shims keep failing closed
	// while no agent runs.
	b := newAgentDir(t)
	b.start(uploadPackRule, "closed")
	b.stop()
	if _, err := os.Stat(filepath.Join(filepath.Dir(b.socket), "shim.conf")); err != nil {
		t.Errorf("fail_mode closed: shim.conf gone after a clean stop (%v); shims would fail open", err)
	}
}
