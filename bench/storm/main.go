// Command storm is the storm benchmark (v2): it shows what sluice does for
// a real Git server under the storms real hosts get — a CI burst from many
// runner addresses, a fleet of clones and fetches over several
// repositories, shallow clones, an ls-remote flood, pushes in the middle
// of it — side by side with the same server unprotected and with the best
// static limit a sweep can find.
//
// It owns the whole set-up on loopback:
//
//   - Repositories generated with git fast-import (cached under -cache,
//     keyed by their parameters): big (the ci-burst repository, 110 MiB, no
//     bitmap), medium, lib, tool (the fleet: four sizes, each with a
//     template holding 10 % fewer commits, which fetches start from, so they
//     negotiate with haves), 16 tiny poll repositories, push.git (reset per
//     run) and a probe repository.
//   - The small host: a cgroup v1 memory cgroup (-mem, 1.5 GiB) holding the
//     server (git daemon, sshd + git-shell, or nginx + fcgiwrap +
//     git-http-backend), every git it runs, and sluiced with its cgroups;
//     with a cpuset of its own (-server-cpus, CPU 1) while the harness and
//     every client run on the other CPU (-client-cpus, CPU 0), so the
//     clients do not eat what the server can do.
//   - Client identity: K clients from N distinct loopback addresses
//     (identity.go says how, per transport).
//   - Scenarios (scenario.go): ci-burst, fleet, shallow, poll, push, mixed.
//     Every client loop is bounded in count (-max-ops) and time (-duration).
//   - Modes (modes.go): none, defaults (the shipped default policy,
//     untouched), best-static (the sweep's winner, run again), the sweep's
//     static-gN, and any policy file (policies/NAME.toml: tuned, adaptive,
//     old-defaults, pack-cache = the defaults plus the pack-objects cache in
//     a fresh directory per run, and whatever comes next, e.g.
//     host-budget). sluiced runs as shipped: eBPF tracer on (exec-in-place).
//   - The sweep: per scenario, static policies with one host-wide
//     pack-objects limit (key "global") over -sweep; the winner is the
//     highest goodput with 0 OOM kills and 0 failed pushes.
//   - The report (report.go): per mode goodput, failures by cause, pushes
//     failed, OOM kills, peak memory, probe percentiles against idle,
//     fairness across addresses, agent CPU/RSS, ratios against none and
//     best-static; CPU (counters.go): the clients' and the server's CPU
//     busy over the window (cpuacct), the CPU of pack-objects and
//     upload-pack per completed clone or fetch and the pack cache's
//     counters (the agent's /metrics); -repeat R runs the modes in ABBA order and calls
//     differences inside the spread ties. Percentiles are nearest-rank
//     (stats.go). Raw JSON of every run is kept.
//
// `make bench-storm` runs the default set (ci-burst over git:// and fleet
// over ssh from 48 addresses, each with the sweep); `make
// bench-storm-smoke` a short run that fails on broken wiring.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
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
	bin        string
	out        string
	cache      string
	policyDir  string
	scenarios  string
	transport  string
	modes      string
	sweep      string
	bestStatic int
	repeat     int
	clients    int
	addresses  int
	pushers    int
	maxOps     int
	duration   time.Duration
	idle       time.Duration
	drain      time.Duration
	opTimeout  time.Duration
	client     string
	memLimit   int64
	serverCPUs string
	clientCPUs string
	shares     bool
	smoke      bool
	rereport   string
	repo       repoParams
}

// pair is one scenario over one transport.
type pair struct{ Scenario, Transport string }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory with sluiced, sluice-shim and sluice (make build)")
	flag.StringVar(&o.out, "out", "", "report directory (default bench/storm/report/v2-DATE; a temporary directory with -smoke)")
	flag.StringVar(&o.cache, "cache", defaultCache(), "where generated repositories are cached, keyed by their parameters")
	flag.StringVar(&o.policyDir, "policy-dir", "bench/storm/policies", "where mode NAME finds NAME.toml")
	flag.StringVar(&o.scenarios, "scenario", "ci-burst@git,fleet@ssh", "scenarios to run, each NAME or NAME@TRANSPORT (ci-burst, fleet, shallow, poll, push, mixed); NAME alone runs over every -transport")
	flag.StringVar(&o.transport, "transport", "git", "transports for scenarios named without @: git (git daemon), ssh (sshd + git-shell), http (nginx + fcgiwrap + git-http-backend), comma-separated")
	flag.StringVar(&o.modes, "modes", "none,defaults,tuned,adaptive,best-static", "modes compared per scenario, in order: none, defaults, best-static, static-gN, or a policy file NAME (policy-dir/NAME.toml, e.g. tuned, adaptive, old-defaults, pack-cache = the shipped defaults plus the pack-objects cache) or NAME=FILE; a policy with a [pack_cache] table gets a fresh cache dir per run")
	flag.StringVar(&o.sweep, "sweep", "1,2,4,8,16", "host-wide pack-objects limits of the sweep, run first per scenario (empty: no sweep)")
	flag.IntVar(&o.bestStatic, "best-static", 0, "use this limit as best-static instead of the sweep's winner")
	flag.IntVar(&o.repeat, "repeat", 1, "run the modes R times in ABBA order (forward, reverse, forward, …) and report the spread")
	flag.IntVar(&o.clients, "clients", 48, "concurrent clients (K)")
	flag.IntVar(&o.addresses, "addresses", 0, "distinct client source addresses (N; 0: one per client)")
	flag.IntVar(&o.pushers, "pushers", -1, "pushing clients on top of the K (-1: the scenario's own: push 4, mixed 2, else 0)")
	flag.IntVar(&o.maxOps, "max-ops", 5000, "operations per client at most")
	flag.DurationVar(&o.duration, "duration", 40*time.Second, "storm window per run: no operation starts after it")
	flag.DurationVar(&o.idle, "idle", 3*time.Second, "idle probe phase per run before the storm")
	flag.DurationVar(&o.drain, "drain", 0, "how long operations running at the end of the window may finish (0: cut off at once, counted as unfinished)")
	flag.DurationVar(&o.opTimeout, "op-timeout", 120*time.Second, "per-operation timeout (counted as a failure)")
	flag.StringVar(&o.client, "client", "git", "clients of clones and fetches over git://: git (git clone/fetch, which index every pack on the clients' CPU) or discard (protocol v2 spoken by the harness, the pack counted and discarded: the server, not the clients' CPU, bounds goodput)")
	flag.Int64Var(&o.memLimit, "mem", 1536<<20, "memory limit of the server cgroup (the small host), bytes")
	flag.StringVar(&o.serverCPUs, "server-cpus", "1", "cpuset of the server cgroup (empty: no pinning, server and clients share the CPUs)")
	flag.StringVar(&o.clientCPUs, "client-cpus", "0", "cpuset of the harness and its clients")
	flag.BoolVar(&o.shares, "shares", true, "put the server and the clients each in a cpu cgroup with the largest cpu.shares (262144), so other work on a shared machine takes less of their CPUs")
	flag.BoolVar(&o.smoke, "smoke", false, "CI: tiny repositories, 6 clients from 6 addresses, 4 s windows, ci-burst@git + mixed@http + fleet@ssh, modes defaults and best-static (and pack-cache on ci-burst, to check the cache's wiring); fails on broken wiring")
	flag.StringVar(&o.rereport, "rereport", "", "write the markdown and plots again from a storm.json (into -out, default its directory); runs nothing")
	flag.IntVar(&o.repo.Files, "files", 12000, "files in the big repository")
	flag.IntVar(&o.repo.Bytes, "file-bytes", 4096, "bytes per file")
	flag.IntVar(&o.repo.Fanout, "fanout", 20, "files per directory")
	flag.IntVar(&o.repo.Commits, "commits", 1500, "commits after the first")
	flag.IntVar(&o.repo.Changes, "changes", 20, "files changed per commit")
	flag.Parse()
	if o.client != "git" && o.client != "discard" {
		return fmt.Errorf("-client %q: use git or discard", o.client)
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	extraModes := map[string][]string{} // by scenario, after -modes
	if o.rereport != "" {
		return rereport(o.rereport, o.out)
	}
	if o.smoke {
		o.clients, o.duration, o.idle, o.opTimeout = 6, 4*time.Second, 2*time.Second, 30*time.Second
		o.repo = repoParams{Files: 200, Bytes: 2048, Fanout: 10, Commits: 20, Changes: 5}
		if !set["scenario"] {
			o.scenarios = "ci-burst@git,mixed@http,fleet@ssh"
		}
		if !set["modes"] {
			o.modes = "defaults,best-static"
			// The pack cache's wiring, where it has work: identical
			// clones (one run more, a few seconds).
			extraModes["ci-burst"] = []string{"pack-cache"}
		}
		if !set["sweep"] {
			o.sweep = "2"
		}
	}
	if o.addresses <= 0 {
		o.addresses = o.clients
	}
	if o.clients < 1 || o.clients > 1000 || o.addresses > o.clients || o.duration <= 0 || o.duration > 30*time.Minute || o.repeat < 1 || o.repeat > 20 || o.maxOps < 1 {
		return errors.New("-clients must be 1..1000, -addresses at most -clients, -duration at most 30m, -repeat 1..20, -max-ops ≥ 1")
	}
	var pairs []pair
	for _, s := range strings.Split(o.scenarios, ",") {
		name, tr, ok := strings.Cut(strings.TrimSpace(s), "@")
		if _, err := findScenario(name); err != nil {
			return err
		}
		trs := strings.Split(o.transport, ",")
		if ok {
			trs = []string{tr}
		}
		for _, t := range trs {
			if t != "git" && t != "ssh" && t != "http" {
				return fmt.Errorf("transport %q: use git, ssh or http", t)
			}
			pairs = append(pairs, pair{name, t})
		}
	}
	var grid []int
	for _, s := range strings.Split(o.sweep, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		g, err := strconv.Atoi(s)
		if err != nil || g < 1 {
			return fmt.Errorf("-sweep %q: want limits ≥ 1, comma-separated", o.sweep)
		}
		grid = append(grid, g)
	}
	modeNames := strings.Split(o.modes, ",")
	all := slices.Clone(modeNames)
	for _, ms := range extraModes {
		all = append(all, ms...)
	}
	for _, n := range all {
		if _, err := resolveMode(n, o.bin, o.policyDir, 1); err != nil {
			return err
		}
	}
	if slices.Contains(modeNames, modeBestStatic) && len(grid) == 0 && o.bestStatic == 0 {
		return errors.New("mode best-static needs -sweep or -best-static N")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := newHarness(ctx, o, pairs)
	if err != nil {
		return err
	}
	defer h.close()

	rep := &report{Started: time.Now(), Opts: h.optsRecord(), CPUs: numCPU(), Repos: h.rs.sizes, RepoParams: h.rs.params, ProbeCgroup: h.probePin != nil}
	for _, p := range pairs {
		sc, _ := findScenario(p.Scenario)
		pr := &pairResult{Scenario: p.Scenario, Transport: p.Transport, Doc: sc.Doc, Pushers: h.pushers(sc)}
		rep.Pairs = append(rep.Pairs, pr)
		best := o.bestStatic
		if best == 0 && len(grid) > 0 {
			for _, g := range grid {
				m, _ := resolveMode(fmt.Sprintf("%s%d", sweepPrefix, g), o.bin, o.policyDir, 0)
				r, err := h.runMode(ctx, p, m, -1)
				if err != nil {
					return err
				}
				pr.Sweep = append(pr.Sweep, r)
			}
			best, pr.BestWhy = pickBest(pr.Sweep)
		} else if best > 0 {
			pr.BestWhy = "given with -best-static"
		}
		pr.Best = best
		for rep := 0; rep < o.repeat; rep++ {
			order := append(slices.Clone(modeNames), extraModes[p.Scenario]...)
			if rep%2 == 1 {
				slices.Reverse(order)
			}
			for _, n := range order {
				m, err := resolveMode(n, o.bin, o.policyDir, best)
				if err != nil {
					return err
				}
				r, err := h.runMode(ctx, p, m, rep)
				if err != nil {
					return err
				}
				pr.Runs = append(pr.Runs, r)
			}
		}
	}
	rep.Finished = time.Now()
	if err := rep.write(h.out, !o.smoke); err != nil {
		return err
	}
	h.logf("report written to %s", h.out)
	if o.smoke {
		return rep.smokeCheck()
	}
	return nil
}

// pickBest is the sweep's rule: the highest goodput among the limits that
// had 0 OOM kills and 0 failed pushes (a limit that kills the host or
// loses a push is not a candidate); if none qualifies, the highest goodput.
// Equal goodput: the lower peak memory.
func pickBest(runs []*runResult) (int, string) {
	var best *runResult
	safe := false
	for _, r := range runs {
		ok := r.OOMKills == 0 && r.S.PushFailed == 0
		better := best == nil || (ok && !safe) ||
			(ok == safe && (r.S.Goodput > best.S.Goodput || (r.S.Goodput == best.S.Goodput && r.PeakMem < best.PeakMem)))
		if better {
			best, safe = r, ok
		}
	}
	if best == nil {
		return 0, ""
	}
	why := fmt.Sprintf("highest goodput (%.1f/min) among the sweep's limits with 0 OOM kills and 0 failed pushes", best.S.Goodput)
	if !safe {
		why = fmt.Sprintf("no limit of the sweep had 0 OOM kills and 0 failed pushes; highest goodput (%.1f/min)", best.S.Goodput)
	}
	return best.Limit, why
}

// harness is what every run shares.
type harness struct {
	o          options
	out        string
	tmp, work  string
	rs         *repoSet
	cg         *serverCgroup
	serverPins []*pin
	clientPins []*pin
	probePin   *pin
	// clientAcct and serverAcct count each side's CPU (cpuacct; nil when
	// the hierarchy is missing).
	clientAcct, serverAcct *cpuAcct
	cgName                 string
	baseEnv                []string
	clientEnv              []string
	pathDir                string
	execDir                string
	gitconfig              string
	plainConfig            string
	keys                   *sshKeys
	proxy                  string
	seq                    int
	logf                   func(string, ...any)
	transportsSet          map[string]bool
}

func newHarness(ctx context.Context, o options, pairs []pair) (h *harness, err error) {
	h = &harness{o: o, transportsSet: map[string]bool{}, logf: func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "storm %s: "+f+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, a...)...)
	}}
	defer func() {
		if err != nil {
			h.close()
			h = nil
		}
	}()
	for _, p := range pairs {
		h.transportsSet[p.Transport] = true
	}
	if h.tmp, err = os.MkdirTemp("", "sluice-storm-"); err != nil {
		return h, err
	}
	// Client working directories next to the cache, on the same file
	// system as the fetch templates.
	if err = os.MkdirAll(o.cache, 0o755); err != nil {
		return h, err
	}
	if h.work, err = os.MkdirTemp(o.cache, "work-"); err != nil {
		return h, err
	}
	h.out = o.out
	if h.out == "" {
		h.out = "bench/storm/report/v2-" + time.Now().UTC().Format("2006-01-02")
		if o.smoke {
			h.out = filepath.Join(h.tmp, "report")
		}
	}
	h.baseEnv = []string{"HOME=" + h.tmp, "GIT_CONFIG_GLOBAL=/dev/null", "GIT_TERMINAL_PROMPT=0", "LANG=C"}
	genEnv := append([]string{"PATH=/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM=1"}, h.baseEnv...)
	h.clientEnv = genEnv
	t := time.Now()
	if h.rs, err = prepareRepos(o.cache, h.tmp, repoParamsFor(o.repo, o.smoke), genEnv, h.logf); err != nil {
		return h, err
	}
	h.logf("repositories ready in %v: %s", time.Since(t).Round(time.Millisecond), h.rs.base)
	if ctx.Err() != nil {
		return h, ctx.Err()
	}

	h.cgName = fmt.Sprintf("sluice-storm-%d", os.Getpid())
	if h.cg, err = newServerCgroup("/sys/fs/cgroup", h.cgName, o.memLimit); err != nil {
		return h, err
	}
	// The server's CPU: its cpuset, and the largest cpu.shares so other
	// work on a shared machine does not decide the result; the same for
	// the harness and its clients.
	if o.serverCPUs != "" {
		sp, err := newCpuset("/sys/fs/cgroup", h.cgName+"-server", o.serverCPUs)
		if err != nil {
			return h, err
		}
		h.serverPins = append(h.serverPins, sp)
	}
	if o.shares {
		sp, err := newPin("/sys/fs/cgroup", "cpu", h.cgName+"-server", [][2]string{{"cpu.shares", maxShares}})
		if err != nil {
			return h, err
		}
		h.serverPins = append(h.serverPins, sp)
	}
	// CPU accounting of each side (cpuacct counts, limits nothing): the
	// clients' CPU busy says whether the clients, which share
	// -client-cpus, bound a run's clones per minute.
	serverN, clientN := numCPU(), numCPU()
	if o.serverCPUs != "" {
		serverN = cpusetCount(o.serverCPUs)
		if o.clientCPUs != "" {
			clientN = cpusetCount(o.clientCPUs)
		}
	}
	if dir, p, err := acctFor(h.serverPins, "/sys/fs/cgroup", h.cgName+"-server"); err != nil {
		h.logf("no CPU accounting of the server: %v", err)
	} else {
		if p != nil {
			h.serverPins = append(h.serverPins, p)
		}
		h.serverAcct = &cpuAcct{dir: dir, cpus: serverN}
	}
	for _, p := range h.serverPins {
		h.cg.extra = append(h.cg.extra, p.dir)
	}
	if o.serverCPUs != "" && o.clientCPUs != "" {
		cp, err := newCpuset("/sys/fs/cgroup", h.cgName+"-clients", o.clientCPUs)
		if err != nil {
			return h, err
		}
		h.clientPins = append(h.clientPins, cp)
	}
	if o.shares {
		cp, err := newPin("/sys/fs/cgroup", "cpu", h.cgName+"-clients", [][2]string{{"cpu.shares", maxShares}})
		if err != nil {
			return h, err
		}
		h.clientPins = append(h.clientPins, cp)
	}
	if o.shares {
		if h.probePin, err = newPin("/sys/fs/cgroup", "cpu", h.cgName+"-probe", [][2]string{{"cpu.shares", maxShares}}); err != nil {
			return h, err
		}
	}
	if dir, p, err := acctFor(h.clientPins, "/sys/fs/cgroup", h.cgName+"-clients"); err != nil {
		h.logf("no CPU accounting of the clients: %v", err)
	} else {
		if p != nil {
			h.clientPins = append(h.clientPins, p)
		}
		h.clientAcct = &cpuAcct{dir: dir, cpus: clientN}
	}
	// The harness itself (and so every client it starts) moves to the
	// clients' cgroups; servers move to theirs at start (inCgroup).
	for _, p := range h.clientPins {
		if err = p.enter(os.Getpid()); err != nil {
			return h, fmt.Errorf("move the harness to %s: %w", p.dir, err)
		}
	}
	if h.pathDir, h.execDir, h.gitconfig, err = shimDirs(o.bin, h.tmp); err != nil {
		return h, fmt.Errorf("shim links (run make build first?): %w", err)
	}
	h.plainConfig = filepath.Join(h.tmp, "gitconfig-plain")
	if err = os.WriteFile(h.plainConfig, []byte(serverGitconfig), 0o644); err != nil {
		return h, err
	}
	if h.transportsSet["ssh"] {
		if h.keys, err = newSSHKeys(filepath.Join(h.tmp, "ssh")); err != nil {
			return h, err
		}
	}
	if h.transportsSet["git"] {
		if h.proxy, err = proxyScript(h.tmp); err != nil {
			return h, err
		}
	}
	return h, nil
}

// serverGitconfig is the servers' system gitconfig in every mode: smart
// HTTP accepts anonymous pushes (the push scenario). The sluice modes add
// the pack-objects hook (shimDirs).
const serverGitconfig = "[http]\n\treceivepack = true\n"

func (h *harness) close() {
	if h.cg != nil {
		if err := h.cg.remove(); err != nil {
			h.logf("cleanup: %v", err)
		}
	}
	for _, p := range h.clientPins {
		if err := p.leave(os.Getpid()); err != nil {
			h.logf("cleanup: %v", err)
		}
	}
	if h.probePin != nil {
		if err := removeTree(h.probePin.dir); err != nil {
			h.logf("cleanup: %v", err)
		}
	}
	for _, p := range h.serverPins {
		if err := removeTree(p.dir); err != nil {
			h.logf("cleanup: %v", err)
		}
	}
	if h.work != "" {
		os.RemoveAll(h.work)
	}
	if h.tmp != "" {
		os.RemoveAll(h.tmp)
	}
}

// probeCgroups is where the probe's git runs (none without -shares).
func (h *harness) probeCgroups() []string {
	if h.probePin == nil {
		return nil
	}
	return []string{h.probePin.dir}
}

func (h *harness) pushers(sc scenario) int {
	if h.o.pushers >= 0 {
		return h.o.pushers
	}
	return sc.Pushers
}

// optsRecord is the run's options as the report keeps them.
type optsRecord struct {
	Args       []string `json:"args"`
	Scenario   string   `json:"scenario"`
	Transport  string   `json:"transport"`
	Modes      string   `json:"modes"`
	Sweep      string   `json:"sweep"`
	BestStatic int      `json:"best_static"`
	Repeat     int      `json:"repeat"`
	Clients    int      `json:"clients"`
	Addresses  int      `json:"addresses"`
	Pushers    int      `json:"pushers"`
	MaxOps     int      `json:"max_ops"`
	Duration   string   `json:"duration"`
	Idle       string   `json:"idle"`
	Drain      string   `json:"drain"`
	OpTimeout  string   `json:"op_timeout"`
	Client     string   `json:"client,omitempty"`
	Mem        int64    `json:"mem"`
	ServerCPUs string   `json:"server_cpus"`
	ClientCPUs string   `json:"client_cpus"`
	Shares     bool     `json:"shares"`
	Smoke      bool     `json:"smoke"`
}

func (h *harness) optsRecord() optsRecord {
	o := h.o
	return optsRecord{Args: os.Args[1:], Scenario: o.scenarios, Transport: o.transport, Modes: o.modes, Sweep: o.sweep,
		BestStatic: o.bestStatic, Repeat: o.repeat, Clients: o.clients, Addresses: o.addresses, Pushers: o.pushers, MaxOps: o.maxOps,
		Duration: o.duration.String(), Idle: o.idle.String(), Drain: o.drain.String(), OpTimeout: o.opTimeout.String(), Client: o.client,
		Mem: o.memLimit, ServerCPUs: o.serverCPUs, ClientCPUs: o.clientCPUs, Shares: o.shares, Smoke: o.smoke}
}

func defaultCache() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "sluice-storm")
	}
	return "/var/tmp/sluice-storm"
}

// fileName turns a label into a file name part.
func fileName(label string) string {
	return strings.NewReplacer("+", "-", " ", "-", "(", "", ")", "", "#", "", "@", "-", "/", "-", "=", "-").Replace(label)
}

// runMode runs one mode of one scenario: agent (if any) and server inside
// the server cgroup, an idle probe phase, then the storm with the probe and
// the sampler alongside; everything it started is stopped before it
// returns. rep is the ABBA pass (-1: a sweep run).
func (h *harness) runMode(ctx context.Context, p pair, m mode, rep int) (*runResult, error) {
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	o := h.o
	h.seq++
	sc, _ := findScenario(p.Scenario)
	label := fmt.Sprintf("%s@%s %s", p.Scenario, p.Transport, m.Name)
	dir := filepath.Join(h.tmp, fmt.Sprintf("run-%02d-%s", h.seq, fileName(label)))
	work := filepath.Join(h.work, fmt.Sprintf("run-%02d", h.seq))
	for _, d := range []string{dir, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	defer os.RemoveAll(work)
	r := &runResult{Scenario: p.Scenario, Transport: p.Transport, Mode: m.Name, Repeat: rep, Sweep: rep < 0, Limit: m.Limit,
		Source: m.Source, Policy: strings.TrimSpace(m.Policy), Clients: o.clients, Addresses: o.addresses, Pushers: h.pushers(sc),
		MemLimit: o.memLimit, Window: o.duration.Seconds(), Drain: o.drain.Seconds()}
	h.logf("run %d: %s (%d clients from %d addresses, %d pushers, %v)", h.seq, label, o.clients, o.addresses, r.Pushers, o.duration)
	// Each run starts from the same state: an empty server cgroup, the
	// same push.git, the repositories' files in page cache charged to the
	// server cgroup (the host's cache).
	if err := h.cg.empty(30 * time.Second); err != nil {
		return nil, err
	}
	if err := h.rs.resetPushRepo(h.clientEnv); err != nil {
		return nil, err
	}
	if err := warm(h.cg, h.rs.base); err != nil {
		return nil, fmt.Errorf("warm the page cache: %w", err)
	}

	var ag *agent
	if m.Policy != "" {
		root := fmt.Sprintf("%s-agent-%d", h.cgName, h.seq)
		var err error
		if ag, err = startAgent(o.bin, dir, m, h.cg, root, append([]string{"PATH=/usr/bin:/bin"}, h.baseEnv...)); err != nil {
			return nil, err
		}
		defer func() {
			ag.stop(syscall.SIGTERM, 10*time.Second)
			if err := removeAgentHierarchy("/sys/fs/cgroup", h.cg, root); err != nil {
				h.logf("cleanup: %v", err)
			}
			os.RemoveAll(filepath.Join(dir, "pack-cache"))
		}()
		r.PackCache = ag.packCache
	}
	socket := ""
	if ag != nil {
		socket = ag.socket
	}
	serverEnv := daemonEnv(h.baseEnv, ag != nil, socket, h.pathDir, h.execDir, h.gitconfig, h.plainConfig)

	addrs := make([]string, o.addresses)
	for i := range addrs {
		addrs[i] = clientAddr(i)
	}
	pushAddrs := make([]string, r.Pushers)
	for j := range pushAddrs {
		pushAddrs[j] = clientAddr(o.addresses + j)
	}
	var ep endpoint
	var probeURL string
	probeEnv := h.clientEnv
	serverLog := ""
	switch p.Transport {
	case "git":
		serverLog = filepath.Join(dir, "daemon.log")
		d, port, err := startDaemon(h.rs.base, serverLog, h.cg, serverEnv)
		if err != nil {
			return nil, err
		}
		defer d.stop(syscall.SIGTERM, 3*time.Second)
		ep = endpoint{
			url: func(repo, _ string) string { return fmt.Sprintf("git://127.0.0.1:%d/%s.git", port, repo) },
			env: func(addr string) []string { return []string{"GIT_PROXY_COMMAND=" + h.proxy, "STORM_BIND=" + addr} },
		}
		probeURL = ep.url("probe", "")
	case "ssh":
		sdir := filepath.Join(dir, "sshd")
		if err := os.MkdirAll(sdir, 0o755); err != nil {
			return nil, err
		}
		d, port, err := startSSHD(h.keys, sdir, h.cg, serverEnv)
		if err != nil {
			return nil, err
		}
		defer d.stop(syscall.SIGTERM, 3*time.Second)
		serverLog = filepath.Join(sdir, "sshd.log")
		ep = endpoint{
			url: func(repo, _ string) string {
				return fmt.Sprintf("ssh://root@127.0.0.1:%d%s/%s.git", port, h.rs.base, repo)
			},
			env: func(addr string) []string {
				return []string{"GIT_SSH_COMMAND=" + h.keys.command + " -o BindAddress=" + addr}
			},
		}
		probeURL = ep.url("probe", "")
		probeEnv = append(slices.Clone(h.clientEnv), ep.env("127.0.0.1")...)
	case "http":
		hs, err := startHTTP(h.rs.base, filepath.Join(dir, "http"), h.cg, serverEnv, o.clients+r.Pushers+8)
		if err != nil {
			return nil, err
		}
		defer hs.stop()
		serverLog = filepath.Join(dir, "http", "fcgiwrap.log")
		fw, err := startForwarders(append(slices.Clone(addrs), pushAddrs...), fmt.Sprintf("127.0.0.1:%d", hs.port))
		if err != nil {
			return nil, err
		}
		defer fw.stop()
		ep = endpoint{
			url: func(repo, addr string) string { return fmt.Sprintf("http://%s/%s.git", fw.url(addr), repo) },
			env: func(string) []string { return nil },
		}
		probeURL = fmt.Sprintf("http://127.0.0.1:%d/probe.git", hs.port)
	}

	// Idle baseline.
	ictx, icancel := context.WithTimeout(ctx, o.idle)
	r.ProbeIdleOps = probe(ictx, h.probeCgroups(), probeURL, probeEnv, time.Now())
	icancel()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	oom0 := h.cg.oomKills()
	h.cg.resetPeak()
	var cpu0 time.Duration
	var ctr0 agentCounters
	var ctr0Err error
	mc := &http.Client{Timeout: 2 * time.Second}
	if ag != nil {
		cpu0 = procCPU(ag.pid)
		ctr0, ctr0Err = readAgentCounters(mc, ag.metrics)
	}
	clientCPU0, clientOK := h.clientAcct.usage()
	serverCPU0, serverOK := h.serverAcct.usage()
	r.Load[0] = loadAvg1()
	t0 := time.Now()
	sctx, scancel := context.WithCancel(ctx)
	samples, probes := make(chan []sample, 1), make(chan []op, 1)
	go func() { samples <- sampler(sctx, h.cg, ag, t0) }()
	go func() { probes <- probe(sctx, h.probeCgroups(), probeURL, probeEnv, t0) }()
	spec := loadSpec{sc: sc, clients: o.clients, addrs: addrs, pushAddrs: pushAddrs, maxOps: o.maxOps, opTimeout: o.opTimeout,
		t0: t0, stopAt: t0.Add(o.duration), hardStop: t0.Add(o.duration + o.drain), seed: 1, discard: o.client == "discard"}
	r.Ops = storm(ctx, spec, ep, h.rs, work, h.clientEnv)
	r.Wall = time.Since(t0).Seconds()
	if c1, ok := h.clientAcct.usage(); ok && clientOK {
		r.ClientCPU, r.ClientCPUs = (c1 - clientCPU0).Seconds(), h.clientAcct.cpus
	}
	if s1, ok := h.serverAcct.usage(); ok && serverOK {
		r.ServerCPU, r.ServerCPUs = (s1 - serverCPU0).Seconds(), h.serverAcct.cpus
	}
	if ag != nil {
		// The end of the window, before the agent is stopped: commands
		// still running are not counted (the CPU column says so).
		if ctr1, err := readAgentCounters(mc, ag.metrics); err != nil || ctr0Err != nil {
			h.logf("run %d: agent counters: %v", h.seq, errors.Join(ctr0Err, err))
		} else {
			d := ctr1.since(ctr0)
			r.Counters = &d
		}
	}
	r.Load[1] = loadAvg1()
	scancel()
	r.Samples, r.ProbeStormOps = <-samples, <-probes
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	r.PeakMem = h.cg.peak()
	r.OOMKills = h.cg.oomKills() - oom0
	if ag != nil {
		r.AgentCPU = (procCPU(ag.pid) - cpu0).Seconds()
		r.AgentRejected = counter(mc, ag.metrics, "sluice_commands_total", `outcome="rejected"`)
		r.Backoffs = countLines(ag.logPath, "adaptive limit backed off")
		for _, s := range r.Samples {
			r.AgentRSS = max(r.AgentRSS, s.AgentRSS)
		}
		// Stop the agent before reading its log, so every line is in.
		ag.stop(syscall.SIGTERM, 10*time.Second)
		saw := parseAgentLog(ag.logPath)
		r.Agent = &saw
		r.AgentLogHead = head(ag.logPath, 4000)
		if !o.smoke {
			// The whole log stays outside the report, for reading why a
			// mode did what it did.
			keep := filepath.Join(os.TempDir(), fmt.Sprintf("sluice-storm-logs-%d", os.Getpid()))
			if b, err := os.ReadFile(ag.logPath); err == nil && os.MkdirAll(keep, 0o755) == nil {
				r.AgentLog = filepath.Join(keep, fmt.Sprintf("run-%02d-%s.log", h.seq, fileName(label)))
				os.WriteFile(r.AgentLog, b, 0o644)
			}
		}
	}
	r.ServerSluiceLines = countLines(serverLog, "sluice:")
	r.summarize(sc)
	h.logf("run %d: %s: goodput %.1f/min (%d ok), %d failed, %d pushes failed, %d OOM kills, peak %.0f MiB, probe p99 %.0f ms, Jain %.2f, load %.1f, CPU busy clients %s %% / server %s %%",
		h.seq, label, r.S.Goodput, r.S.GoodOps, r.S.Failed, r.S.PushFailed, r.OOMKills, float64(r.PeakMem)/(1<<20), r.S.ProbeStorm.P99, r.S.Jain, r.Load[1],
		num(r.clientBusy(), "%.0f"), num(r.serverBusy(), "%.0f"))
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
		if d.Type()&fs.ModeSymlink != 0 {
			// The cached repositories are linked in: walk their files.
			t, err := filepath.EvalSymlinks(p)
			if err != nil {
				return err
			}
			return filepath.WalkDir(t, func(q string, e fs.DirEntry, err error) error {
				if err == nil && e.Type().IsRegular() {
					files = append(files, q)
				}
				return err
			})
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
	// -L: the repositories are symlinks to the cache.
	cmd := inCgroup(cg, "/bin/sh", "-c", `find -L "$0" -type f -exec cat {} + > /dev/null`, dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// head returns the first n bytes of a file.
func head(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

// rereport renders a kept storm.json again (after a change to the report's
// text or plots: the measurements stay the ones taken).
func rereport(path, out string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if out == "" {
		out = filepath.Dir(path)
	}
	return r.write(out, true)
}
