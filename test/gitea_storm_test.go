package test

// gitea_storm_test.go: storm v2's ci-burst and fleet scenarios over
// Gitea's HTTP, with its report's modes (`make bench-gitea-storm`; skipped
// unless SLUICE_GITEA_STORM is set). Not bench/storm itself (see
// bench/gitea/README.md): one Gitea (by default built with
// test/gitea-client-address.patch, so git sees each client's address) and,
// per mode, a fresh sluiced with the mode's policy, all inside a cgroup v1
// memory cgroup that stands for a small host. K clients, each from its own
// loopback address (127.0.0.10+i, through an in-process TCP forwarder),
// loop over the scenario's operations for a fixed window; one client pushes
// to a small repository every 2 s; a probe GETs a small repository's file
// listing from the API every 500 ms, idle first and then through the storm.
// Modes (SLUICE_GITEA_STORM_MODES, run in that order):
//
//   - defaults: the guide's wiring, sluiced with policy/default.toml;
//   - serving-only: the guide's cheaper wiring (real git, the dashed
//     serving names and the hook are the shim), same policy;
//   - none: the real git, the hook /usr/bin/env (sluice not involved);
//   - static-gN: storm v2's sweep policy, one host-wide pack-objects
//     limit N (SLUICE_GITEA_STORM_SWEEP=1,2,4 runs static-g1, -g2, -g4
//     first);
//   - best-static: the sweep's winner (storm v2's rule), run again;
//   - any other name: bench/storm/policies/NAME.toml (old-defaults,
//     pack-cache: its cache in a fresh directory per run).
//
// Every mode but serving-only and none uses the guide's wiring. Modes switch
// the links of Gitea's [git] PATH directory (as in gitea_bench_test.go).

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	istats "github.com/sluicehq/sluice/internal/stats"
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

// A storm operation's kind, as storm v2's (bench/storm/scenario.go).
const (
	opClone    = "clone"     // git clone --bare
	opFetch    = "fetch"     // git fetch into a repository holding an older history
	opShallow  = "shallow"   // git clone --bare --depth 1
	opLsRemote = "ls-remote" // git ls-remote
)

// opKinds is the report's order of kinds.
var opKinds = []string{opClone, opFetch, opShallow, opLsRemote}

// giteaScenario is a storm shape over Gitea: what each client draws its
// next operation from (kind by weight, then a repository uniformly).
type giteaScenario struct {
	name  string
	doc   string
	mix   []giteaShare
	repos []string // repository names the mix draws from
}

type giteaShare struct {
	kind string
	w    int
}

func (s giteaScenario) pick(rng *rand.Rand) (string, string) {
	total := 0
	for _, m := range s.mix {
		total += m.w
	}
	n := rng.IntN(total)
	for _, m := range s.mix {
		if n < m.w {
			return m.kind, s.repos[rng.IntN(len(s.repos))]
		}
		n -= m.w
	}
	panic("unreachable")
}

// stormRepo is a repository of the storm: where it came from and, for
// fetches, an older history of it (template, at oldTip).
type stormRepo struct {
	name, src        string
	template, oldTip string
	mib              int64
}

// kindCount is the outcomes of one kind of operation in one mode.
type kindCount struct{ ok, failed, timeouts, unfinished int64 }

type stormResult struct {
	mode, source                     string
	limit                            int // host-wide pack-objects limit of a sweep mode
	kinds                            map[string]*kindCount
	goodOK, failed                   int64 // goodput operations (every kind but ls-remote)
	failedSluice                     int64 // failures whose output names sluice
	perClient                        []float64
	opTimes                          []time.Duration // completed goodput operations
	elapsed                          time.Duration   // storm start until the last client stopped
	pushesOK, pushesFailed           int64
	oom                              int64
	peakMiB                          int64
	idle, storm                      []time.Duration
	probeFailed                      int
	rejected, admitted               float64
	packCPU                          float64 // pack-objects CPU seconds (agent metrics)
	cacheHits, cacheJoins, cacheMiss float64
	addrs                            int // distinct client addresses of pack-objects in the agent's log
	giteaAlive                       bool
	load                             string
}

func (r *stormResult) goodput() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.goodOK) / r.elapsed.Minutes()
}

// Modes besides the file policies of bench/storm/policies.
const (
	stormSweepPrefix = "static-g"    // static-gN: one host-wide pack-objects limit N
	stormBestStatic  = "best-static" // the sweep's winner, run again
)

// staticPolicy is storm v2's sweep policy (bench/storm/modes.go, which
// holds the reasons): a single host-wide limit of n on pack-objects and
// nothing else: no other rule, the host budget off; the queue long and
// patient, so that the limit is measured, not rejections.
func staticPolicy(n int) string {
	return fmt.Sprintf(`[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "global"
max_per_key = %d
max_queue_size = 1000
max_queue_wait = "5m"

[budget]
enabled = false
`, n)
}

// tomlSet gives key the value in [table] of a policy text: the key's own
// line when the table has it, else a new line right under the table's
// header, else the table is added at the end.
func tomlSet(text, table, key, value string) string {
	lines := strings.Split(text, "\n")
	header, in := -1, false
	for i, l := range lines {
		code, _, _ := strings.Cut(l, "#")
		code = strings.TrimSpace(code)
		if strings.HasPrefix(code, "[") {
			in = code == "["+table+"]"
			if in {
				header = i
			}
			continue
		}
		if k, _, ok := strings.Cut(code, "="); in && ok && strings.TrimSpace(k) == key {
			lines[i] = key + " = " + value
			return strings.Join(lines, "\n")
		}
	}
	if header < 0 {
		return strings.TrimRight(text, "\n") + "\n\n[" + table + "]\n" + key + " = " + value + "\n"
	}
	lines = slices.Insert(lines, header+1, key+" = "+value)
	return strings.Join(lines, "\n")
}

// stormPolicy is sluiced's policy for a mode (the [agent] and [git] tables
// come from agentProc.start) with its cgroups under root and, when the
// policy has a [pack_cache], the cache in packDir; source says where it
// came from.
func stormPolicy(t *testing.T, mode string, best int, root, packDir string) (policy, source string, limit int) {
	t.Helper()
	switch {
	case mode == "defaults" || mode == "serving-only" || mode == "none":
		return defaultLimits(t, root), "policy/default.toml as shipped", 0
	case mode == stormBestStatic:
		if best <= 0 {
			t.Fatalf("mode %s needs the sweep first: SLUICE_GITEA_STORM_SWEEP=1,2,4 or %sN modes before it", mode, stormSweepPrefix)
		}
		policy, source, limit = staticPolicy(best), fmt.Sprintf("the sweep's winner: pack-objects key \"global\" max_per_key = %d", best), best
	case strings.HasPrefix(mode, stormSweepPrefix):
		n, err := strconv.Atoi(strings.TrimPrefix(mode, stormSweepPrefix))
		if err != nil || n < 1 {
			t.Fatalf("mode %q: want %sN with N ≥ 1", mode, stormSweepPrefix)
		}
		policy, source, limit = staticPolicy(n), fmt.Sprintf("sweep: pack-objects key \"global\" max_per_key = %d", n), n
	default:
		path := filepath.Join("../bench/storm/policies", mode+".toml")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("mode %q: %v (modes: defaults, serving-only, none, %sN, %s, or a policy file of bench/storm/policies)", mode, err, stormSweepPrefix, stormBestStatic)
		}
		policy, source = string(b), "bench/storm/policies/"+mode+".toml"
	}
	policy = tomlSet(policy, "cgroups", "hierarchy_root", strconv.Quote(root))
	if strings.Contains(policy, "\n[pack_cache]") || strings.HasPrefix(policy, "[pack_cache]") {
		policy = tomlSet(policy, "pack_cache", "dir", strconv.Quote(packDir))
	}
	return policy, source, limit
}

// pickBestStatic is storm v2's rule for best-static: the highest goodput
// among the sweep's limits that kept 0 OOM kills, 0 failed pushes and
// Gitea up (equal goodput: the lower peak memory); when none did, the
// highest goodput.
func pickBestStatic(results []*stormResult) (int, string) {
	var best *stormResult
	qualified := false
	for _, r := range results {
		if r.limit == 0 || r.mode == stormBestStatic {
			continue
		}
		ok := r.oom == 0 && r.pushesFailed == 0 && r.giteaAlive
		better := best == nil || (ok && !qualified) ||
			(ok == qualified && (r.goodput() > best.goodput() || r.goodput() == best.goodput() && r.peakMiB < best.peakMiB))
		if better {
			best, qualified = r, ok
		}
	}
	if best == nil {
		return 0, ""
	}
	why := fmt.Sprintf("highest goodput (%.1f/min) among the sweep's limits with 0 OOM kills, 0 failed pushes and Gitea up", best.goodput())
	if !qualified {
		why = fmt.Sprintf("no limit of the sweep had 0 OOM kills, 0 failed pushes and Gitea up; highest goodput (%.1f/min)", best.goodput())
	}
	return best.limit, fmt.Sprintf("%s (%s)", best.mode, why)
}

func TestGiteaStorm(t *testing.T) {
	if os.Getenv("SLUICE_GITEA_STORM") == "" {
		t.Skip("a benchmark: set SLUICE_GITEA_STORM=1 (make bench-gitea-storm)")
	}
	scenarioName := envOr("SLUICE_GITEA_STORM_SCENARIO", "ci-burst")
	repoSrc := envOr("SLUICE_GITEA_STORM_REPO", "/var/tmp/sluice-storm/f12000-b4096-d20-c1500-x20-v2/big.git")
	fleetSrc := strings.Split(envOr("SLUICE_GITEA_STORM_FLEET",
		"/var/tmp/sluice-storm/f4000-b4096-d20-c600-x20-v2/medium.git,/var/tmp/sluice-storm/f1000-b2048-d10-c300-x10-v2/lib.git,/var/tmp/sluice-storm/f150-b1024-d10-c60-x4-v2/tool.git"), ",")
	var sc giteaScenario
	var repos []*stormRepo
	switch scenarioName {
	case "ci-burst":
		sc = giteaScenario{name: scenarioName, doc: "every client clones (`git clone --bare`) the one repository `big` in a loop (what CI does)",
			mix: []giteaShare{{opClone, 1}}, repos: []string{"big"}}
		repos = []*stormRepo{{name: "big", src: repoSrc}}
	case "fleet":
		sc = giteaScenario{name: scenarioName, mix: []giteaShare{{opClone, 2}, {opFetch, 3}, {opShallow, 1}, {opLsRemote, 1}}}
		for _, src := range fleetSrc {
			name := strings.TrimSuffix(filepath.Base(src), ".git")
			repos = append(repos, &stormRepo{name: name, src: src})
			sc.repos = append(sc.repos, name)
		}
		sc.doc = fmt.Sprintf("each client draws its next operation: full clone (`git clone --bare`) 2, incremental fetch 3 (`git fetch` of main into a repository holding the history up to main~(10 %% of its commits): haves), shallow clone (`--depth 1`) 1, `git ls-remote` 1; the repository uniformly among %s", strings.Join(sc.repos, ", "))
	default:
		t.Fatalf("SLUICE_GITEA_STORM_SCENARIO=%q: want ci-burst or fleet", scenarioName)
	}
	for _, r := range repos {
		if _, err := os.Stat(filepath.Join(r.src, "HEAD")); err != nil {
			t.Skipf("no storm repository at %s (SLUICE_GITEA_STORM_REPO, _FLEET): `make bench-storm` generates them", r.src)
		}
	}
	loadStart := loadavg()
	clients := envInt("SLUICE_GITEA_STORM_CLIENTS", 24)
	dur := time.Duration(envInt("SLUICE_GITEA_STORM_SECONDS", 45)) * time.Second
	drain := time.Duration(envInt("SLUICE_GITEA_STORM_DRAIN", 60)) * time.Second
	opTimeout := time.Duration(envInt("SLUICE_GITEA_STORM_CLONE_TIMEOUT", 240)) * time.Second
	idle := 10 * time.Second
	mem := int64(envInt("SLUICE_GITEA_STORM_MIB", 1536)) << 20
	patch := envOr("SLUICE_GITEA_STORM_PATCH", "gitea-client-address")
	if patch == "none" {
		patch = ""
	}
	modes := strings.Split(envOr("SLUICE_GITEA_STORM_MODES", "defaults,serving-only,none"), ",")
	var sweep []string
	if s := os.Getenv("SLUICE_GITEA_STORM_SWEEP"); s != "" {
		for _, n := range strings.Split(s, ",") {
			if m := stormSweepPrefix + strings.TrimSpace(n); !slices.Contains(modes, m) && !slices.Contains(sweep, m) {
				sweep = append(sweep, m)
			}
		}
		modes = append(sweep, modes...)
	}

	u := giteaUser(t, patch)
	box := newStormBox(t, mem)
	a := newAgentDir(t)
	a.agentExtra = fmt.Sprintf("socket_group = %q\n", u.Username)
	a.wrap = []string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(box.dir, "cgroup.procs")}
	giteaShares(t, a)
	// sluiced for the setup (Gitea runs git for every push into it); each
	// mode then starts its own on the same socket.
	setupRoot := fmt.Sprintf("sluice-gitea-storm-agent-%d-setup", os.Getpid())
	t.Cleanup(func() { removeAgentCgroups(setupRoot) })
	cur := *a
	cur.start(defaultLimits(t, setupRoot), "open")

	sw := filepath.Join(t.TempDir(), "gitbin")
	os.MkdirAll(sw, 0o755)
	traversable(t, sw)
	_, arms := giteaArms()
	switchLinks(t, sw, arms["shim"])
	wiring := fmt.Sprintf("[git]\nPATH = %s/git\n\n[git.config]\nuploadpack.packObjectsHook = %s/hook\n", sw, sw)
	g := newGitea(t, u, wiring, giteaOpts{patch: patch, env: []string{"SLUICE_SOCKET=" + a.socket, "SLUICE_SHIM_LOG=" + a.shimLog}, cgroup: box.dir})

	// The storm's repositories, and a small one for pushes and the probe.
	start := time.Now()
	tmpls := t.TempDir()
	for _, r := range repos {
		g.createRepo(r.name, r.src)
		r.mib = dirSizeMiB(r.src)
		if !slices.ContainsFunc(sc.mix, func(m giteaShare) bool { return m.kind == opFetch }) {
			continue
		}
		// The fetch template: the history up to main~k, k = 10 % of the
		// commits (as storm v2's templates), pushed into an empty repository.
		env := baseEnv("/")
		n, _ := strconv.Atoi(git(t, r.src, env, "rev-list", "--count", "main"))
		r.oldTip = git(t, r.src, env, "rev-parse", fmt.Sprintf("main~%d", max(1, n/10)))
		r.template = filepath.Join(tmpls, r.name+"-old.git")
		git(t, "/", env, "init", "-q", "--bare", r.template)
		git(t, r.src, env, "push", "-q", r.template, r.oldTip+":refs/heads/main")
	}
	t.Logf("pushed %d repositories into Gitea (and made fetch templates) in %v", len(repos), time.Since(start).Round(time.Second))
	small := makeRepo(t, t.TempDir(), "small", 4)
	g.createRepo("small", small)
	pushWork := filepath.Join(g.dir, "client", "push-work")
	git(t, "/", baseEnv("/"), "clone", "-q", small, pushWork)
	repoOf := map[string]*stormRepo{}
	for _, r := range repos {
		repoOf[r.name] = r
	}

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
	// op runs one client operation against url (the client's forwarder
	// to Gitea's HTTP) with dst as its scratch repository.
	op := func(ctx context.Context, kind string, repo *stormRepo, url, dst string) ([]byte, error) {
		var cmd *exec.Cmd
		switch kind {
		case opClone:
			cmd = exec.CommandContext(ctx, bins.realGit, "clone", "-q", "--bare", url, dst)
		case opShallow:
			cmd = exec.CommandContext(ctx, bins.realGit, "clone", "-q", "--bare", "--depth", "1", url, dst)
		case opLsRemote:
			cmd = exec.CommandContext(ctx, bins.realGit, "ls-remote", url)
		case opFetch:
			// A client holding the older history: an empty repository
			// borrowing the template's objects, main at the old tip.
			if out, err := gitTry("/", g.clientEnv(), "init", "-q", "--bare", dst); err != nil {
				return []byte(out), err
			}
			if err := os.WriteFile(filepath.Join(dst, "objects", "info", "alternates"), []byte(filepath.Join(repo.template, "objects")+"\n"), 0o644); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(dst, "refs", "heads", "main"), []byte(repo.oldTip+"\n"), 0o644); err != nil {
				return nil, err
			}
			cmd = exec.CommandContext(ctx, bins.realGit, "fetch", "-q", url, "+refs/heads/main:refs/heads/main")
			cmd.Dir = dst
		}
		cmd.Env = g.clientEnv()
		return cmd.CombinedOutput()
	}

	var results []*stormResult
	best, bestWhy := 0, ""
	for idx, mode := range modes {
		if mode == stormBestStatic && best == 0 {
			best, bestWhy = pickBestStatic(results)
		}
		root := fmt.Sprintf("sluice-gitea-storm-agent-%d-%d", os.Getpid(), idx)
		t.Cleanup(func() { removeAgentCgroups(root) })
		policy, source, limit := stormPolicy(t, mode, best, root, filepath.Join(a.dir, "packs-"+mode))
		arm := arms["shim"]
		if mode == "serving-only" || mode == "none" {
			arm = arms[mode]
		}
		// A fresh sluiced per mode on the same socket: the mode's policy,
		// counters from zero, an empty pack cache.
		cur.stop()
		ag := *a
		ag.start(policy, "open")
		cur = ag
		switchLinks(t, sw, arm)
		time.Sleep(2 * time.Second)
		r := &stormResult{mode: mode, source: source, limit: limit, kinds: map[string]*kindCount{}, perClient: make([]float64, clients)}
		for _, k := range opKinds {
			r.kinds[k] = &kindCount{}
		}
		results = append(results, r)
		os.WriteFile(filepath.Join(box.dir, "memory.max_usage_in_bytes"), []byte("0"), 0o644)
		oom0 := box.oomKills()
		m0 := ag.scrape()

		for end := time.Now().Add(idle); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			if d, err := probe(); err == nil {
				r.idle = append(r.idle, d)
			}
		}

		ctx, cancel := context.WithCancel(context.Background())
		stormStart := time.Now()
		stormEnd := stormStart.Add(dur)
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 0; i < clients; i++ {
			port := forwarder(t, ctx, net.IPv4(127, 0, 0, byte(10+i)), fmt.Sprintf("127.0.0.1:%d", g.http))
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				// The same sequence of operations for a client in every mode.
				rng := rand.New(rand.NewPCG(uint64(i), 22))
				for n := 0; time.Now().Before(stormEnd); n++ {
					kind, name := sc.pick(rng)
					url := fmt.Sprintf("http://127.0.0.1:%d/%s/%s.git", port, g.admin, name)
					dst := filepath.Join(g.dir, "client", fmt.Sprintf("storm-%s-%d-%d", mode, i, n))
					cctx, ccancel := context.WithTimeout(ctx, opTimeout)
					t0 := time.Now()
					out, err := op(cctx, kind, repoOf[name], url, dst)
					took := time.Since(t0)
					timedOut := cctx.Err() != nil
					ccancel()
					os.RemoveAll(dst)
					good := kind != opLsRemote
					mu.Lock()
					k := r.kinds[kind]
					switch {
					case err == nil:
						k.ok++
						if good {
							r.goodOK++
							r.perClient[i]++
							r.opTimes = append(r.opTimes, took)
						}
					case ctx.Err() != nil:
						k.unfinished++
					case timedOut:
						k.timeouts++
					default:
						k.failed++
						if good {
							r.failed++
							if strings.Contains(string(out), "sluice:") {
								r.failedSluice++
							}
						}
					}
					mu.Unlock()
					if ctx.Err() != nil {
						return
					}
					if err != nil {
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
		r.elapsed = time.Since(stormStart)
		cancel()
		<-waited
		<-probeDone

		r.oom = box.oomKills() - oom0
		r.peakMiB = box.read("memory.max_usage_in_bytes") >> 20
		r.giteaAlive = g.cmd.ProcessState == nil && syscall.Kill(g.cmd.Process.Pid, 0) == nil
		m1 := ag.scrape()
		delta := func(prefix string, has ...string) float64 {
			return sumMatching(m1, prefix, has...) - sumMatching(m0, prefix, has...)
		}
		r.rejected = delta("sluice_requests_dropped_total")
		r.admitted = delta("sluice_commands_total{")
		r.packCPU = delta("sluice_command_cpu_seconds_total{", `subcmd="pack-objects"`)
		r.cacheHits = delta("sluice_pack_cache_hits_total")
		r.cacheJoins = delta("sluice_pack_cache_joins_total")
		r.cacheMiss = delta("sluice_pack_cache_misses_total")
		addrs := map[string]bool{}
		for _, l := range ag.LogLines("command finished") {
			if ip, _ := l["remote_ip"].(string); ip != "" {
				addrs[ip] = true
			}
		}
		r.addrs = len(addrs)
		r.load = loadavg()
		t.Logf("%s: goodput %.1f/min (%d ok, %d failed), pushes %d/%d, OOM kills %d, peak %d MiB, pack-objects CPU %.0f s, load %s",
			mode, r.goodput(), r.goodOK, r.failed, r.pushesOK, r.pushesFailed, r.oom, r.peakMiB, r.packCPU, r.load)
		if !r.giteaAlive {
			t.Logf("%s: Gitea is gone; later modes cannot run", mode)
			break
		}
		// Let the host settle before the next mode.
		time.Sleep(5 * time.Second)
	}
	if best == 0 {
		best, bestWhy = pickBestStatic(results)
	}
	var bestGoodput float64
	for _, r := range results {
		if r.mode == stormBestStatic {
			bestGoodput = r.goodput()
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# Storm over Gitea %s HTTP: %s — %s\n\n", giteaVersion, sc.name, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SLUICE_GITEA_STORM") {
			env = append(env, kv)
		}
	}
	slices.Sort(env)
	fmt.Fprintf(&b, "`%s go test ./test -count=1 -run '^TestGiteaStorm$' -v` (`make bench-gitea-storm` with these variables) as root on %d CPUs shared with other work: load 1/5/15 min %s at the start, after each mode in the table.\n\n", strings.Join(env, " "), runtime.NumCPU(), loadStart)
	fmt.Fprintf(&b, "- **Scenario %s**: %s. %d clients, each from its own address 127.0.0.10+i (an in-process TCP forwarder), loop for %v (1 s pause after a failure, per-operation timeout %v); operations still running %v after the window are cut off (unfinished, not failures).\n", sc.name, sc.doc, clients, dur, opTimeout, drain)
	b.WriteString("- **Repositories** pushed into Gitea:")
	for _, r := range repos {
		fmt.Fprintf(&b, " `%s` = %s (%d MiB on disk)", r.name, r.src, r.mib)
	}
	b.WriteString("; `small` (4 commits) takes the pushes and the probe.\n")
	if patch != "" {
		fmt.Fprintf(&b, "- **Gitea** %s built with test/%s.patch: git gets the client's address (REMOTE_ADDR), so the `remote_ip` keys and the budget's fair share see %d addresses.\n", giteaVersion, patch, clients)
	} else {
		fmt.Fprintf(&b, "- **Gitea** %s unpatched: git gets no client address; every `remote_ip` key is `unknown`.\n", giteaVersion)
	}
	fmt.Fprintf(&b, "- **The small host**: a cgroup v1 memory cgroup of %d MiB holding Gitea (web, built-in SSH, every git it runs) and sluiced with its bucket cgroups. The clients run outside it, on the same CPUs.\n", mem>>20)
	fmt.Fprintf(&b, "- **Pushes**: one client pushes a commit to `small` over HTTP every 2 s. **Probe**: GET `/api/v1/repos/{o}/small/contents` (Gitea runs git for it) every 500 ms, 10 s timeout: %v idle before the storm (the mode's own idle p99), then through the storm and the drain.\n", idle)
	b.WriteString("- **Modes** (each with a fresh sluiced on the same socket: counters from zero, an empty pack cache in a fresh directory): **defaults** = the guide's wiring (git, dashed names and pack-objects hook → sluice-shim) and `policy/default.toml` as shipped; **serving-only** = the guide's cheaper wiring (git → real git, dashed names and hook → sluice-shim), same policy; **none** = the real git, hook → `/usr/bin/env` (no sluice); **static-gN** = storm v2's sweep policy: one host-wide pack-objects limit N (key \"global\", queue 1000 / 5m), no other rule, budget off; **best-static** = the sweep's winner run again; **old-defaults**, **pack-cache** = bench/storm/policies/*.toml (the rules shipped until session 2, budget off; the shipped defaults plus `[pack_cache]`). Every mode but serving-only and none uses the guide's full wiring. Modes run in the order listed, one Gitea for all.\n")
	fmt.Fprintf(&b, "- **Goodput** = completed %s per minute from the storm's start until its last client stopped (window plus drain). **Jain** = Jain's index of completed goodput operations across the %d client addresses (1 = equal). **Peak** = the cgroup's `memory.max_usage_in_bytes` (page cache included). **pack-objects CPU** = sluiced's `sluice_command_cpu_seconds_total{subcmd=\"pack-objects\"}` over the mode (commands that finished; none without sluice, and serving-only admits only pack-objects over HTTP). **Addrs** = distinct client addresses in sluiced's log of finished commands (any subcommand).\n",
		goodKindsDoc(sc), clients)
	if bestWhy != "" {
		fmt.Fprintf(&b, "- **best-static** = %s.\n", bestWhy)
	}
	b.WriteString("\n| mode | goodput /min | × best-static | ok | failed (sluice in output) | timed out / unfinished | op p50 / p95 s | OOM kills | peak MiB (% of cap) | pushes ok / failed | probe p50 / p95 / p99 ms | × idle p99 (idle p99 ms) | probes failed | Jain | pack-objects CPU s (per op) | sluice rejected / commands | addrs | Gitea up | load after |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		_, _, i99, _ := stats(r.idle)
		s50, s95, s99, _ := stats(r.storm)
		o50, o95, _, _ := stats(r.opTimes)
		ratio, xbest := "–", "–"
		if i99 > 0 {
			ratio = fmt.Sprintf("×%.1f (%.0f)", s99.Seconds()/i99.Seconds(), ms(i99))
		}
		if bestGoodput > 0 {
			xbest = fmt.Sprintf("%.2f", r.goodput()/bestGoodput)
		}
		var to, un int64
		var okKinds []string
		for _, k := range opKinds {
			c := r.kinds[k]
			to += c.timeouts
			un += c.unfinished
			if slices.ContainsFunc(sc.mix, func(m giteaShare) bool { return m.kind == k }) && len(sc.mix) > 1 {
				okKinds = append(okKinds, fmt.Sprintf("%d %s", c.ok, k))
			}
		}
		okCol := strconv.FormatInt(r.goodOK, 10)
		if len(okKinds) > 0 {
			okCol = strings.Join(okKinds, ", ")
		}
		cpu := "–"
		if r.mode != "none" {
			cpu = fmt.Sprintf("%.1f", r.packCPU)
			if r.goodOK > 0 {
				cpu += fmt.Sprintf(" (%.2f)", r.packCPU/float64(r.goodOK))
			}
			if r.cacheHits+r.cacheJoins+r.cacheMiss > 0 {
				cpu += fmt.Sprintf("; cache hits %.0f, joins %.0f, misses %.0f", r.cacheHits, r.cacheJoins, r.cacheMiss)
			}
		}
		jain := "–"
		if j := istats.Jain(r.perClient); !math.IsNaN(j) {
			jain = fmt.Sprintf("%.2f", j)
		}
		addrs := "–"
		if r.mode != "none" {
			addrs = strconv.Itoa(r.addrs)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %s | %s | %d (%d) | %d / %d | %.1f / %.1f | %d | %d (%.0f %%) | %d / %d | %.0f / %.0f / %.0f | %s | %d | %s | %s | %.0f / %.0f | %s | %v | %s |\n",
			r.mode, r.goodput(), xbest, okCol, r.failed, r.failedSluice, to, un, o50.Seconds(), o95.Seconds(),
			r.oom, r.peakMiB, float64(r.peakMiB<<20)/float64(mem)*100, r.pushesOK, r.pushesFailed,
			ms(s50), ms(s95), ms(s99), ratio, r.probeFailed, jain, cpu, r.rejected, r.admitted, addrs, r.giteaAlive, r.load)
	}
	for _, r := range results {
		fmt.Fprintf(&b, "\n- %s: %s", r.mode, r.source)
	}
	b.WriteString("\n")
	out := os.Getenv("SLUICE_GITEA_BENCH_OUT")
	if out == "" {
		out = "../bench/gitea/storm-" + sc.name + ".md"
	}
	os.MkdirAll(filepath.Dir(out), 0o755)
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s:\n%s", out, b.String())
}

// goodKindsDoc names the operations a scenario's goodput counts.
func goodKindsDoc(sc giteaScenario) string {
	var k []string
	for _, m := range sc.mix {
		if m.kind != opLsRemote {
			k = append(k, map[string]string{opClone: "clones", opFetch: "fetches", opShallow: "shallow clones"}[m.kind])
		}
	}
	return strings.Join(k, ", ")
}

// dirSizeMiB is the size of the files under dir in MiB.
func dirSizeMiB(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n >> 20
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

// sumMatching sums every series whose name starts with prefix and that
// contains each of has (label pairs such as `subcmd="pack-objects"`).
func sumMatching(m map[string]float64, prefix string, has ...string) float64 {
	var s float64
	for k, v := range m {
		if strings.HasPrefix(k, prefix) && !slices.ContainsFunc(has, func(h string) bool { return !strings.Contains(k, h) }) {
			s += v
		}
	}
	return s
}

// TestGiteaStormPolicies checks the storm's mode policies without a storm:
// each is a valid policy for `sluice validate`, its cgroups are under the
// run's root, and pack-cache's cache is in the run's directory.
func TestGiteaStormPolicies(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []string{"defaults", "static-g2", stormBestStatic, "old-defaults", "pack-cache"} {
		policy, source, limit := stormPolicy(t, mode, 3, "storm-root", filepath.Join(dir, "packs"))
		file := filepath.Join(dir, mode+".toml")
		if err := os.WriteFile(file, []byte(policy), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bins.cli, "validate", file).CombinedOutput(); err != nil {
			t.Errorf("%s (%s): sluice validate: %v\n%s\n%s", mode, source, err, out, policy)
		}
		if !strings.Contains(policy, "\nhierarchy_root = \"storm-root\"\n") || strings.Count(policy, "hierarchy_root =") != 1 {
			t.Errorf("%s: hierarchy_root not set once:\n%s", mode, policy)
		}
		if want := mode == "pack-cache"; strings.Contains(policy, filepath.Join(dir, "packs")) != want {
			t.Errorf("%s: pack cache dir set = %v, want %v:\n%s", mode, !want, want, policy)
		}
		if want := map[string]int{"static-g2": 2, stormBestStatic: 3}[mode]; limit != want {
			t.Errorf("%s: limit %d, want %d", mode, limit, want)
		}
	}
	if got := tomlSet("[a]\nx = 1 # one\n[b]\nx = 2\n", "b", "x", "3"); got != "[a]\nx = 1 # one\n[b]\nx = 3\n" {
		t.Errorf("tomlSet replaced the wrong key: %q", got)
	}
}
