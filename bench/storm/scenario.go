package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// opKind is what one client operation does.
type opKind string

const (
	kClone    opKind = "clone"     // git clone --bare
	kFetch    opKind = "fetch"     // git fetch into a repository holding an older history (haves)
	kShallow  opKind = "shallow"   // git clone --bare --depth 1
	kLsRemote opKind = "ls-remote" // git ls-remote
	kPush     opKind = "push"      // a new commit pushed to the client's own branch
)

// weighted is one share of a scenario's mix: the kind, the repositories
// it picks from (uniformly), and its weight.
type weighted struct {
	Kind  opKind
	Repos []string
	W     int
}

// scenario is a named shape of storm.
type scenario struct {
	Name    string
	Doc     string
	Mix     []weighted
	Pushers int // extra clients pushing every pushInterval during the storm
}

// Repositories, by role. big is the ci-burst repository (110 MiB, no
// bitmap); the fleet spreads over four sizes; poll over many tiny ones.
var (
	fleetRepos = []string{"big", "medium", "lib", "tool"}
	pollRepos  = func() []string {
		var r []string
		for i := range pollCount {
			r = append(r, fmt.Sprintf("poll-%02d", i))
		}
		return r
	}()
)

const pollCount = 16

// scenarios are the storm shapes; each runs alone with -scenario NAME.
var scenarios = []scenario{
	{Name: "ci-burst", Doc: "K identical full clones of one repository (what CI does)",
		Mix: []weighted{{kClone, []string{"big"}, 1}}},
	{Name: "fleet", Doc: "clones (40 %) and fetches with haves (60 %) spread over 4 repositories of different sizes",
		Mix: []weighted{{kClone, fleetRepos, 2}, {kFetch, fleetRepos, 3}}},
	{Name: "shallow", Doc: "`--depth 1` clones of the big repository (no bitmap: the costliest per byte)",
		Mix: []weighted{{kShallow, []string{"big"}, 1}}},
	{Name: "poll", Doc: fmt.Sprintf("an ArgoCD-like flood of `ls-remote` against %d repositories, no think time", pollCount),
		Mix: []weighted{{kLsRemote, pollRepos, 1}}},
	{Name: "push", Doc: "ci-burst plus 4 clients pushing a new commit every 2 s to their own branch: pushes must never fail because of the storm",
		Mix: []weighted{{kClone, []string{"big"}, 1}}, Pushers: 4},
	{Name: "mixed", Doc: "a weighted blend: 20 clone (big), 30 fetch (fleet), 15 shallow (big), 35 ls-remote (poll), plus 2 pushers",
		Mix: []weighted{{kClone, []string{"big"}, 20}, {kFetch, fleetRepos, 30}, {kShallow, []string{"big"}, 15}, {kLsRemote, pollRepos, 35}}, Pushers: 2},
}

func findScenario(name string) (scenario, error) {
	for _, s := range scenarios {
		if s.Name == name {
			return s, nil
		}
	}
	var names []string
	for _, s := range scenarios {
		names = append(names, s.Name)
	}
	return scenario{}, fmt.Errorf("unknown scenario %q (%s)", name, strings.Join(names, ", "))
}

// pick draws one operation of the mix.
func (s scenario) pick(rng *rand.Rand) (opKind, string) {
	total := 0
	for _, w := range s.Mix {
		total += w.W
	}
	n := rng.IntN(total)
	for _, w := range s.Mix {
		if n < w.W {
			return w.Kind, w.Repos[rng.IntN(len(w.Repos))]
		}
		n -= w.W
	}
	panic("unreachable")
}

// goodputKinds are the kinds a scenario's goodput counts: clones and
// fetches of any sort; a scenario of only ls-remote counts those.
func (s scenario) goodputKinds() []opKind {
	var k []opKind
	for _, w := range s.Mix {
		if w.Kind != kLsRemote && !slices.Contains(k, w.Kind) {
			k = append(k, w.Kind)
		}
	}
	if len(k) == 0 {
		k = []opKind{kLsRemote}
	}
	return k
}

// repoSet holds every repository of the storm.
type repoSet struct {
	base string // served directory: <name>.git for each repository
	// templates for fetches: an older history of each fleet repository
	// (the same generator with 10 % fewer commits: a true ancestor).
	template map[string]string // repo → template's git dir
	oldTip   map[string]string // repo → template's main
	pushSrc  string            // what push.git is copied from (tool)
	pushTip  string            // its main
	sizes    map[string]int64
	params   map[string]repoParams
}

// repoParamsFor gives each repository its shape; smoke shrinks them all.
func repoParamsFor(big repoParams, smoke bool) map[string]repoParams {
	if smoke {
		return map[string]repoParams{
			"big":    big,
			"medium": {Files: 120, Bytes: 1024, Fanout: 10, Commits: 15, Changes: 4},
			"lib":    {Files: 60, Bytes: 1024, Fanout: 10, Commits: 10, Changes: 3},
			"tool":   {Files: 30, Bytes: 512, Fanout: 10, Commits: 8, Changes: 2},
			"probe":  {Files: 20, Bytes: 512, Fanout: 10, Commits: 5, Changes: 2},
		}
	}
	return map[string]repoParams{
		"big":    big,
		"medium": {Files: 4000, Bytes: 4096, Fanout: 20, Commits: 600, Changes: 20},
		"lib":    {Files: 1000, Bytes: 2048, Fanout: 10, Commits: 300, Changes: 10},
		"tool":   {Files: 150, Bytes: 1024, Fanout: 10, Commits: 60, Changes: 4},
		"probe":  {Files: 20, Bytes: 512, Fanout: 10, Commits: 5, Changes: 2},
	}
}

// prepareRepos generates (or finds in the cache) every repository and lays
// out the served directory under dir: links to the cached repositories,
// pollCount copies of tool (distinct repositories to sluice, hard-linked),
// and the templates fetches start from.
func prepareRepos(cache, dir string, params map[string]repoParams, env []string, logf func(string, ...any)) (*repoSet, error) {
	rs := &repoSet{base: filepath.Join(dir, "repos"), template: map[string]string{}, oldTip: map[string]string{},
		sizes: map[string]int64{}, params: params}
	if err := os.MkdirAll(rs.base, 0o755); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range params {
			if !yield(k) {
				return
			}
		}
	}) {
		p := params[name]
		path, err := ensureRepo(cache, name, p, env, logf)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", name, err)
		}
		rs.sizes[name] = dirSize(path)
		if err := os.Symlink(path, filepath.Join(rs.base, name+".git")); err != nil {
			return nil, err
		}
		if slices.Contains(fleetRepos, name) {
			old := p
			old.Commits -= max(1, p.Commits/10)
			tpath, err := ensureRepo(cache, name+"-old", old, env, logf)
			if err != nil {
				return nil, fmt.Errorf("fetch template of %s: %w", name, err)
			}
			rs.template[name] = tpath
			if rs.oldTip[name], err = revParse(env, tpath, "main"); err != nil {
				return nil, err
			}
		}
		if name == "tool" {
			rs.pushSrc = path
			if rs.pushTip, err = revParse(env, path, "main"); err != nil {
				return nil, err
			}
		}
	}
	for _, r := range pollRepos {
		if out, err := gitCmd(env, "", "clone", "-q", "--bare", "--local", rs.pushSrc, filepath.Join(rs.base, r+".git")).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("poll repository %s: %v: %s", r, err, out)
		}
	}
	return rs, nil
}

// resetPushRepo gives every run the same push.git: a fresh copy of tool.
func (rs *repoSet) resetPushRepo(env []string) error {
	dst := filepath.Join(rs.base, "push.git")
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if out, err := gitCmd(env, "", "clone", "-q", "--bare", "--no-hardlinks", rs.pushSrc, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("push repository: %v: %s", err, out)
	}
	return nil
}

func revParse(env []string, dir, rev string) (string, error) {
	out, err := gitCmd(env, dir, "rev-parse", rev).Output()
	if err != nil {
		return "", fmt.Errorf("git rev-parse %s in %s: %w", rev, dir, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// initBorrowing makes an empty bare repository at dir that borrows every
// object of src (objects/info/alternates) and has refs/heads/main = tip:
// a client that already holds src's history, at no copying cost.
func initBorrowing(env []string, dir, src, tip string) error {
	if out, err := gitCmd(env, "", "init", "-q", "--bare", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("git init: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "objects", "info", "alternates"), []byte(filepath.Join(src, "objects")+"\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "refs", "heads", "main"), []byte(tip+"\n"), 0o644)
}
