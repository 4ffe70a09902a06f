package gitwrap

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeExe(t *testing.T, path string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestFindRealGitNeverFindsItself plays the shim with the test binary: "self"
// is /proc/self/exe, and a symlink to it named git comes first on PATH.
func TestFindRealGitNeverFindsItself(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	shimDir := filepath.Join(root, "shim")
	os.MkdirAll(shimDir, 0o755)
	if err := os.Symlink(self, filepath.Join(shimDir, "git")); err != nil {
		t.Fatal(err)
	}
	hardDir := filepath.Join(root, "hard")
	os.MkdirAll(hardDir, 0o755)
	if err := os.Link(self, filepath.Join(hardDir, "git")); err != nil {
		t.Logf("no hard link (%v); testing symlinks only", err)
	}
	notExe := filepath.Join(root, "noexec", "git")
	os.MkdirAll(filepath.Dir(notExe), 0o755)
	os.WriteFile(notExe, []byte("x"), 0o644)
	real := filepath.Join(root, "real", "git")
	writeExe(t, real)

	env := map[string]string{"PATH": strings.Join([]string{"", "relative", shimDir, hardDir, filepath.Dir(notExe), filepath.Join(root, "nothing"), filepath.Dir(real)}, ":")}
	getenv := envOf(env)
	got, err := FindRealGit(getenv, "")
	if err != nil || got != real {
		t.Fatalf("FindRealGit = %q, %v; want %q", got, err, real)
	}

	// Explicit choices win, in order.
	other := filepath.Join(root, "other", "git")
	writeExe(t, other)
	if got, err := FindRealGit(getenv, other); err != nil || got != other {
		t.Errorf("configured: %q %v", got, err)
	}
	env[RealGitEnv] = real
	if got, err := FindRealGit(getenv, other); err != nil || got != real {
		t.Errorf("SLUICE_REAL_GIT: %q %v", got, err)
	}

	// Explicitly pointing at the shim is refused, never followed.
	for _, p := range []string{self, filepath.Join(shimDir, "git")} {
		env[RealGitEnv] = p
		if _, err := FindRealGit(getenv, ""); err == nil || !strings.Contains(err.Error(), "is the sluice shim itself") || !strings.HasPrefix(err.Error(), "sluice: ") {
			t.Errorf("SLUICE_REAL_GIT=%s: err = %v", p, err)
		}
	}
	delete(env, RealGitEnv)
	if _, err := FindRealGit(getenv, filepath.Join(shimDir, "git")); err == nil || !strings.Contains(err.Error(), "git_bin") {
		t.Errorf("git_bin = shim: err = %v", err)
	}
	if _, err := FindRealGit(getenv, filepath.Join(root, "missing")); err == nil {
		t.Error("missing git_bin accepted")
	}
	if _, err := FindRealGit(getenv, notExe); err == nil {
		t.Error("non-executable git_bin accepted")
	}
}

func TestFindRealGitFallback(t *testing.T) {
	if _, err := os.Stat(DefaultGit); err != nil {
		t.Skipf("no %s on this machine", DefaultGit)
	}
	got, err := FindRealGit(envOf(map[string]string{"PATH": t.TempDir()}), "")
	if err != nil || got != DefaultGit {
		t.Errorf("got %q %v, want %s", got, err, DefaultGit)
	}
	// The fallback is the shim itself: an error, not a loop.
	if _, err := findRealGit(envOf(nil), "", DefaultGit); err == nil || !strings.Contains(err.Error(), "cannot find the real git") {
		t.Errorf("fallback is self: err = %v", err)
	}
}

func TestExecGuard(t *testing.T) {
	_, err := FindRealGit(envOf(map[string]string{ExecGuardEnv: execGuardValue()}), "")
	if err == nil || !strings.Contains(err.Error(), "exec'd the shim in place") {
		t.Errorf("err = %v", err)
	}
	// A guard from another process (an ancestor's exec) is fine.
	if _, err := FindRealGit(envOf(map[string]string{ExecGuardEnv: "1.0", "PATH": "/usr/bin"}), ""); err != nil && strings.Contains(err.Error(), "exec'd") {
		t.Errorf("foreign guard value tripped: %v", err)
	}
}

// TestFindRealGitFor skips the named shim, not the running program, with
// the same rules as FindRealGit: `sluice check` and `sluice demo` find the
// git the shim would run.
func TestFindRealGitFor(t *testing.T) {
	root := t.TempDir()
	shim := filepath.Join(root, "lib", "sluice-shim")
	writeExe(t, shim)
	shimDir := filepath.Join(root, "shimbin")
	os.MkdirAll(shimDir, 0o755)
	if err := os.Symlink(shim, filepath.Join(shimDir, "git")); err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(root, "real", "git")
	writeExe(t, real)
	env := map[string]string{"PATH": "relative:" + shimDir + ":" + filepath.Dir(real)}
	if got, err := FindRealGitFor(envOf(env), "", shim); err != nil || got != real {
		t.Fatalf("FindRealGitFor = %q, %v; want %q", got, err, real)
	}
	if _, err := FindRealGitFor(envOf(env), filepath.Join(shimDir, "git"), shim); err == nil || !strings.Contains(err.Error(), "is the sluice shim itself") {
		t.Errorf("git_bin = shim: err = %v", err)
	}
	// A shim that is not installed skips nothing.
	env["PATH"] = shimDir
	if got, err := FindRealGitFor(envOf(env), "", filepath.Join(root, "missing")); err != nil || got != filepath.Join(shimDir, "git") {
		t.Errorf("without a shim: %q, %v", got, err)
	}
}
