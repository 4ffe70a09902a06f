package main

import (
	"bytes"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policy"
)

func TestWriteHistoryIsDeterministicAndImports(t *testing.T) {
	p := repoParams{Files: 30, Bytes: 256, Fanout: 4, Commits: 7, Changes: 3}
	var a, b bytes.Buffer
	if err := writeHistory(&a, p); err != nil {
		t.Fatal(err)
	}
	if err := writeHistory(&b, p); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two streams for the same parameters differ: the cache key would lie")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	env := []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null"}
	repo, err := ensureRepo(dir, "big", p, env, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	out, err := gitCmd(env, repo, "rev-list", "--count", "HEAD").Output()
	if err != nil || strings.TrimSpace(string(out)) != "8" {
		t.Fatalf("rev-list --count HEAD = %q, %v; want 8 commits", out, err)
	}
	out, err = gitCmd(env, repo, "ls-tree", "-r", "--name-only", "HEAD").Output()
	if n := len(strings.Fields(string(out))); err != nil || n != p.Files {
		t.Fatalf("HEAD has %d files (%v), want %d", n, err, p.Files)
	}
	// A second call reuses the cache.
	again, err := ensureRepo(dir, "big", p, env, func(string, ...any) { t.Error("regenerated a cached repository") })
	if err != nil || again != repo {
		t.Fatalf("ensureRepo again = %q, %v", again, err)
	}
}

func TestScrapeSumsByLimitLabel(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`# HELP sluice_concurrency_limiting_current_limit x
# TYPE sluice_concurrency_limiting_current_limit gauge
sluice_concurrency_limiting_current_limit{limit="pack-objects"} 4
sluice_concurrency_limiting_current_limit{limit="upload-pack"} 12
sluice_concurrency_limiting_queued{limit="upload-pack"} 30
sluice_commands_total{cmd="git",outcome="rejected",subcmd="upload-pack"} 5
sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"} 7
sluice_commands_total{cmd="git",outcome="rejected",subcmd="pack-objects"} 2
`))
	}))
	defer srv.Close()
	m, err := scrape(srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := m["sluice_concurrency_limiting_current_limit"]; got["pack-objects"] != 4 || got["upload-pack"] != 12 {
		t.Errorf("current limits = %v", got)
	}
	if got := m["sluice_concurrency_limiting_queued"]["upload-pack"]; got != 30 {
		t.Errorf("queued = %v", got)
	}
	if got := counter(srv.Client(), srv.URL, "sluice_commands_total", `outcome="rejected"`); got != 7 {
		t.Errorf("rejected = %v, want 7", got)
	}
	if got := counter(srv.Client(), srv.URL, "sluice_commands_total", `subcmd="upload-pack"`); got != 12 {
		t.Errorf("upload-pack = %v, want 12", got)
	}
}

func TestNearestRankPercentiles(t *testing.T) {
	s := summarize([]float64{4, 1, 3, 2})
	// nearest rank: p50 of 4 values is rank ceil(2) = 2 → 2; p95 and p99
	// are rank 4 → 4.
	if s.N != 4 || s.P50 != 2 || s.P95 != 4 || s.P99 != 4 || s.Mean != 2.5 {
		t.Errorf("summarize = %+v", s)
	}
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(i + 1)
	}
	if s := summarize(v); s.P50 != 50 || s.P95 != 95 || s.P99 != 99 {
		t.Errorf("1..100: %+v, want p50 50, p95 95, p99 99", s)
	}
	if s := summarize([]float64{7}); s.P50 != 7 || s.P99 != 7 {
		t.Errorf("one value: %+v", s)
	}
}

func TestFairness(t *testing.T) {
	if j := jain([]float64{3, 3, 3, 3}); j != 1 {
		t.Errorf("equal shares: Jain %v, want 1", j)
	}
	if j := jain([]float64{8, 0, 0, 0}); j != 0.25 {
		t.Errorf("one address has everything: Jain %v, want 1/n = 0.25", j)
	}
	if !math.IsNaN(jain([]float64{0, 0})) || !math.IsNaN(worstShare([]float64{0, 0})) {
		t.Error("nothing completed must be NaN (no fairness to speak of), not 0 or 1")
	}
	if w := worstShare([]float64{1, 3}); w != 0.5 {
		t.Errorf("worst share of 1,3 = %v, want 1/mean(2) = 0.5", w)
	}
}

func TestTiesNeedRepeats(t *testing.T) {
	a, b := spreadOf([]float64{10, 14}), spreadOf([]float64{13, 20})
	if !tie(a, b) {
		t.Error("overlapping ranges are a tie")
	}
	if tie(a, spreadOf([]float64{15, 20})) {
		t.Error("disjoint ranges are not a tie")
	}
	if tie(spreadOf([]float64{10}), spreadOf([]float64{10})) {
		t.Error("single runs carry no noise estimate: never a tie")
	}
}

func TestCauseGroupsSluiceMessages(t *testing.T) {
	a := causeOf(op{Outcome: rejected, Stderr: "remote: sluice: pack-objects waited 30s for a slot for your address (4 running, limit \"pack-objects\"); try again later\nfatal: early EOF"})
	b := causeOf(op{Outcome: rejected, Stderr: "remote: sluice: pack-objects waited 30s for a slot for your address (5 running, limit \"pack-objects\"); try again later"})
	if a != b || !strings.HasPrefix(a, "sluice rejection: sluice: pack-objects waited Ns") {
		t.Errorf("causes %q and %q should group as one sluice rejection", a, b)
	}
	// Each request has its own correlation id: it does not split a group.
	c1 := causeOf(op{Outcome: rejected, Stderr: "remote: sluice: upload-pack waited 60s for a slot for this repository (64 running, limit \"upload-pack\"); try again in 60s (correlation id 3fa9c01e77)"})
	c2 := causeOf(op{Outcome: rejected, Stderr: "remote: sluice: upload-pack waited 60s for a slot for this repository (64 running, limit \"upload-pack\"); try again in 60s (correlation id be04d2)"})
	if c1 != c2 || !strings.HasSuffix(c1, "(correlation id …)") {
		t.Errorf("causes %q and %q should group as one (correlation id dropped)", c1, c2)
	}
	if c := causeOf(op{Outcome: hungUp}); c != "hung up" {
		t.Errorf("hung up: %q", c)
	}
}

func TestSummaryCountsGoodputFairnessAndPushes(t *testing.T) {
	sc, err := findScenario("mixed")
	if err != nil {
		t.Fatal(err)
	}
	r := &runResult{Addresses: 2, Window: 30}
	a0, a1, p := clientAddr(0), clientAddr(1), clientAddr(2)
	r.Ops = []op{
		{Addr: a0, Kind: kClone, Repo: "big", Outcome: ok, Seconds: 2, Bytes: 1 << 20},
		{Addr: a0, Kind: kFetch, Repo: "lib", Outcome: ok, Seconds: 1},
		{Addr: a1, Kind: kShallow, Repo: "big", Outcome: hungUp},
		{Addr: a1, Kind: kClone, Repo: "big", Outcome: cutOff},
		{Addr: a1, Kind: kLsRemote, Repo: "poll-01", Outcome: ok},
		{Addr: p, Kind: kPush, Repo: "push", Outcome: ok},
		{Addr: p, Kind: kPush, Repo: "push", Outcome: rejected, Stderr: "sluice: too many"},
		{Addr: p, Kind: kPush, Repo: "push", Outcome: cutOff},
	}
	r.summarize(sc)
	s := r.S
	if s.GoodOps != 2 || s.Goodput != 4 || s.Failed != 1 || s.Outcomes.CutOff != 1 {
		t.Errorf("goodput: %d ok, %.1f/min, %d failed, %d unfinished; want 2 ok (ls-remote is not goodput in mixed), 4/min, 1 failed, 1 unfinished",
			s.GoodOps, s.Goodput, s.Failed, s.Outcomes.CutOff)
	}
	if s.PushOK != 1 || s.PushFailed != 1 {
		t.Errorf("pushes %d ok / %d failed, want 1 / 1 (a cut-off push is not a failure)", s.PushOK, s.PushFailed)
	}
	if s.Jain != 0.5 || s.WorstShare != 0 || s.AddrsServed != 1 {
		t.Errorf("fairness over the 2 client addresses (pushers excluded): Jain %v, worst %v, served %d; want 0.5, 0, 1", s.Jain, s.WorstShare, s.AddrsServed)
	}
	if s.Causes["shallow: hung up"] != 1 || s.Causes["push: sluice rejection: sluice: too many"] != 1 {
		t.Errorf("causes %v", s.Causes)
	}
	poll, _ := findScenario("poll")
	if k := poll.goodputKinds(); len(k) != 1 || k[0] != kLsRemote {
		t.Errorf("poll's goodput counts %v, want ls-remote", k)
	}
}

// The smoke run's main check: the agent must have seen every client
// address that completed a clone. This is what fails when every client
// shows up as 127.0.0.1 (broken GIT_PROXY_COMMAND, BindAddress or
// forwarder) or when nothing went through the shim.
func TestIdentityCheckFailsOnOneAddress(t *testing.T) {
	run := &runResult{Addresses: 3, Policy: "x"}
	for i := range 3 {
		run.Ops = append(run.Ops, op{Addr: clientAddr(i), Kind: kClone, Outcome: ok})
	}
	run.Agent = &agentSaw{Finished: map[string]int{"pack-objects": 3}, RemoteIPs: map[string]int{"127.0.0.1": 3}}
	err := identityCheck(run)
	if err == nil || !strings.Contains(err.Error(), "client identity is broken") {
		t.Errorf("all clients seen from 127.0.0.1: %v", err)
	}
	run.Agent = &agentSaw{Finished: map[string]int{}, RemoteIPs: map[string]int{}}
	if err := identityCheck(run); err == nil || !strings.Contains(err.Error(), "admitted no command") {
		t.Errorf("no admission: %v", err)
	}
	run.Agent = &agentSaw{Finished: map[string]int{"pack-objects": 3}, RemoteIPs: map[string]int{clientAddr(0): 1, clientAddr(1): 1, clientAddr(2): 1}}
	if err := identityCheck(run); err != nil {
		t.Errorf("every address seen: %v", err)
	}
}

func TestParseAgentLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sluiced.log")
	log := `{"level":"info","msg":"agent listening"}
{"level":"info","msg":"command finished","subcmd":"pack-objects","remote_ip":"127.0.0.2","signal":0}
{"level":"info","msg":"command finished","subcmd":"upload-pack","remote_ip":"127.0.0.3","signal":9}
{"level":"warn","msg":"rejected","subcmd":"pack-objects","remote_ip":"127.0.0.3","limit":"pack-objects","reason":"max_time"}
not json
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	s := parseAgentLog(path)
	if s.Finished["pack-objects"] != 1 || s.RemoteIPs["127.0.0.3"] != 1 || s.Signaled["9"] != 1 ||
		s.Rejected["pack-objects: max_time"] != 1 || s.Other != 1 {
		t.Errorf("parsed %+v", s)
	}
}

func TestClientAddrsDistinct(t *testing.T) {
	seen := map[string]bool{}
	for i := range 600 {
		a := clientAddr(i)
		ip := net.ParseIP(a)
		if ip == nil || !ip.IsLoopback() || a == "127.0.0.1" || seen[a] {
			t.Fatalf("clientAddr(%d) = %q: not a fresh loopback address other than the probe's", i, a)
		}
		seen[a] = true
	}
}

func TestModesResolveAndCompose(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "host-budget.toml"), []byte("[[limit]]\nname = \"x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := resolveMode("host-budget", "bin", dir, 0)
	if err != nil || !strings.Contains(m.Policy, `name = "x"`) {
		t.Fatalf("a policy file names a mode: %+v, %v", m, err)
	}
	if _, err := resolveMode("nosuch", "bin", dir, 0); err == nil {
		t.Error("an unknown mode without a policy file was accepted")
	}
	if _, err := resolveMode("best-static", "bin", dir, 0); err == nil {
		t.Error("best-static without a sweep was accepted")
	}
	m, err = resolveMode("static-g8", "bin", dir, 0)
	if err != nil || m.Limit != 8 || !strings.Contains(m.Policy, `key = "global"`) || !strings.Contains(m.Policy, "max_per_key = 8") {
		t.Fatalf("static-g8: %+v, %v", m, err)
	}
	for _, name := range []string{"tuned", "adaptive", "old-defaults"} {
		if _, err := resolveMode(name, "bin", "policies", 0); err != nil {
			t.Errorf("committed policy %s: %v", name, err)
		}
	}
	// The shipped defaults keep every line but the operational ones.
	def := string(policy.DefaultTOML())
	cfg, err := agentConfig(def, "/run/x.sock", "127.0.0.1:1234", "storm-root", "/tmp/storm/pack-cache")
	if err != nil {
		t.Fatal(err)
	}
	c, err := policy.Parse("defaults", []byte(cfg))
	if err != nil {
		t.Fatalf("composed defaults do not parse: %v\n%s", err, cfg)
	}
	d := policy.Default()
	if c.Agent.Socket != "/run/x.sock" || c.Agent.MetricsAddr != "127.0.0.1:1234" || c.Cgroups.HierarchyRoot != "storm-root" || c.Git.Bin != realGit ||
		c.PackCache.Dir != "/tmp/storm/pack-cache" {
		t.Errorf("operational keys not set: %+v %+v %+v %+v", c.Agent, c.Cgroups, c.Git, c.PackCache)
	}
	if c.PackCache.Enabled != d.PackCache.Enabled {
		t.Error("composing the defaults changed [pack_cache] enabled")
	}
	if len(c.Limits) != len(d.Limits) || c.Limits[1].MaxPerKey != d.Limits[1].MaxPerKey || !reflect.DeepEqual(c.EBPF, d.EBPF) || c.Cgroups.Enabled != d.Cgroups.Enabled {
		t.Error("composing the defaults changed their policy")
	}
	if strings.Count(cfg, "\n")-strings.Count(def, "\n") != 0 {
		t.Errorf("the defaults gained or lost lines (%d → %d): keys must be replaced in place", strings.Count(def, "\n"), strings.Count(cfg, "\n"))
	}
	// A policy file without those tables gets them appended.
	for _, name := range []string{"tuned", "adaptive", "old-defaults"} {
		m, _ := resolveMode(name, "bin", "policies", 0)
		cfg, err := agentConfig(m.Policy, "/run/x.sock", "127.0.0.1:1", "r", "/tmp/storm/pack-cache")
		if err != nil {
			t.Fatal(err)
		}
		c, err := policy.Parse(name, []byte(cfg))
		if err != nil {
			t.Errorf("%s composed: %v", name, err)
		} else if c.PackCache.Dir != policy.DefaultPackCacheDir || strings.Contains(cfg, "pack_cache") {
			// No [pack_cache] table: nothing to set (the cache is off).
			t.Errorf("%s: [pack_cache] added to a policy without one: dir %q", name, c.PackCache.Dir)
		}
	}
	cfg, _ = agentConfig(sweepPolicy(4), "/s", "127.0.0.1:1", "r", "")
	if c, err := policy.Parse("sweep", []byte(cfg)); err != nil || len(c.Limits) != 1 || c.Limits[0].Key != "global" || c.Limits[0].MaxPerKey != 4 {
		t.Errorf("sweep policy: %+v, %v", c, err)
	}
}

func TestScenariosPickFromTheirMix(t *testing.T) {
	for _, sc := range scenarios {
		rng := rand.New(rand.NewPCG(1, 2))
		kinds := map[opKind]int{}
		for range 2000 {
			k, repo := sc.pick(rng)
			kinds[k]++
			if repo == "" {
				t.Fatalf("%s: empty repository", sc.Name)
			}
		}
		for _, w := range sc.Mix {
			if kinds[w.Kind] == 0 {
				t.Errorf("%s never picked %s", sc.Name, w.Kind)
			}
		}
	}
	if _, err := findScenario("storm"); err == nil {
		t.Error("unknown scenario accepted")
	}
}

func TestPickBestSkipsUnsafeLimits(t *testing.T) {
	mk := func(g int, gp float64, oom int64, pushFail int) *runResult {
		return &runResult{Limit: g, OOMKills: oom, S: summary{Goodput: gp, PushFailed: pushFail}}
	}
	g, why := pickBest([]*runResult{mk(1, 10, 0, 0), mk(4, 30, 0, 0), mk(8, 40, 1, 0), mk(16, 50, 0, 2)})
	if g != 4 || !strings.Contains(why, "0 OOM kills") {
		t.Errorf("best = %d (%s), want 4: 8 OOM-killed and 16 lost pushes", g, why)
	}
	g, why = pickBest([]*runResult{mk(1, 10, 1, 0), mk(2, 20, 3, 0)})
	if g != 2 || !strings.Contains(why, "no limit") {
		t.Errorf("all unsafe: best = %d (%s)", g, why)
	}
}

func TestSetKey(t *testing.T) {
	got, _ := setKey("[agent]\nsocket = \"\"\n[git]\n", "agent", "socket", `"/s"`)
	if got != "[agent]\nsocket = \"/s\"\n[git]\n" {
		t.Errorf("replace: %q", got)
	}
	got, _ = setKey("[cgroups]\nenabled = true\n", "cgroups", "hierarchy_root", `"r"`)
	if got != "[cgroups]\nhierarchy_root = \"r\"\nenabled = true\n" {
		t.Errorf("insert: %q", got)
	}
	got, _ = setKey("[[limit]]\nname = \"a\"\n", "git", "bin", `"/g"`)
	if !strings.HasSuffix(got, "\n\n[git]\nbin = \"/g\"\n") {
		t.Errorf("append: %q", got)
	}
}

// A report is rendered from its JSON alone: -rereport gives the same
// markdown, undefined fairness (nothing completed) included.
func TestReportRoundTrip(t *testing.T) {
	sc, _ := findScenario("ci-burst")
	mk := func(name string, g int, ops []op) *runResult {
		r := &runResult{Scenario: "ci-burst", Transport: "git", Mode: name, Limit: g, Addresses: 2, Window: 40, MemLimit: 1 << 30,
			Policy: "x", Ops: ops, PeakMem: 100 << 20, Agent: &agentSaw{RemoteIPs: map[string]int{clientAddr(0): 1}}}
		r.Samples = []sample{{T: 0, MemBytes: 1 << 20, Limit: map[string]float64{"pack-objects": float64(g)}}, {T: 1, MemBytes: 2 << 20}}
		r.summarize(sc)
		return r
	}
	okOp := op{Addr: clientAddr(0), Kind: kClone, Repo: "big", Outcome: ok, Seconds: 3}
	pr := &pairResult{Scenario: "ci-burst", Transport: "git", Sweep: []*runResult{mk("static-g2", 2, []op{okOp})}, Best: 2}
	none := mk("none", 0, nil)
	none.Policy, none.Agent = "", nil
	cache := mk("pack-cache", 0, []op{okOp, okOp, okOp, okOp})
	cache.ClientCPU, cache.ClientCPUs, cache.ServerCPU, cache.ServerCPUs, cache.Wall = 38, 1, 4, 1, 40
	cache.Counters = &agentCounters{CPU: map[string]float64{"pack-objects": 2, "upload-pack": 3},
		PackCache: &packCacheCounters{Hits: 2, Joins: 1, Misses: 1, Fills: 1, Bypasses: map[string]float64{"cold": 0}, ServedBytes: 3 << 20, WrittenBytes: 1 << 20}}
	def := mk("defaults", 0, []op{okOp})
	def.ServerCPU, def.ServerCPUs, def.Wall = 8, 1, 40
	def.Counters = &agentCounters{CPU: map[string]float64{"pack-objects": 8}}
	pr.Runs = []*runResult{none, def, mk("best-static", 2, []op{okOp, okOp}), cache}
	r := &report{Opts: optsRecord{Clients: 2, Addresses: 2, Mem: 1 << 30, Repeat: 1}, CPUs: 2, Pairs: []*pairResult{pr},
		Repos: map[string]int64{"big": 1 << 20}, RepoParams: map[string]repoParams{"big": {Files: 1}}}
	dir, dir2 := t.TempDir(), t.TempDir()
	if err := r.write(dir, true); err != nil {
		t.Fatal(err)
	}
	if err := rereport(filepath.Join(dir, "storm.json"), dir2); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "storm.md"))
	b, _ := os.ReadFile(filepath.Join(dir2, "storm.md"))
	if string(a) != string(b) || len(a) == 0 {
		t.Errorf("rereport differs:\n%s\n---\n%s", a, b)
	}
	if !strings.Contains(string(a), "**No**") || !strings.Contains(string(a), "best-static = 2") {
		t.Errorf("report lacks the verdict or the sweep's winner:\n%s", a)
	}
	for _, row := range []string{
		"| pack-cache | 4 | 95 | 10 | 1.00 | 2.0 (0.50) | 3.0 (0.75) | 0.75 | 2 / 1 / 1 / 1 | 0 | 3 / 1 |",
		"| none | 0 | — | — | — | — | — | — | — | — | — |",
		"**Client-bound**", "`pack-cache` (95 %)",
		"pack-objects CPU s per op ×0.06, server CPU s per op ×0.12, goodput ×4.00",
	} {
		if !strings.Contains(string(a), row) {
			t.Errorf("CPU and pack cache table lacks %q:\n%s", row, a)
		}
	}
	for _, png := range []string{"sweep-ci-burst-git.png", "run-ci-burst-git-defaults.png"} {
		if _, err := os.Stat(filepath.Join(dir2, png)); err != nil {
			t.Errorf("plot %s: %v", png, err)
		}
	}
}

// pack-cache is the shipped defaults (rules, budget, everything) plus the
// cache, in the directory the harness gives it.
func TestPackCacheModeIsDefaultsPlusCache(t *testing.T) {
	m, err := resolveMode("pack-cache", "bin", "policies", 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := agentConfig(m.Policy, "/run/x.sock", "127.0.0.1:1", "r", "/tmp/storm/run-01/pack-cache")
	if err != nil {
		t.Fatal(err)
	}
	c, err := policy.Parse("pack-cache", []byte(cfg))
	if err != nil {
		t.Fatalf("composed pack-cache does not parse: %v\n%s", err, cfg)
	}
	d := policy.Default()
	if !c.PackCache.Enabled || c.PackCache.Dir != "/tmp/storm/run-01/pack-cache" {
		t.Errorf("pack cache: %+v", c.PackCache)
	}
	if c.PackCache.MaxAge != d.PackCache.MaxAge || c.PackCache.MaxBytes != d.PackCache.MaxBytes || c.PackCache.MinOccurrences != d.PackCache.MinOccurrences {
		t.Errorf("pack cache bounds differ from the shipped ones: %+v vs %+v", c.PackCache, d.PackCache)
	}
	if !c.DefaultLimits || !reflect.DeepEqual(c.Limits, d.Limits) || !reflect.DeepEqual(c.Budget, d.Budget) {
		t.Errorf("pack-cache does not keep the default rules and budget: %+v / %+v", c.Limits, c.Budget)
	}
	if !hasTable("[pack_cache] # x\nenabled = true\n", "pack_cache") || hasTable("[pack_cache.x]\n", "pack_cache") {
		t.Error("hasTable")
	}
}

// metricsFixture is what sluiced's /metrics says, abridged: two runs of
// pack-objects and upload-pack, a receive-pack, and the pack cache.
const metricsFixture = `# HELP sluice_command_cpu_seconds_total CPU time used by finished git commands, by mode (user, system).
# TYPE sluice_command_cpu_seconds_total counter
sluice_command_cpu_seconds_total{cmd="git",mode="system",subcmd="pack-objects"} 1.5
sluice_command_cpu_seconds_total{cmd="git",mode="user",subcmd="pack-objects"} 10
sluice_command_cpu_seconds_total{cmd="git-upload-pack",mode="system",subcmd="upload-pack"} 0.5
sluice_command_cpu_seconds_total{cmd="git-upload-pack",mode="user",subcmd="upload-pack"} 12
sluice_command_cpu_seconds_total{cmd="git",mode="user",subcmd="receive-pack"} 0.25
sluice_commands_total{cmd="git",outcome="ok",subcmd="pack-objects"} 3
sluice_commands_total{cmd="git",outcome="signaled",subcmd="pack-objects"} 1
sluice_commands_total{cmd="git",outcome="rejected",subcmd="pack-objects"} 7
sluice_command_real_seconds_total{cmd="git",subcmd="pack-objects"} 99
# HELP sluice_pack_cache_hits_total x
# TYPE sluice_pack_cache_hits_total counter
sluice_pack_cache_hits_total 30
sluice_pack_cache_joins_total 14
sluice_pack_cache_misses_total 4
sluice_pack_cache_fills_total 3
sluice_pack_cache_fill_failures_total 1
sluice_pack_cache_served_bytes_total 4.831838208e+09
sluice_pack_cache_written_bytes_total 3.3554432e+08
sluice_pack_cache_evictions_total{reason="age"} 0
sluice_pack_cache_bypasses_total{reason="cold"} 0
sluice_pack_cache_bypasses_total{reason="disk"} 1
sluice_pack_cache_bypasses_total{reason="too_large"} 0
sluice_pack_cache_entries 2
`

func TestAgentCountersParseAndSubtract(t *testing.T) {
	end, err := parseAgentCounters(strings.NewReader(metricsFixture))
	if err != nil {
		t.Fatal(err)
	}
	if end.CPU["pack-objects"] != 11.5 || end.CPU["upload-pack"] != 12.5 || end.CPU["receive-pack"] != 0.25 {
		t.Errorf("CPU by subcmd (user + system, every cmd): %v", end.CPU)
	}
	if end.Finished["pack-objects"] != 4 {
		t.Errorf("finished pack-objects (rejections left out): %v", end.Finished)
	}
	pc := end.PackCache
	if pc == nil || pc.Hits != 30 || pc.Joins != 14 || pc.Misses != 4 || pc.Fills != 3 || pc.FillFailures != 1 ||
		pc.ServedBytes != 4.5*(1<<30) || pc.WrittenBytes != 320<<20 || pc.Bypasses["disk"] != 1 || pc.bypasses() != 1 {
		t.Fatalf("pack cache counters: %+v", pc)
	}
	if got := pc.hitRatio(); math.Abs(got-44.0/48) > 1e-12 {
		t.Errorf("hit ratio = %v, want (30+14)/(30+14+4)", got)
	}
	start, _ := parseAgentCounters(strings.NewReader(`sluice_command_cpu_seconds_total{cmd="git",mode="user",subcmd="upload-pack"} 0.5
sluice_pack_cache_hits_total 10
sluice_pack_cache_misses_total 2
`))
	d := end.since(start)
	if d.CPU["upload-pack"] != 12 || d.CPU["pack-objects"] != 11.5 {
		t.Errorf("CPU since the start: %v", d.CPU)
	}
	if d.PackCache.Hits != 20 || d.PackCache.Misses != 2 || d.PackCache.Joins != 14 || math.Abs(d.PackCache.hitRatio()-34.0/36) > 1e-12 {
		t.Errorf("pack cache since the start: %+v", d.PackCache)
	}
	// Without the cache the series are absent: no counters, ratio undefined.
	off, _ := parseAgentCounters(strings.NewReader(`sluice_command_cpu_seconds_total{cmd="git",mode="user",subcmd="pack-objects"} 2` + "\n"))
	if off.PackCache != nil || off.since(start).PackCache != nil || !math.IsNaN(off.PackCache.hitRatio()) {
		t.Errorf("no cache: %+v", off.PackCache)
	}
	if !math.IsNaN((&packCacheCounters{}).hitRatio()) {
		t.Error("a cache nothing reached has a hit ratio")
	}
	if r := (&packCacheCounters{Misses: 5}).hitRatio(); r != 0 {
		t.Errorf("all misses: %v", r)
	}
}

func TestCPUShares(t *testing.T) {
	for list, want := range map[string]int{"0": 1, "1": 1, "0-3": 4, "0,2-3": 3, "": 0, "x": 0, "3-1": 0} {
		if got := cpusetCount(list); got != want {
			t.Errorf("cpusetCount(%q) = %d, want %d", list, got, want)
		}
	}
	r := &runResult{Wall: 40, ClientCPU: 38, ClientCPUs: 1, ServerCPU: 20, ServerCPUs: 2}
	if r.clientBusy() != 95 || r.serverBusy() != 25 {
		t.Errorf("busy: client %v, server %v", r.clientBusy(), r.serverBusy())
	}
	if !math.IsNaN((&runResult{Wall: 40, ClientCPU: 1}).clientBusy()) {
		t.Error("an unmeasured side has a busy share")
	}
	r.Ops = []op{{Kind: kClone, Outcome: ok}, {Kind: kFetch, Outcome: ok}, {Kind: kShallow, Outcome: ok}, {Kind: kClone, Outcome: cutOff},
		{Kind: kLsRemote, Outcome: ok}, {Kind: kPush, Outcome: ok}}
	r.Counters = &agentCounters{CPU: map[string]float64{"pack-objects": 6}}
	if r.packOps() != 3 || perOp(r.cmdCPU("pack-objects"), r.packOps()) != 2 || !math.IsNaN(perOp(1, 0)) {
		t.Errorf("per op: %d ops, %v", r.packOps(), perOp(r.cmdCPU("pack-objects"), r.packOps()))
	}
	if !math.IsNaN((&runResult{}).cmdCPU("pack-objects")) || !math.IsNaN(r.cmdCPU("upload-pack")) {
		t.Error("a run without sluice, or a subcommand no rule admitted, has command CPU")
	}
	r.Counters.Finished = map[string]float64{"upload-pack": 2}
	if r.cmdCPU("upload-pack") != 0 {
		t.Error("admitted upload-packs that used no CPU have none")
	}
}
