package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// mode is one configuration of the server under the same load.
type mode struct {
	Name string
	// Policy is sluiced's policy file before the harness sets the
	// operational keys (socket, metrics address, git binary, cgroup
	// hierarchy root); empty: no sluice, the server runs the real git.
	Policy string
	// Source says where the policy came from, for the report.
	Source string
	// Limit is the host-wide pack-objects limit of a sweep mode (0 else).
	Limit int
}

// Built-in mode names. Every other name is a policy file:
// <policy-dir>/<name>.toml, or name=path/to/file.toml. So a new mode (e.g.
// issue 17's host-budget) slots in by dropping policies/host-budget.toml
// next to tuned.toml and naming it in -modes; pack-cache
// (policies/pack-cache.toml: the shipped defaults plus the pack cache,
// issue 18) is one.
const (
	modeNone       = "none"        // no sluice
	modeDefaults   = "defaults"    // `sluice validate --print-defaults`, untouched
	modeBestStatic = "best-static" // the sweep's winner, run again
	sweepPrefix    = "static-g"    // static-g4: the sweep policy with limit 4
	// modePackCache is not built in (policies/pack-cache.toml); the
	// report compares it with defaults.
	modePackCache = "pack-cache"
)

// sweepPolicy is the sweep's static policy: one host-wide limit on
// pack-objects and nothing else. "Host-wide" is key = "global" on the only
// rule matching pack-objects, with the shipped [budget] turned off (the
// budget is what the sweep judges). upload-pack, receive-pack and upload-archive run unlimited,
// so the only thing the sweep varies is how many packs are computed at
// once. The queue is long and patient (1000, 5 minutes: longer than any
// storm window), so the sweep measures the limit, not rejections.
func sweepPolicy(g int) string {
	return fmt.Sprintf(`# sweep: one host-wide limit on pack-objects (key "global"), nothing else.
[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "global"
max_per_key = %d
max_queue_size = 1000
max_queue_wait = "5m"

# The shipped host budget is what the sweep is the bar for: off here.
[budget]
enabled = false
`, g)
}

// resolveMode turns a mode name into a mode. best is the sweep's winning
// limit for the scenario (0: not known yet).
func resolveMode(name, bin, policyDir string, best int) (mode, error) {
	switch {
	case name == modeNone:
		return mode{Name: name, Source: "no sluice: the server runs the real git"}, nil
	case name == modeDefaults:
		out, err := exec.Command(filepath.Join(bin, "sluice"), "validate", "--print-defaults").Output()
		if err != nil {
			return mode{}, fmt.Errorf("mode defaults: %s validate --print-defaults: %w (run make build)", filepath.Join(bin, "sluice"), err)
		}
		return mode{Name: name, Policy: string(out), Source: "`sluice validate --print-defaults` of the binary under test, untouched"}, nil
	case name == modeBestStatic:
		if best <= 0 {
			return mode{}, errors.New("mode best-static needs the sweep (-sweep) or -best-static N")
		}
		return mode{Name: name, Policy: sweepPolicy(best), Limit: best,
			Source: fmt.Sprintf("the sweep's winner: pack-objects key \"global\" max_per_key = %d", best)}, nil
	case strings.HasPrefix(name, sweepPrefix):
		g, err := strconv.Atoi(strings.TrimPrefix(name, sweepPrefix))
		if err != nil || g < 1 {
			return mode{}, fmt.Errorf("mode %q: want %sN with N ≥ 1", name, sweepPrefix)
		}
		return mode{Name: name, Policy: sweepPolicy(g), Limit: g, Source: fmt.Sprintf("sweep: pack-objects key \"global\" max_per_key = %d", g)}, nil
	}
	path := filepath.Join(policyDir, name+".toml")
	if n, p, ok := strings.Cut(name, "="); ok {
		name, path = n, p
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return mode{}, fmt.Errorf("mode %q: %w (built-in modes: none, defaults, best-static, %sN; any other name is a policy file <policy-dir>/NAME.toml or NAME=FILE)", name, err, sweepPrefix)
	}
	return mode{Name: name, Policy: string(b), Source: path}, nil
}

// agentConfig completes a policy with the harness's operational keys:
// [agent] socket and metrics_addr, [git] bin, [cgroups] hierarchy_root
// (unique per run: other sluiced instances on the machine use "sluice"),
// and, when the policy has a [pack_cache] table, its dir (packCacheDir: a
// fresh directory per run, so no run shares a cache with another or with
// a sluiced outside the harness). Keys already present are replaced in
// place, so the shipped default policy keeps every other line as shipped.
func agentConfig(policy, socket, metricsAddr, hierarchyRoot, packCacheDir string) (string, error) {
	s := policy
	var err error
	keys := [][3]string{
		{"agent", "socket", strconv.Quote(socket)},
		{"agent", "metrics_addr", strconv.Quote(metricsAddr)},
		{"git", "bin", strconv.Quote(realGit)},
		{"cgroups", "hierarchy_root", strconv.Quote(hierarchyRoot)},
	}
	if packCacheDir != "" && hasTable(policy, "pack_cache") {
		keys = append(keys, [3]string{"pack_cache", "dir", strconv.Quote(packCacheDir)})
	}
	for _, kv := range keys {
		if s, err = setKey(s, kv[0], kv[1], kv[2]); err != nil {
			return "", err
		}
	}
	return s, nil
}

// isHeader says whether a TOML line is the header of [table] (a trailing
// comment allowed).
func isHeader(line, table string) bool {
	l, _, _ := strings.Cut(line, "#")
	return strings.TrimSpace(l) == "["+table+"]"
}

// hasTable says whether a TOML text has a [table] header.
func hasTable(text, table string) bool {
	for _, l := range strings.Split(text, "\n") {
		if isHeader(l, table) {
			return true
		}
	}
	return false
}

// setKey sets key = value in [table] of a TOML text: the key's line is
// replaced where the table has it, else the line is added below the
// table's header, else the table is appended.
func setKey(text, table, key, value string) (string, error) {
	lines := strings.Split(text, "\n")
	header := "[" + table + "]"
	start := -1
	for i, l := range lines {
		if isHeader(l, table) {
			if start >= 0 {
				return "", fmt.Errorf("policy has [%s] twice", table)
			}
			start = i
		}
	}
	line := key + " = " + value
	if start < 0 {
		return strings.TrimRight(text, "\n") + "\n\n" + header + "\n" + line + "\n", nil
	}
	for i := start + 1; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i])
		if strings.HasPrefix(t, "[") {
			break
		}
		if k, _, ok := strings.Cut(t, "="); ok && strings.TrimSpace(k) == key {
			lines[i] = line
			return strings.Join(lines, "\n"), nil
		}
	}
	lines = append(lines[:start+1], append([]string{line}, lines[start+1:]...)...)
	return strings.Join(lines, "\n"), nil
}
