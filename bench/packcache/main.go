// Command packcache measures the pack-objects cache (issue 18) on this
// machine: a ci-burst-like storm (K identical clones at once from K
// loopback addresses over git daemon, uploadpack.packObjectsHook = the
// shim) with the cache off and on, and the shim's start-up for matched
// commands against direct git in the same run.
//
//	make build && go run ./bench/packcache -k 48 -n 200
//
// Needs root (sluiced, a cgroup2 directory for the server's CPU), git,
// git daemon and socat. Everything it starts it stops; its temporary
// directory and cgroup are removed.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/agenttest"
)

var (
	binDir  = flag.String("bin", "bin", "directory with sluiced and sluice-shim (make build)")
	k       = flag.Int("k", 48, "identical clones at once, one loopback address each")
	samples = flag.Int("n", 200, "start-up samples per variant")
	repoSrc = flag.String("repo", "/work/main", "repository to serve (a bare clone is made)")
	minOcc  = flag.Int("min-occurrences", 1, "[pack_cache] min_occurrences for the cached run")
	modes   = flag.String("modes", "off,on", "storm runs: off (no cache), on (cache)")
	limit   = flag.Duration("timeout", 5*time.Minute, "bound on each storm")
	doStart = flag.Bool("startup", true, "also time start-up and pack latency")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "packcache bench:", err)
		os.Exit(1)
	}
}

type env struct {
	tmp, repo, gitconfig, shim, sluiced, git string
}

func run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root")
	}
	tmp, err := os.MkdirTemp("", "sluice-packcache-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	e := env{tmp: tmp}
	if e.git, err = exec.LookPath("git"); err != nil {
		return err
	}
	for _, b := range []struct {
		p    *string
		name string
	}{{&e.shim, "sluice-shim"}, {&e.sluiced, "sluiced"}} {
		if *b.p, err = filepath.Abs(filepath.Join(*binDir, b.name)); err != nil {
			return err
		}
		if _, err := os.Stat(*b.p); err != nil {
			return fmt.Errorf("%v (run make build)", err)
		}
	}
	e.repo = filepath.Join(tmp, "repos", "r.git")
	if out, err := exec.Command(e.git, "clone", "-q", "--bare", "--no-local", *repoSrc, e.repo).CombinedOutput(); err != nil {
		return fmt.Errorf("clone %s: %v\n%s", *repoSrc, err, out)
	}
	e.gitconfig = filepath.Join(tmp, "gitconfig")
	os.WriteFile(e.gitconfig, []byte("[uploadpack]\n\tpackObjectsHook = "+e.shim+"\n[safe]\n\tdirectory = *\n"), 0o644)
	proxy := filepath.Join(tmp, "proxy.sh")
	os.WriteFile(proxy, []byte("#!/bin/sh\nexec socat -t 300 - TCP:$1:$2,bind=127.0.0.$BENCH_ADDR\n"), 0o755)
	fmt.Printf("repository: bare clone of %s (%s)\n", *repoSrc, size(e.repo))
	fmt.Printf("%-6s %6s %6s %9s %14s %14s %12s %10s\n", "cache", "clones", "ok", "wall_s", "packobj_cpu_s", "server_cpu_s", "clones/min", "hit_ratio")
	for _, m := range strings.Split(*modes, ",") {
		r, err := e.storm(m == "on", proxy)
		if err != nil {
			return err
		}
		ratio := "-"
		if l := r.hits + r.joins + r.misses; l > 0 {
			ratio = fmt.Sprintf("%.3f", (r.hits+r.joins)/l)
		}
		fmt.Printf("%-6s %6d %6d %9.2f %14.3f %14.3f %12.1f %10s   (per clone: pack-objects %.3f s, server %.3f s; fills %v hits %v joins %v)\n",
			m, *k, r.ok, r.wall.Seconds(), r.packCPU, r.serverCPU, float64(r.ok)/r.wall.Minutes(), ratio,
			r.packCPU/float64(max(r.ok, 1)), r.serverCPU/float64(max(r.ok, 1)), r.fills, r.hits, r.joins)
	}
	if !*doStart {
		return nil
	}
	if err := e.startup(true); err != nil {
		return err
	}
	return e.startup(false)
}

type stormResult struct {
	ok, failures               int
	wall                       time.Duration
	packCPU, serverCPU         float64
	hits, joins, misses, fills float64
}

type agent struct {
	*agenttest.Agent
	socket string
}

func (e *env) startAgent(cache bool, name string) (*agent, error) {
	dir := filepath.Join(e.tmp, name)
	a := &agent{socket: filepath.Join(dir, "run", "sluice.sock")}
	cfg := fmt.Sprintf("[agent]\nsocket = %q\nmetrics_addr = \"127.0.0.1:0\"\n[git]\nbin = %q\n[cgroups]\nenabled = false\n"+
		"[pack_cache]\nenabled = %v\ndir = %q\nmin_occurrences = %d\n", a.socket, e.git, cache, filepath.Join(dir, "cache"), *minOcc)
	a.Agent = &agenttest.Agent{Bin: e.sluiced, Dir: dir, Socket: a.socket}
	if err := a.Start(cfg); err != nil {
		return nil, err
	}
	return a, nil
}

// stop stops sluiced and says so when it did not exit cleanly.
func (a *agent) stop() {
	if err := a.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "packcache:", err)
	}
}

// scrape returns the agent's metrics (none when the scrape fails).
func (a *agent) scrape() map[string]float64 {
	m, err := a.Scrape()
	if err != nil {
		return map[string]float64{}
	}
	return m
}

func packObjectsCPU(m map[string]float64) float64 {
	var s float64
	for k, v := range m {
		if strings.HasPrefix(k, "sluice_command_cpu_seconds_total{") && strings.Contains(k, `subcmd="pack-objects"`) {
			s += v
		}
	}
	return s
}

// cgroup is a cgroup2 directory for the git daemon and its children.
type cgroup string

func newCgroup() (cgroup, error) {
	p := fmt.Sprintf("/sys/fs/cgroup/unified/sluice-bench-packcache-%d", os.Getpid())
	if _, err := os.Stat("/sys/fs/cgroup/unified"); err != nil {
		p = fmt.Sprintf("/sys/fs/cgroup/sluice-bench-packcache-%d", os.Getpid())
	}
	return cgroup(p), os.Mkdir(p, 0o755)
}

func (c cgroup) usage() float64 {
	b, _ := os.ReadFile(string(c) + "/cpu.stat")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "usage_usec" {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v / 1e6
		}
	}
	return 0
}

func (e *env) storm(cache bool, proxy string) (stormResult, error) {
	var r stormResult
	name := map[bool]string{false: "off", true: "on"}[cache]
	a, err := e.startAgent(cache, "agent-"+name)
	if err != nil {
		return r, err
	}
	defer a.stop()
	cg, err := newCgroup()
	if err != nil {
		return r, fmt.Errorf("cgroup: %w", err)
	}
	defer os.Remove(string(cg))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return r, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// Into the cgroup before git starts git-daemon (a child of git).
	d := exec.Command("/bin/sh", "-c", `echo $$ > "$0"/cgroup.procs && exec "$@"`, string(cg), e.git, "daemon", "--reuseaddr", "--base-path="+filepath.Join(e.tmp, "repos"), "--export-all",
		"--max-connections=0", "--listen=127.0.0.1", "--port="+strconv.Itoa(port))
	d.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + e.tmp, "GIT_CONFIG_SYSTEM=" + e.gitconfig, "GIT_CONFIG_GLOBAL=/dev/null",
		"SLUICE_SOCKET=" + a.socket, "SLUICE_SHIM_LOG=" + filepath.Join(e.tmp, "shim-"+name+".log")}
	d.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Start(); err != nil {
		return r, err
	}
	defer func() {
		syscall.Kill(-d.Process.Pid, syscall.SIGTERM)
		d.Wait()
		// Stragglers of the group (none when all clones finished).
		syscall.Kill(-d.Process.Pid, syscall.SIGKILL)
		b, _ := os.ReadFile(string(cg) + "/cgroup.procs")
		for _, p := range strings.Fields(string(b)) {
			if pid, _ := strconv.Atoi(p); pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			c.Close()
			break
		}
		if i > 200 {
			return r, fmt.Errorf("git daemon not listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
	m0, cpu0 := a.scrape(), cg.usage()
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	start := time.Now()
	var lastDone time.Time
	for i := 0; i < *k; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			dest := filepath.Join(e.tmp, fmt.Sprintf("clone-%s-%d", name, i))
			defer os.RemoveAll(dest)
			c := exec.CommandContext(ctx, e.git, "clone", "-q", "--bare", fmt.Sprintf("git://127.0.0.1:%d/r.git", port), dest)
			c.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + e.tmp, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
				"GIT_PROXY_COMMAND=" + proxy, "BENCH_ADDR=" + strconv.Itoa(10+i)}
			out, err := c.CombinedOutput()
			mu.Lock()
			if err == nil {
				r.ok++
			} else if r.failures < 3 {
				r.failures++
				fmt.Fprintf(os.Stderr, "clone %d (%s): %v: %.400s\n", i, name, err, out)
			}
			lastDone = time.Now()
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	r.wall = lastDone.Sub(start)
	if r.failures > 0 {
		b, _ := os.ReadFile(filepath.Join(e.tmp, "shim-"+name+".log"))
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		fmt.Fprintf(os.Stderr, "shim log (tail):\n%s\n", b)
	}
	time.Sleep(200 * time.Millisecond) // last Finished reports
	m1, cpu1 := a.scrape(), cg.usage()
	r.packCPU = packObjectsCPU(m1) - packObjectsCPU(m0)
	r.serverCPU = cpu1 - cpu0
	for _, x := range []struct {
		v    *float64
		name string
	}{{&r.hits, "hits"}, {&r.joins, "joins"}, {&r.misses, "misses"}, {&r.fills, "fills"}} {
		*x.v = m1["sluice_pack_cache_"+x.name+"_total"] - m0["sluice_pack_cache_"+x.name+"_total"]
	}
	return r, nil
}

// startup times matched commands through the shim and the same command run
// directly, interleaved, in one run, against an agent with the cache on or
// off.
func (e *env) startup(cache bool) error {
	name := map[bool]string{false: "off", true: "on"}[cache]
	a, err := e.startAgent(cache, "agent-startup-"+name)
	if err != nil {
		return err
	}
	defer a.stop()
	links := filepath.Join(e.tmp, "shimbin")
	os.MkdirAll(links, 0o755)
	os.Symlink(e.shim, filepath.Join(links, "git-upload-pack"))
	head, err := exec.Command(e.git, "--git-dir", e.repo, "rev-parse", "HEAD").Output()
	if err != nil {
		return err
	}
	base := []string{"PATH=/usr/bin:/bin", "HOME=" + e.tmp, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"SLUICE_SOCKET=" + a.socket, "SLUICE_SHIM_LOG=" + filepath.Join(e.tmp, "shim-startup.log"), "SLUICE_REAL_GIT=" + e.git}
	packArgs := []string{"pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset"}
	type variant struct {
		name   string
		argv   []string
		unique bool // a --depth that no other sample uses: a cache miss every time
	}
	variants := []variant{
		{"direct git upload-pack --advertise-refs", []string{e.git, "upload-pack", "--advertise-refs", e.repo}, false},
		{"shim   git-upload-pack --advertise-refs (matched)", []string{filepath.Join(links, "git-upload-pack"), "--advertise-refs", e.repo}, false},
		{"direct git pack-objects (full clone pack)", append([]string{e.git}, packArgs...), false},
	}
	if cache {
		variants = append(variants,
			variant{"shim   hook pack-objects, cache hit", append([]string{e.shim, "git"}, packArgs...), false},
			variant{"shim   hook pack-objects, every request new (writer)", append([]string{e.shim, "git"}, packArgs...), true})
	} else {
		variants = append(variants, variant{"shim   hook pack-objects, cache off", append([]string{e.shim, "git"}, packArgs...), false})
	}
	times := make([][]time.Duration, len(variants))
	for i := 0; i < *samples; i++ {
		for j, v := range variants {
			argv := v.argv
			if v.unique {
				argv = append(append([]string{}, argv...), "--depth="+strconv.Itoa(1000+i))
			}
			c := exec.Command(argv[0], argv[1:]...)
			c.Dir, c.Env = e.repo, base
			c.Stdin = bytes.NewReader(head)
			t0 := time.Now()
			if out, err := c.CombinedOutput(); err != nil && j != 0 {
				return fmt.Errorf("%s: %v\n%.300s", v.name, err, out)
			}
			times[j] = append(times[j], time.Since(t0))
		}
	}
	fmt.Printf("\ncache %s: start-up and pack latency, %d samples each, interleaved (wall time of the whole command):\n", name, *samples)
	for j, v := range variants {
		ts := times[j]
		sort.Slice(ts, func(a, b int) bool { return ts[a] < ts[b] })
		fmt.Printf("  %-54s p50 %8.2f ms  p99 %8.2f ms\n", v.name, ms(ts[len(ts)/2]), ms(ts[len(ts)*99/100]))
	}
	m := a.scrape()
	fmt.Printf("  (agent: hits %v, fills %v, joins %v)\n", m["sluice_pack_cache_hits_total"], m["sluice_pack_cache_fills_total"], m["sluice_pack_cache_joins_total"])
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func size(dir string) string {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
