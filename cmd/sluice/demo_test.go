package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWriteFastImportDeterministic(t *testing.T) {
	var a, b bytes.Buffer
	if err := writeFastImport(&a, 20, 3, 10); err != nil {
		t.Fatal(err)
	}
	if err := writeFastImport(&b, 20, 3, 10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("the same arguments gave different streams")
	}
}

func TestGenerateRepo(t *testing.T) {
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git is not installed (apt-get install git)")
	}
	dir := filepath.Join(t.TempDir(), "demo.git")
	if err := generateRepo(context.Background(), git, dir, 40, 4, 20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(git, "--git-dir", dir, "rev-list", "--count", "HEAD").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "40" {
		t.Fatalf("rev-list --count HEAD = %q, %v; want 40 commits on the default branch", out, err)
	}
	out, err = exec.Command(git, "--git-dir", dir, "fsck", "--no-progress").CombinedOutput()
	if err != nil {
		t.Fatalf("fsck: %v\n%s", err, out)
	}
	out, _ = exec.Command(git, "--git-dir", dir, "ls-tree", "--name-only", "HEAD").Output()
	if strings.Fields(string(out))[0] != "file000.txt" || len(strings.Fields(string(out))) != 4 {
		t.Errorf("tree = %q, want 4 files", out)
	}
}

func TestFilterMetrics(t *testing.T) {
	in := `# HELP sluice_commands_total Git commands.
# TYPE sluice_commands_total counter
sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"} 14
sluice_concurrency_limiting_acquiring_seconds_bucket{limit="upload-pack",le="0.005"} 3
sluice_concurrency_limiting_acquiring_seconds_sum{limit="upload-pack"} 20.1
sluice_build_info{goversion="go1.26",version="dev"} 1
go_goroutines 12
sluice_requests_dropped_total{limit="upload-pack",reason="max_size"} 30
`
	got, err := filterMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"} 14`,
		`sluice_concurrency_limiting_acquiring_seconds_sum{limit="upload-pack"} 20.1`,
		`sluice_requests_dropped_total{limit="upload-pack",reason="max_size"} 30`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("filterMetrics =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestFindBinaries(t *testing.T) {
	dir := t.TempDir()
	exe := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("PATH", "")
	if err := binariesErr(dir); err == nil || !strings.Contains(err.Error(), "cannot find sluiced and sluice-shim next to this sluice binary ("+dir+") or on PATH; run 'make build'") {
		t.Errorf("binariesErr = %v", err)
	}
	sluiced := exe("sluiced")
	if got := findBinary("sluiced", dir); got != sluiced {
		t.Errorf("findBinary next to us = %q", got)
	}
	// Else from PATH.
	other := t.TempDir()
	shim := filepath.Join(other, "sluice-shim")
	if err := os.WriteFile(shim, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", other)
	if got := findBinary("sluice-shim", dir); got != shim {
		t.Errorf("findBinary from PATH = %q, want %q", got, shim)
	}
	if err := binariesErr(dir); err != nil {
		t.Errorf("binariesErr with both found: %v", err)
	}

	// The real git is found on PATH, skipping a git that is the shim.
	shimBin := t.TempDir()
	if err := os.Symlink(shim, filepath.Join(shimBin, "git")); err != nil {
		t.Fatal(err)
	}
	gitDir := t.TempDir()
	realGit := filepath.Join(gitDir, "git")
	if err := os.WriteFile(realGit, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", shimBin+":"+gitDir)
	if got, err := findRealGit(shim); err != nil || got != realGit {
		t.Errorf("findRealGit = %q, %v; want %q", got, err, realGit)
	}
	// With only the shim on PATH the shim falls back to /usr/bin/git, and
	// so does the demo; SLUICE_REAL_GIT naming the shim is refused.
	t.Setenv("PATH", shimBin)
	t.Setenv("SLUICE_REAL_GIT", filepath.Join(shimBin, "git"))
	if _, err := findRealGit(shim); err == nil || !strings.Contains(err.Error(), "is the sluice shim itself") {
		t.Errorf("findRealGit with SLUICE_REAL_GIT at the shim = %v", err)
	}
}

func TestMirrorExecPath(t *testing.T) {
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git is not installed (apt-get install git)")
	}
	shim := filepath.Join(t.TempDir(), "sluice-shim")
	if err := os.WriteFile(shim, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := mirrorExecPath(git, shim, filepath.Join(t.TempDir(), "exec"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"git", "git-upload-pack", "git-receive-pack", "git-upload-archive"} {
		if target, err := os.Readlink(filepath.Join(dir, name)); err != nil || target != shim {
			t.Errorf("%s -> %q, %v; want the shim", name, target, err)
		}
	}
	out, _ := exec.Command(git, "--exec-path").Output()
	real := strings.TrimSpace(string(out))
	if target, err := os.Readlink(filepath.Join(dir, "git-daemon")); err != nil || target != filepath.Join(real, "git-daemon") {
		t.Errorf("git-daemon -> %q, %v; want the real one", target, err)
	}
}

func TestClassifyClone(t *testing.T) {
	failed := errors.New("exit status 128")
	for _, c := range []struct {
		stderr       string
		err          error
		outcome, msg string
	}{
		{"", nil, "ok", ""},
		{"fatal: remote error: sluice: too many upload-pack requests (limit \"upload-pack\"); try again in 3s (correlation id 0123456789abcdef)\n", failed,
			"rejected", "sluice: too many upload-pack requests (limit \"upload-pack\"); try again in 3s (correlation id 0123456789abcdef)"},
		{"remote: sluice: waited 2s for a slot for demo.git, running\nremote: sluice: pack-objects waited 3s for a slot (limit \"pack-objects\"); try again in 3s\nfatal: early EOF\n", failed,
			"rejected", "sluice: pack-objects waited 3s for a slot (limit \"pack-objects\"); try again in 3s"},
		// A waiting line is progress, not the reason.
		{"sluice: waiting for a slot for demo.git (position 1 of 2, 1s)\rsluice: waiting for a slot for demo.git (position 1 of 1, 3s)\nfatal: the remote end hung up unexpectedly\n", failed,
			"failed", "fatal: the remote end hung up unexpectedly"},
		{"fatal: unable to connect to 127.0.0.1:\n", failed, "failed", "fatal: unable to connect to 127.0.0.1:"},
	} {
		outcome, msg := classifyClone(c.stderr, c.err)
		if outcome != c.outcome || msg != c.msg {
			t.Errorf("classifyClone(%q) = %q, %q; want %q, %q", c.stderr, outcome, msg, c.outcome, c.msg)
		}
	}
}

func TestCompareRuns(t *testing.T) {
	plain := []clientResult{{ok: 2, took: []time.Duration{3 * time.Second, time.Second}}, {ok: 1, took: []time.Duration{2 * time.Second}}}
	with := []clientResult{{ok: 1, rejected: 4, took: []time.Duration{500 * time.Millisecond}}, {failed: 1}}
	got := strings.Join(compareRuns(plain, with), "\n")
	for _, want := range []string{
		"clones completed                             3               1",
		"rejected, told why by sluice                 0               4",
		"failed otherwise                             0               1",
		"completed clone time, median             2.00s           0.50s",
		"completed clone time, max                3.00s           0.50s",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("compareRuns lacks %q:\n%s", want, got)
		}
	}
}
