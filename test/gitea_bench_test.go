package test

// gitea_bench_test.go measures what the shim costs a real Gitea (`make
// bench-gitea`; skipped unless SLUICE_GITEA_BENCH is set). One Gitea runs
// with [git] PATH pointing at a directory whose links are switched
// atomically between requests, so the arms share one process, one
// database and one cache, interleaved request by request:
//
//   - shim: the guide's wiring — git and the dashed names are the shim;
//   - serving-only: git is the real git, git-upload-pack/git-receive-pack/
//     git-upload-archive are the shim (Gitea's SSH path runs those by name
//     from [git] PATH's directory), the pack-objects hook is the shim;
//   - none: everything the real git; the hook link is /usr/bin/env, which
//     runs the real git pack-objects (one small exec in place of the shim).
//
// Results go to $SLUICE_GITEA_BENCH_OUT (default bench/gitea/cost.md).

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// giteaArms are the link sets of the switched [git] PATH directory.
func giteaArms() (names []string, arms map[string]map[string]string) {
	realGit := bins.realGit
	core := "/usr/lib/git-core/"
	all := func(git, dashed, hook string) map[string]string {
		m := map[string]string{"git": git, "hook": hook}
		for _, d := range []string{"git-upload-pack", "git-receive-pack", "git-upload-archive"} {
			m[d] = dashed
			if dashed == "" {
				m[d] = core + d
			}
		}
		return m
	}
	arms = map[string]map[string]string{
		"shim":         all(bins.shim, bins.shim, bins.shim),
		"serving-only": all(realGit, bins.shim, bins.shim),
		"none":         all(realGit, "", "/usr/bin/env"),
	}
	return []string{"shim", "serving-only", "none"}, arms
}

// switchLinks points every link in dir at its target in arm, each by an
// atomic rename.
func switchLinks(t *testing.T, dir string, arm map[string]string) {
	for name, target := range arm {
		tmp := filepath.Join(dir, "."+name+".new")
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

type giteaProbe struct {
	name string
	run  func() error
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestGiteaShimCost(t *testing.T) {
	if os.Getenv("SLUICE_GITEA_BENCH") == "" {
		t.Skip("a benchmark: set SLUICE_GITEA_BENCH=1 (make bench-gitea)")
	}
	n := envInt("SLUICE_GITEA_BENCH_N", 200)
	u := giteaUser(t, "")
	a := newAgentDir(t)
	a.agentExtra = fmt.Sprintf("socket_group = %q\n", u.Username)
	a.start(defaultLimits(t, ""), "open")
	giteaShares(t, a)

	sw := filepath.Join(t.TempDir(), "gitbin")
	if err := os.MkdirAll(sw, 0o755); err != nil {
		t.Fatal(err)
	}
	traversable(t, sw)
	names, arms := giteaArms()
	switchLinks(t, sw, arms["shim"])
	wiring := fmt.Sprintf("[git]\nPATH = %s/git\n\n[git.config]\nuploadpack.packObjectsHook = %s/hook\n", sw, sw)
	g := newGitea(t, u, wiring, giteaOpts{env: []string{"SLUICE_SOCKET=" + a.socket, "SLUICE_SHIM_LOG=" + a.shimLog}})
	src := makeRepo(t, t.TempDir(), "project", 40)
	g.createRepo("project", src)

	get := func(path string) func() error {
		return func() error {
			resp, err := http.Get(g.url + path)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
			}
			return nil
		}
	}
	o, r := g.admin, "project"
	clones := 0
	probes := []giteaProbe{
		{"API contents (file listing) `/api/v1/repos/{o}/{r}/contents`", get(fmt.Sprintf("/api/v1/repos/%s/%s/contents", o, r))},
		{"API commits `/api/v1/repos/{o}/{r}/commits?limit=10`", get(fmt.Sprintf("/api/v1/repos/%s/%s/commits?limit=10", o, r))},
		{"raw file `/{o}/{r}/raw/branch/main/file1.txt`", get(fmt.Sprintf("/%s/%s/raw/branch/main/file1.txt", o, r))},
		{"web repository home `/{o}/{r}`", get(fmt.Sprintf("/%s/%s", o, r))},
		{"git ref advertisement `/{o}/{r}.git/info/refs?service=git-upload-pack`", get(fmt.Sprintf("/%s/%s.git/info/refs?service=git-upload-pack", o, r))},
		{"`git clone --bare` over HTTP (40 commits)", func() error {
			clones++
			dst := filepath.Join(g.dir, "client", fmt.Sprintf("bench-%d", clones))
			defer os.RemoveAll(dst)
			out, err := gitTry(g.dir, g.clientEnv(), "clone", "-q", "--bare", g.httpURL(r), dst)
			if err != nil {
				return fmt.Errorf("clone: %v: %s", err, out)
			}
			return nil
		}},
	}
	// Drop probes Gitea cannot serve here (the web page needs the
	// frontend's assets manifest, which a build without npm lacks).
	var usable []giteaProbe
	for _, p := range probes {
		if err := p.run(); err != nil {
			_, info := g.apiTry("GET", fmt.Sprintf("/api/v1/repos/%s/%s", o, r), nil)
			t.Logf("not measured: %s: %v\nrepo: %s\ngitea.log: %s", p.name, err, info, tail(g.log(), 3000))
			continue
		}
		usable = append(usable, p)
	}
	probes = usable

	// How many git processes each request starts, and which: a counting
	// git for a few requests.
	counter := filepath.Join(g.dir, "count-git")
	countLog := filepath.Join(g.dir, "count-git.log")
	os.WriteFile(countLog, nil, 0o666)
	os.Chmod(countLog, 0o666)
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> %s\nexec %s \"$@\"\n", countLog, bins.realGit)
	if err := os.WriteFile(counter, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	countArm := map[string]string{}
	for k, v := range arms["none"] {
		countArm[k] = v
	}
	countArm["git"] = counter
	switchLinks(t, sw, countArm)
	execs := map[string]float64{}
	subs := map[string]string{}
	const countRuns = 3
	for _, p := range probes {
		time.Sleep(time.Second) // what the previous probe started in the background
		os.Truncate(countLog, 0)
		for i := 0; i < countRuns; i++ {
			if err := p.run(); err != nil {
				t.Fatalf("%s (counting): %v", p.name, err)
			}
		}
		time.Sleep(time.Second) // git the requests started in the background
		b, _ := os.ReadFile(countLog)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(b) == 0 {
			lines = nil
		}
		execs[p.name] = float64(len(lines)) / countRuns
		seen := map[string]int{}
		for _, l := range lines {
			seen[gitSubcommand(l)]++
		}
		var parts []string
		for k, v := range seen {
			parts = append(parts, fmt.Sprintf("%s ×%.3g", k, float64(v)/countRuns))
		}
		sort.Strings(parts)
		subs[p.name] = strings.Join(parts, ", ")
	}

	// Warm up, then interleave: request i of every probe runs each arm, in
	// an order rotated by i.
	for _, p := range probes {
		for _, arm := range names {
			switchLinks(t, sw, arms[arm])
			for i := 0; i < 5; i++ {
				p.run()
			}
		}
	}
	lat := map[string]map[string][]time.Duration{}
	for _, p := range probes {
		lat[p.name] = map[string][]time.Duration{}
	}
	load0 := loadavg()
	start := time.Now()
	for i := 0; i < n; i++ {
		for _, p := range probes {
			for k := range names {
				arm := names[(i+k)%len(names)]
				switchLinks(t, sw, arms[arm])
				t0 := time.Now()
				if err := p.run(); err != nil {
					t.Fatalf("%s (%s): %v", p.name, arm, err)
				}
				lat[p.name][arm] = append(lat[p.name][arm], time.Since(t0))
			}
		}
	}
	elapsed := time.Since(start)

	var b strings.Builder
	fmt.Fprintf(&b, "# What the shim costs Gitea %s — %s\n\n", giteaVersion, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "`SLUICE_GITEA_BENCH=1 SLUICE_GITEA_BENCH_N=%d go test ./test -run TestGiteaShimCost -v` (`make bench-gitea`) as root on %d CPUs; load average %s at the start, %s at the end; %d requests per endpoint and arm, interleaved request by request (arm order rotated), after 5 warm-up requests each; %v in all.\n\n",
		n, runtime.NumCPU(), load0, loadavg(), n, elapsed.Round(time.Second))
	b.WriteString("One Gitea (sqlite, loopback, its own user) with `[git] PATH` = a directory whose links are switched atomically between requests:\n\n")
	b.WriteString("- **shim**: the guide's wiring (`git` and the dashed names → sluice-shim; hook → sluice-shim);\n")
	b.WriteString("- **serving-only**: `git` → the real git; `git-upload-pack`, `git-receive-pack`, `git-upload-archive` → sluice-shim; hook → sluice-shim;\n")
	b.WriteString("- **none**: everything the real git; hook → `/usr/bin/env` (runs `git pack-objects` from PATH: one small exec instead of the shim).\n\n")
	b.WriteString("sluiced runs the shipped policy (policy/default.toml; cgroups off); one request at a time, so nothing queues. git execs per request counted with a logging `git` wrapper over 3 requests (1 s settle before and after: Gitea runs some git in the background after a request).\n\n")
	b.WriteString("| endpoint | git execs / request | arm | p50 ms | p95 ms | p99 ms | mean ms | mean ÷ none | p50 ÷ none |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range probes {
		_, _, _, baseMean := stats(lat[p.name]["none"])
		baseP50, _, _, _ := stats(lat[p.name]["none"])
		for _, arm := range names {
			p50, p95, p99, mean := stats(lat[p.name][arm])
			ex := ""
			if arm == names[0] {
				ex = fmt.Sprintf("%.3g (%s)", execs[p.name], subs[p.name])
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.1f | %.1f | %.1f | %.1f | ×%.2f | ×%.2f |\n",
				p.name, ex, arm, ms(p50), ms(p95), ms(p99), ms(mean), mean.Seconds()/baseMean.Seconds(), p50.Seconds()/baseP50.Seconds())
		}
	}
	out := os.Getenv("SLUICE_GITEA_BENCH_OUT")
	if out == "" {
		out = "../bench/gitea/cost.md"
	}
	os.MkdirAll(filepath.Dir(out), 0o755)
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s:\n%s", out, b.String())
}

// gitSubcommand is the first argument of a git command line that is not a
// global option (or its value).
func gitSubcommand(line string) string {
	f := strings.Fields(line)
	for i := 0; i < len(f); i++ {
		switch {
		case f[i] == "-c" || f[i] == "-C" || f[i] == "--git-dir" || f[i] == "--work-tree":
			i++
		case strings.HasPrefix(f[i], "-"):
		default:
			return f[i]
		}
	}
	return "(none)"
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
