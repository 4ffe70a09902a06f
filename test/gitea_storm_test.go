package test

// gitea_storm_test.go: a bounded clone storm over Gitea's HTTP (`make
// bench-gitea-storm`; skipped unless SLUICE_GITEA_STORM is set). It is not
// bench/storm (storm v2 will carry Gitea as a server; see bench/gitea/
// README.md): one Gitea and, for the `defaults` mode, one sluiced with the
// shipped default policy, both inside a cgroup v1 memory cgroup that stands
// for a small host. K clients clone one large repository in a loop, each
// from its own loopback address (127.0.0.10+i, through an in-process TCP
// forwarder), for a fixed time; one client pushes to a small repository
// every 2 s; a probe GETs a small repository's file listing from the API
// every 500 ms, idle first and then through the storm. Modes switch the
// links of Gitea's [git] PATH directory (as in gitea_bench_test.go):
//
//   - defaults: the guide's wiring, sluiced with policy/default.toml;
//   - serving-only: the guide's cheaper wiring (real git, the dashed
//     serving names and the hook are the shim), same policy;
//   - none: the real git, the hook /usr/bin/env (sluice not involved).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// stormBox is a v1 memory cgroup under this process's own.
type stormBox struct{ dir string }

func newStormBox(t *testing.T, limit int64) *stormBox {
	t.Helper()
	own := ""
	b, _ := os.ReadFile("/proc/self/cgroup")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && f[1] == "memory" {
			own = f[2]
		}
	}
	if own == "" {
		t.Skip("no cgroup v1 memory hierarchy in /proc/self/cgroup: the storm needs one to stand for a small host")
	}
	dir := filepath.Join("/sys/fs/cgroup/memory", own, fmt.Sprintf("sluice-gitea-storm-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("create the storm cgroup %s: %v", dir, err)
	}
	box := &stormBox{dir: dir}
	t.Cleanup(box.remove)
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	return box
}

// walk calls f for the box and every cgroup below it, deepest first.
func (b *stormBox) walk(f func(dir string)) {
	var dirs []string
	filepath.WalkDir(b.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		f(dirs[i])
	}
}

func (b *stormBox) oomKills() int64 {
	var n int64
	b.walk(func(d string) {
		c, _ := os.ReadFile(filepath.Join(d, "memory.oom_control"))
		for _, l := range strings.Split(string(c), "\n") {
			if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
				k, _ := strconv.ParseInt(v, 10, 64)
				n += k
			}
		}
	})
	return n
}

func (b *stormBox) read(name string) int64 {
	c, _ := os.ReadFile(filepath.Join(b.dir, name))
	v, _ := strconv.ParseInt(strings.TrimSpace(string(c)), 10, 64)
	return v
}

func (b *stormBox) remove() {
	for try := 0; try < 50; try++ {
		left := false
		b.walk(func(d string) {
			c, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, p := range strings.Fields(string(c)) {
				pid, _ := strconv.Atoi(p)
				syscall.Kill(pid, syscall.SIGKILL)
				left = true
			}
			os.Remove(d)
		})
		if _, err := os.Stat(b.dir); os.IsNotExist(err) {
			return
		}
		if left || try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// forwarder accepts on 127.0.0.1:port and connects to target from src.
func forwarder(t *testing.T, ctx context.Context, src net.IP, target string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := d.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				go func() { io.Copy(c, s); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				<-done
				<-done
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

type stormResult struct {
	mode                               string
	ok, failed, unfinished, timeouts   int64
	failedSluice                       int64 // failures whose output names sluice
	pushesOK, pushesFailed             int64
	oom                                int64
	peakMiB                            int64
	idle, storm                        []time.Duration
	probeFailed                        int
	rejected, admitted                 float64
	giteaAlive                         bool
	cloneP50, cloneP95, cloneP99, mean time.Duration
}

func TestGiteaStorm(t *testing.T) {
	if os.Getenv("SLUICE_GITEA_STORM") == "" {
		t.Skip("a benchmark: set SLUICE_GITEA_STORM=1 (make bench-gitea-storm)")
	}
	repoSrc := os.Getenv("SLUICE_GITEA_STORM_REPO")
	if repoSrc == "" {
		repoSrc = "/var/tmp/sluice-storm/f12000-b4096-d20-c1500-x20-v2/big.git"
	}
	if _, err := os.Stat(filepath.Join(repoSrc, "HEAD")); err != nil {
		t.Skipf("no storm repository at %s (SLUICE_GITEA_STORM_REPO): `make bench-storm` generates it", repoSrc)
	}
	clients := envInt("SLUICE_GITEA_STORM_CLIENTS", 24)
	dur := time.Duration(envInt("SLUICE_GITEA_STORM_SECONDS", 45)) * time.Second
	drain := time.Duration(envInt("SLUICE_GITEA_STORM_DRAIN", 60)) * time.Second
	cloneTimeout := time.Duration(envInt("SLUICE_GITEA_STORM_CLONE_TIMEOUT", 240)) * time.Second
	idle := 10 * time.Second
	mem := int64(envInt("SLUICE_GITEA_STORM_MIB", 1536)) << 20
	modes := strings.Split(envOr("SLUICE_GITEA_STORM_MODES", "defaults,serving-only,none"), ",")

	u := giteaUser(t, "")
	box := newStormBox(t, mem)
	a := newAgentDir(t)
	a.agentExtra = fmt.Sprintf("socket_group = %q\n", u.Username)
	a.wrap = []string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(box.dir, "cgroup.procs")}
	// The shipped policy, but the agent's cgroups under a name of this
	// run's: other agents on the host use "sluice" in the same cgroups.
	root := fmt.Sprintf("sluice-gitea-storm-agent-%d", os.Getpid())
	t.Cleanup(func() { removeAgentCgroups(root) })
	a.start(defaultLimits(t, root), "open")
	giteaShares(t, a)

	sw := filepath.Join(t.TempDir(), "gitbin")
	os.MkdirAll(sw, 0o755)
	traversable(t, sw)
	_, arms := giteaArms()
	armOf := map[string]map[string]string{"defaults": arms["shim"], "serving-only": arms["serving-only"], "none": arms["none"]}
	switchLinks(t, sw, arms["shim"])
	wiring := fmt.Sprintf("[git]\nPATH = %s/git\n\n[git.config]\nuploadpack.packObjectsHook = %s/hook\n", sw, sw)
	g := newGitea(t, u, wiring, giteaOpts{env: []string{"SLUICE_SOCKET=" + a.socket, "SLUICE_SHIM_LOG=" + a.shimLog}, cgroup: box.dir})

	// The big repository, and a small one for pushes and the probe.
	seed := filepath.Join(t.TempDir(), "big.git")
	git(t, "/", baseEnv("/"), "clone", "-q", "--bare", "--no-local", repoSrc, seed)
	start := time.Now()
	g.createRepo("big", seed)
	t.Logf("pushed %s into Gitea in %v", repoSrc, time.Since(start).Round(time.Second))
	small := makeRepo(t, t.TempDir(), "small", 4)
	g.createRepo("small", small)
	pushWork := filepath.Join(g.dir, "client", "push-work")
	git(t, "/", baseEnv("/"), "clone", "-q", small, pushWork)

	probeURL := fmt.Sprintf("%s/api/v1/repos/%s/small/contents", g.url, g.admin)
	probe := func() (time.Duration, error) {
		c := http.Client{Timeout: 10 * time.Second}
		t0 := time.Now()
		resp, err := c.Get(probeURL)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return time.Since(t0), nil
	}

	var results []*stormResult
	for _, mode := range modes {
		arm, ok := armOf[mode]
		if !ok {
			t.Fatalf("SLUICE_GITEA_STORM_MODES: unknown mode %q (defaults, serving-only, none)", mode)
		}
		switchLinks(t, sw, arm)
		time.Sleep(2 * time.Second)
		r := &stormResult{mode: mode}
		results = append(results, r)
		os.WriteFile(filepath.Join(box.dir, "memory.max_usage_in_bytes"), []byte("0"), 0o644)
		oom0 := box.oomKills()
		m0 := a.scrape()

		for end := time.Now().Add(idle); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			if d, err := probe(); err == nil {
				r.idle = append(r.idle, d)
			}
		}

		ctx, cancel := context.WithCancel(context.Background())
		stormEnd := time.Now().Add(dur)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var cloneTimes []time.Duration
		for i := 0; i < clients; i++ {
			port := forwarder(t, ctx, net.IPv4(127, 0, 0, byte(10+i)), fmt.Sprintf("127.0.0.1:%d", g.http))
			url := fmt.Sprintf("http://127.0.0.1:%d/%s/big.git", port, g.admin)
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				for n := 0; time.Now().Before(stormEnd); n++ {
					dst := filepath.Join(g.dir, "client", fmt.Sprintf("storm-%s-%d-%d", mode, i, n))
					cctx, ccancel := context.WithTimeout(ctx, cloneTimeout)
					cmd := exec.CommandContext(cctx, bins.realGit, "clone", "-q", "--bare", url, dst)
					cmd.Env = g.clientEnv()
					t0 := time.Now()
					out, err := cmd.CombinedOutput()
					timedOut := cctx.Err() != nil
					ccancel()
					os.RemoveAll(dst)
					switch {
					case err == nil:
						atomic.AddInt64(&r.ok, 1)
						mu.Lock()
						cloneTimes = append(cloneTimes, time.Since(t0))
						mu.Unlock()
					case ctx.Err() != nil:
						atomic.AddInt64(&r.unfinished, 1)
						return
					case timedOut:
						atomic.AddInt64(&r.timeouts, 1)
					default:
						atomic.AddInt64(&r.failed, 1)
						if strings.Contains(string(out), "sluice:") {
							atomic.AddInt64(&r.failedSluice, 1)
						}
						time.Sleep(time.Second) // a CI job retries, not at once
					}
				}
			}(i)
		}
		// The pusher.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(stormEnd); n++ {
				os.WriteFile(filepath.Join(pushWork, "push.txt"), []byte(fmt.Sprintf("%s %d\n", mode, n)), 0o644)
				if out, err := gitTry(pushWork, baseEnv(pushWork), "add", "push.txt"); err != nil {
					t.Errorf("git add: %v %s", err, out)
					return
				}
				if out, err := gitTry(pushWork, baseEnv(pushWork), "commit", "-q", "-m", fmt.Sprintf("storm push %s %d", mode, n)); err != nil {
					t.Errorf("git commit: %v %s", err, out)
					return
				}
				cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
				cmd := exec.CommandContext(cctx, bins.realGit, "push", "-q", "-f", g.pushURL("small"), "HEAD:refs/heads/storm-"+mode)
				cmd.Dir = pushWork
				cmd.Env = baseEnv(pushWork)
				out, err := cmd.CombinedOutput()
				ccancel()
				if err != nil {
					atomic.AddInt64(&r.pushesFailed, 1)
					t.Logf("%s: push %d failed: %v %s", mode, n, err, strings.TrimSpace(string(out)))
				} else {
					atomic.AddInt64(&r.pushesOK, 1)
				}
				time.Sleep(2 * time.Second)
			}
		}()
		// The probe, through the storm and the drain.
		probeDone := make(chan struct{})
		go func() {
			defer close(probeDone)
			for ctx.Err() == nil {
				if d, err := probe(); err == nil {
					r.storm = append(r.storm, d)
				} else {
					r.probeFailed++
				}
				select {
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
		}()
		time.Sleep(time.Until(stormEnd))
		waited := make(chan struct{})
		go func() { wg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(drain):
		}
		cancel()
		<-waited
		<-probeDone

		r.oom = box.oomKills() - oom0
		r.peakMiB = box.read("memory.max_usage_in_bytes") >> 20
		r.giteaAlive = g.cmd.ProcessState == nil && syscall.Kill(g.cmd.Process.Pid, 0) == nil
		r.cloneP50, r.cloneP95, r.cloneP99, r.mean = stats(cloneTimes)
		m1 := a.scrape()
		r.rejected = sumPrefix(m1, "sluice_requests_dropped_total") - sumPrefix(m0, "sluice_requests_dropped_total")
		r.admitted = sumPrefix(m1, "sluice_commands_total{") - sumPrefix(m0, "sluice_commands_total{")
		t.Logf("%s: %+v", mode, *r)
		if !r.giteaAlive {
			t.Logf("%s: Gitea is gone; later modes cannot run", mode)
			break
		}
		// Let the host settle before the next mode.
		time.Sleep(5 * time.Second)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# Clone storm over Gitea %s HTTP — %s\n\n", giteaVersion, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "`SLUICE_GITEA_STORM=1 SLUICE_GITEA_STORM_CLIENTS=%d SLUICE_GITEA_STORM_SECONDS=%d SLUICE_GITEA_STORM_DRAIN=%d SLUICE_GITEA_STORM_REPO=%s SLUICE_GITEA_STORM_MIB=%d SLUICE_GITEA_STORM_MODES=%s go test ./test -run TestGiteaStorm -v` (`make bench-gitea-storm`) as root on %d CPUs (shared with other builds: load %s at the end).\n\n",
		clients, int(dur.Seconds()), int(drain.Seconds()), repoSrc, mem>>20, strings.Join(modes, ","), runtime.NumCPU(), loadavg())
	fmt.Fprintf(&b, "- Repository `big`: %s pushed into Gitea; `small`: 4 commits (probe and pushes).\n", repoSrc)
	fmt.Fprintf(&b, "- The small host: a cgroup v1 memory cgroup of %d MiB holding Gitea (web, built-in SSH, every git it runs) and sluiced with its bucket cgroups.\n", mem>>20)
	fmt.Fprintf(&b, "- Load: %d clients, each from its own address 127.0.0.10+i (in-process TCP forwarder), run `git clone --bare` of `big` over Gitea's HTTP in a loop for %v (1 s pause after a failure; per-clone timeout %v); clones still running %v after the end are cut off and counted unfinished. One client pushes a commit to `small` over HTTP every 2 s. A probe GETs `/api/v1/repos/{o}/small/contents` every 500 ms (10 s timeout): %v idle before the storm, then through it.\n", clients, dur, cloneTimeout, drain, idle)
	b.WriteString("- Modes switch the links of Gitea's `[git] PATH` directory: **defaults** = the guide's wiring (git, dashed names and pack-objects hook → sluice-shim) with sluiced running `policy/default.toml` as shipped; **serving-only** = the guide's cheaper wiring (git → real git; dashed names and hook → sluice-shim: over HTTP only pack-objects is admitted), same policy; **none** = the real git, hook → `/usr/bin/env` (sluice not involved). Same Gitea process; modes run in the order listed.\n\n")
	b.WriteString("| mode | clones ok | failed (sluice in output) | timed out | unfinished | clone p50 / p95 / p99 s | OOM kills | peak MiB | pushes ok / failed | probe idle p50 / p99 ms | probe storm p50 / p95 / p99 ms | p99 storm ÷ idle | probes failed | sluice rejected / commands | Gitea alive |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		i50, _, i99, _ := stats(r.idle)
		s50, s95, s99, _ := stats(r.storm)
		ratio := 0.0
		if i99 > 0 {
			ratio = s99.Seconds() / i99.Seconds()
		}
		fmt.Fprintf(&b, "| %s | %d | %d (%d) | %d | %d | %.1f / %.1f / %.1f | %d | %d | %d / %d | %.0f / %.0f | %.0f / %.0f / %.0f | ×%.1f | %d | %.0f / %.0f | %v |\n",
			r.mode, r.ok, r.failed, r.failedSluice, r.timeouts, r.unfinished, r.cloneP50.Seconds(), r.cloneP95.Seconds(), r.cloneP99.Seconds(),
			r.oom, r.peakMiB, r.pushesOK, r.pushesFailed, ms(i50), ms(i99), ms(s50), ms(s95), ms(s99), ratio, r.probeFailed, r.rejected, r.admitted, r.giteaAlive)
	}
	out := os.Getenv("SLUICE_GITEA_BENCH_OUT")
	if out == "" {
		out = "../bench/gitea/storm.md"
	}
	os.MkdirAll(filepath.Dir(out), 0o755)
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s:\n%s", out, b.String())
}

// removeAgentCgroups removes <own>/<root> in every v1 hierarchy but
// memory (there it is inside the storm box), deepest first.
func removeAgentCgroups(root string) {
	b, _ := os.ReadFile("/proc/self/cgroup")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 || f[1] == "" || f[1] == "memory" {
			continue
		}
		top := filepath.Join("/sys/fs/cgroup", strings.TrimPrefix(f[1], "name="), f[2], root)
		var dirs []string
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}

// defaultLimits is policy/default.toml from its first [[limit]] on (rules,
// cgroups, adaptive tuning: the shipped policy), with cgroups off unless
// cgroupRoot names the hierarchy_root to use.
func defaultLimits(t *testing.T, cgroupRoot string) string {
	t.Helper()
	def, err := os.ReadFile("../policy/default.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, policy, ok := strings.Cut(string(def), "\n[[limit]]")
	if !ok {
		t.Fatal("policy/default.toml has no [[limit]]")
	}
	policy = "[[limit]]" + policy
	if cgroupRoot == "" {
		cg, rest, _ := strings.Cut(policy, "\n[cgroups]\n")
		return cg + "\n[cgroups]\n" + strings.Replace(rest, "\nenabled = true\n", "\nenabled = false\n", 1)
	}
	return strings.Replace(policy, `hierarchy_root = "sluice"`, fmt.Sprintf("hierarchy_root = %q", cgroupRoot), 1)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// sumPrefix sums every series whose name starts with prefix.
func sumPrefix(m map[string]float64, prefix string) float64 {
	var s float64
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			s += v
		}
	}
	return s
}
