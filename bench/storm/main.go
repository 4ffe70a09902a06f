// Command storm is the clone-storm benchmark: it shows what sluice does
// for a real Git server when K clients clone the same big repository at
// once, side by side with the same server unprotected.
//
// It owns the whole set-up on loopback: a generated repository (cached,
// built with git fast-import) and a small one for the probe; a memory
// cgroup (v1) that stands for a small host, inside which git daemon, every
// git it runs and sluiced (with its bucket cgroups) live; the load (K
// cloning clients plus a once-a-second `git ls-remote` probe, after an
// idle probe phase as the baseline); and the report: per mode clones
// completed and failed by cause, OOM kills, clone and probe latency,
// peak server memory, agent CPU and RSS, ratios against `none`, as
// markdown and JSON, plus a plot of each adaptive run over time.
//
// Modes run back to back in one invocation with the same repository and
// load; their policies are fixed in the source (see modes), never tuned on
// the measured run. `make bench-storm` runs the full benchmark,
// `make bench-storm-smoke` a few seconds of each mode that fails on a
// broken harness.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	realGit   = "/usr/bin/git"
	gitDaemon = "/usr/lib/git-core/git-daemon"
)

type options struct {
	bin          string
	out          string
	cache        string
	modes        string
	transport    string
	clients      int
	duration     time.Duration
	idle         time.Duration
	drain        time.Duration
	cloneTimeout time.Duration
	memLimit     int64
	smoke        bool
	repo         repoParams
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory with sluiced and sluice-shim (make build)")
	flag.StringVar(&o.out, "out", "", "report directory (default bench/storm/report; a temporary directory with -smoke)")
	flag.StringVar(&o.cache, "cache", defaultCache(), "where generated repositories are cached, keyed by their parameters")
	flag.StringVar(&o.modes, "modes", "none,static,adaptive,static+cgroups,adaptive+cgroups", "modes to run, in order (also: adaptive-ws, adaptive-anon: adaptive with memory_signal set explicitly)")
	flag.StringVar(&o.transport, "transport", "git", "git (git daemon), ssh (sshd + git-shell), or git,ssh: every mode over each, in that order")
	flag.IntVar(&o.clients, "clients", 48, "concurrent cloning clients")
	flag.DurationVar(&o.duration, "duration", 60*time.Second, "storm length per mode (no new clone starts after it)")
	flag.DurationVar(&o.idle, "idle", 5*time.Second, "idle probe phase per mode before the storm")
	flag.DurationVar(&o.drain, "drain", 30*time.Second, "how long clones running at the end of the storm may finish before they are cut off")
	flag.DurationVar(&o.cloneTimeout, "clone-timeout", 120*time.Second, "per-clone timeout (counted as a failure)")
	flag.Int64Var(&o.memLimit, "mem", 1536<<20, "memory limit of the server cgroup (the small host), bytes")
	flag.BoolVar(&o.smoke, "smoke", false, "tiny repository, 4 clients, 3 s per mode; fail on anything a working harness would not do")
	flag.IntVar(&o.repo.Files, "files", 12000, "files in the generated repository")
	flag.IntVar(&o.repo.Bytes, "file-bytes", 4096, "bytes per file")
	flag.IntVar(&o.repo.Fanout, "fanout", 20, "files per directory")
	flag.IntVar(&o.repo.Commits, "commits", 1500, "commits after the first")
	flag.IntVar(&o.repo.Changes, "changes", 20, "files changed per commit")
	flag.Parse()
	if o.smoke {
		o.clients, o.duration, o.idle, o.drain, o.cloneTimeout = 4, 3*time.Second, 2*time.Second, 10*time.Second, 20*time.Second
		o.repo = repoParams{Files: 200, Bytes: 2048, Fanout: 10, Commits: 20, Changes: 5}
	}
	transports := strings.Split(o.transport, ",")
	for _, tr := range transports {
		if tr != "git" && tr != "ssh" {
			return fmt.Errorf("-transport %q: use git, ssh or git,ssh", o.transport)
		}
	}
	if o.clients < 1 || o.clients > 512 || o.duration <= 0 || o.duration > 30*time.Minute {
		return errors.New("-clients must be 1..512 and -duration at most 30m")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "sluice-storm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.out == "" {
		o.out = "bench/storm/report"
		if o.smoke {
			o.out = filepath.Join(tmp, "report")
		}
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, "storm: "+f+"\n", a...) }
	baseEnv := []string{"HOME=" + tmp, "GIT_CONFIG_GLOBAL=/dev/null", "GIT_TERMINAL_PROMPT=0", "LANG=C"}
	genEnv := append([]string{"PATH=/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM=1"}, baseEnv...)

	t := time.Now()
	big, err := ensureRepo(o.cache, "big", o.repo, genEnv, logf)
	if err != nil {
		return fmt.Errorf("big repository: %w", err)
	}
	if _, err := ensureRepo(o.cache, "small", repoParams{Files: 20, Bytes: 512, Fanout: 10, Commits: 5, Changes: 2}, genEnv, logf); err != nil {
		return fmt.Errorf("small repository: %w", err)
	}
	// Both repositories live side by side under one base path... except
	// that the small one is cached under its own key: link it in.
	base := filepath.Dir(big)
	small := filepath.Join(base, "small.git")
	if _, err := os.Lstat(small); err != nil {
		target := filepath.Join(o.cache, repoParams{Files: 20, Bytes: 512, Fanout: 10, Commits: 5, Changes: 2}.key(), "small.git")
		if err := os.Symlink(target, small); err != nil {
			return err
		}
	}
	logf("repositories ready in %v: %s", time.Since(t).Round(time.Millisecond), base)

	cgName := fmt.Sprintf("sluice-storm-%d", os.Getpid())
	ms, err := modes(strings.Split(o.modes, ","), transports, cgName+"-agent", o.memLimit)
	if err != nil {
		return err
	}
	if o.smoke && o.transport == "git" {
		// The smoke run also crosses sshd + git-shell once (about 0.3 s
		// per connection here), so the ssh wiring cannot rot either.
		if _, err := os.Stat(sshdBin); err == nil {
			extra, _ := modes([]string{"adaptive+cgroups"}, []string{"ssh"}, cgName+"-agent", o.memLimit)
			ms = append(ms, extra...)
		} else {
			logf("smoke: %s missing (apt-get install openssh-server): the ssh transport is not exercised", sshdBin)
		}
	}
	var keys *sshKeys
	for _, m := range ms {
		if m.Transport == "ssh" && keys == nil {
			if keys, err = newSSHKeys(filepath.Join(tmp, "ssh")); err != nil {
				return err
			}
		}
	}
	cg, err := newServerCgroup("/sys/fs/cgroup", cgName, o.memLimit)
	if err != nil {
		return err
	}
	defer func() {
		if err := removeAgentHierarchy("/sys/fs/cgroup", cg, cgName+"-agent"); err != nil {
			logf("cleanup: %v", err)
		}
		if err := cg.remove(); err != nil {
			logf("cleanup: %v", err)
		}
	}()
	pathDir, execDir, gitconfig, err := shimDirs(o.bin, tmp)
	if err != nil {
		return fmt.Errorf("shim links (run make build first?): %w", err)
	}
	emptyConfig := filepath.Join(tmp, "gitconfig-empty")
	if err := os.WriteFile(emptyConfig, nil, 0o644); err != nil {
		return err
	}

	rep := &report{Started: time.Now(), Options: o, Repo: o.repo, RepoSize: dirSize(big), CPUs: numCPU()}
	clientEnv := append([]string{"PATH=/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM=1"}, baseEnv...)
	for _, m := range ms {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logf("mode %s: %d clients for %v", m.label(), o.clients, o.duration)
		r, err := runMode(ctx, o, m, cg, base, tmp, baseEnv, clientEnv, pathDir, execDir, gitconfig, emptyConfig, keys)
		if err != nil {
			return fmt.Errorf("mode %s: %w", m.label(), err)
		}
		logf("mode %s: %d clones ok, %d failed, %d OOM kills, probe p99 %.0f ms", m.label(), r.Clones.OK, r.Clones.Failed(), r.OOMKills, r.ProbeStorm.P99)
		rep.Modes = append(rep.Modes, r)
	}
	rep.Finished = time.Now()
	logDir := ""
	if !o.smoke {
		logDir = filepath.Join(os.TempDir(), fmt.Sprintf("sluice-storm-logs-%d", os.Getpid()))
	}
	if err := rep.write(o.out, logDir, !o.smoke); err != nil {
		return err
	}
	logf("report written to %s (agent logs: %s)", o.out, logDir)
	if o.smoke {
		return rep.smokeCheck()
	}
	return nil
}

// fileName turns a mode label into a file name part.
func fileName(label string) string {
	return strings.NewReplacer("+", "-", " ", "-", "(", "", ")", "", "#", "").Replace(label)
}

func defaultCache() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "sluice-storm")
	}
	return "/var/tmp/sluice-storm"
}

// runMode runs one mode: agent (if any) and git daemon inside the server
// cgroup, an idle probe phase, then the storm with the probe and the
// sampler alongside; everything it started is stopped before it returns.
func runMode(ctx context.Context, o options, m mode, cg *serverCgroup, base, tmp string, baseEnv, clientEnv []string,
	pathDir, execDir, gitconfig, emptyConfig string, keys *sshKeys) (*modeResult, error) {
	dir := filepath.Join(tmp, fileName(m.label()))
	if err := os.MkdirAll(filepath.Join(dir, "clones"), 0o755); err != nil {
		return nil, err
	}
	r := &modeResult{Name: m.Name, Transport: m.Transport, Policy: strings.TrimSpace(m.Policy)}
	// Each mode starts from the same state: an empty server cgroup, and the
	// repositories' files in page cache charged to it (the host's cache).
	if err := cg.empty(30 * time.Second); err != nil {
		return nil, err
	}
	if err := warm(cg, base); err != nil {
		return nil, fmt.Errorf("warm the page cache: %w", err)
	}

	var ag *agent
	if m.Policy != "" {
		var err error
		if ag, err = startAgent(o.bin, dir, m, cg, append([]string{"PATH=/usr/bin:/bin"}, baseEnv...)); err != nil {
			return nil, err
		}
		defer func() {
			ag.stop(syscall.SIGTERM, 10*time.Second)
			if m.Cgroups {
				removeAgentHierarchy("/sys/fs/cgroup", cg, filepath.Base(mustAgentRoot(m)))
			}
		}()
	}
	socket := ""
	if ag != nil {
		socket = ag.socket
	}
	daemonLog := filepath.Join(dir, "daemon.log")
	serverEnv := daemonEnv(baseEnv, ag != nil, socket, pathDir, execDir, gitconfig, emptyConfig)
	var bigURL, smallURL string
	if m.Transport == "ssh" {
		sdir := filepath.Join(dir, "sshd")
		if err := os.MkdirAll(sdir, 0o755); err != nil {
			return nil, err
		}
		d, port, err := startSSHD(keys, sdir, cg, serverEnv)
		if err != nil {
			return nil, err
		}
		defer d.stop(syscall.SIGTERM, 3*time.Second)
		daemonLog = filepath.Join(sdir, "sshd.log")
		bigURL = fmt.Sprintf("ssh://root@127.0.0.1:%d%s/big.git", port, base)
		smallURL = fmt.Sprintf("ssh://root@127.0.0.1:%d%s/small.git", port, base)
		clientEnv = append(append([]string{}, clientEnv...), "GIT_SSH_COMMAND="+keys.command)
	} else {
		d, port, err := startDaemon(base, daemonLog, cg, serverEnv)
		if err != nil {
			return nil, err
		}
		defer d.stop(syscall.SIGTERM, 3*time.Second)
		bigURL = fmt.Sprintf("git://127.0.0.1:%d/big.git", port)
		smallURL = fmt.Sprintf("git://127.0.0.1:%d/small.git", port)
	}

	// Idle baseline.
	ictx, icancel := context.WithTimeout(ctx, o.idle)
	r.ProbeIdleOps = probe(ictx, smallURL, clientEnv, time.Now())
	icancel()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	oom0 := cg.oomKills()
	cg.resetPeak()
	var cpu0 time.Duration
	if ag != nil {
		cpu0 = procCPU(ag.pid)
	}
	r.Load[0] = loadAvg1()
	t0 := time.Now()
	sctx, scancel := context.WithCancel(ctx)
	samples, probes := make(chan []sample, 1), make(chan []op, 1)
	go func() { samples <- sampler(sctx, cg, ag, t0) }()
	go func() { probes <- probe(sctx, smallURL, clientEnv, t0) }()
	stopAt := t0.Add(o.duration)
	r.CloneOps = storm(ctx, o.clients, bigURL, filepath.Join(dir, "clones"), clientEnv, o.cloneTimeout, t0, stopAt, stopAt.Add(o.drain))
	r.Wall = time.Since(t0).Seconds()
	r.Load[1] = loadAvg1()
	scancel()
	r.Samples, r.ProbeStormOps = <-samples, <-probes
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	r.PeakMem = cg.peak()
	r.OOMKills = cg.oomKills() - oom0
	if ag != nil {
		r.AgentCPU = (procCPU(ag.pid) - cpu0).Seconds()
		c := &http.Client{Timeout: 2 * time.Second}
		r.AgentRejected = counter(c, ag.metrics, "sluice_commands_total", `outcome="rejected"`)
		r.AgentDropped = map[string]float64{}
		for _, reason := range []string{"max_size", "max_time", "unavailable"} {
			r.AgentDropped[reason] = counter(c, ag.metrics, "sluice_requests_dropped_total", `reason="`+reason+`"`)
		}
		r.AgentUploadPacks = counter(c, ag.metrics, "sluice_commands_total", `subcmd="upload-pack"`)
		r.AgentPackObjects = counter(c, ag.metrics, "sluice_commands_total", `subcmd="pack-objects"`)
		if m.Cgroups {
			// Whether the CPU quota bound at all (cumulative over the
			// agent's life: this mode only, since each mode has a fresh
			// hierarchy).
			r.QuotaPeriods = counter(c, ag.metrics, "sluice_cgroup_cpu_periods_total", `scope="parent"`)
			r.QuotaThrottled = counter(c, ag.metrics, "sluice_cgroup_cpu_throttled_periods_total", `scope="parent"`)
		}
		r.Backoffs = countLines(ag.logPath, "adaptive limit backed off")
		for _, s := range r.Samples {
			r.AgentRSS = max(r.AgentRSS, s.AgentRSS)
		}
	}
	r.DaemonSluiceLines = countLines(daemonLog, "sluice:")
	r.summarize()
	if ag != nil && !o.smoke {
		// Keep the agent's log next to the report for the reading.
		r.agentLogText = tail(ag.logPath, 1<<20)
	}
	return r, nil
}

// warm drops the page cache of every file under dir (whoever it is
// charged to) and reads the files again from inside the server cgroup, so
// the cache is charged to the small host, as a server's own would be.
func warm(cg *serverCgroup, dir string) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, f := range files {
		if fd, err := unix.Open(f, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
			unix.Close(fd)
		}
	}
	// -L: small.git is a symlink to its own cache directory.
	cmd := inCgroup(cg, "/bin/sh", "-c", `find -L "$0" -type f -exec cat {} + > /dev/null`, dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func mustAgentRoot(m mode) string {
	for _, l := range strings.Split(m.Policy, "\n") {
		if v, ok := strings.CutPrefix(l, "hierarchy_root = "); ok {
			return strings.Trim(v, `"`)
		}
	}
	return "sluice"
}
