package main

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/procfs"
)

// fakeCheckEnv is a machine with a shim dir on PATH, a system gitconfig
// with the hook, and an agent that answers.
func fakeCheckEnv(t *testing.T) (checkEnv, map[string]string) {
	t.Helper()
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git is not installed (apt-get install git)")
	}
	dir := t.TempDir()
	shim := filepath.Join(dir, "sluice-shim")
	if err := os.WriteFile(shim, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	for _, n := range serverCommands {
		if err := os.Symlink(shim, filepath.Join(bin, n)); err != nil {
			t.Fatal(err)
		}
	}
	gitconfig := filepath.Join(dir, "gitconfig")
	if err := os.WriteFile(gitconfig, []byte("[uploadpack]\n\tpackObjectsHook = "+shim+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sluice.toml")
	if err := os.WriteFile(cfg, []byte("[cgroups]\nenabled = false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "sluice.sock")
	os.Mkdir(filepath.Dir(sock), 0o750)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	os.Chmod(sock, 0o660)
	vars := map[string]string{"GIT_CONFIG_SYSTEM": gitconfig}
	// A proc without processes (no Git server to discover) whose self is
	// this test's.
	proc := filepath.Join(dir, "proc")
	os.Mkdir(proc, 0o755)
	if err := os.Symlink("/proc/self", filepath.Join(proc, "self")); err != nil {
		t.Fatal(err)
	}
	return checkEnv{
		configPath: cfg, configSet: true, socket: sock,
		path: bin + ":" + filepath.Dir(git), shim: shim,
		cgroupRoot: filepath.Join(dir, "nocgroup"), proc: procfs.FS{Root: proc}, btf: filepath.Join(dir, "nobtf"),
		getenv: func(k string) string { return vars[k] },
		status: func(string) (string, error) { return "sluiced test answers", nil },
	}, vars
}

func resultsByName(rs []checkResult) map[string]checkResult {
	m := map[string]checkResult{}
	for _, r := range rs {
		m[r.name] = r
	}
	return m
}

func TestCheckAllOK(t *testing.T) {
	env, _ := fakeCheckEnv(t)
	rs := runChecks(env)
	var out strings.Builder
	code := printChecks(rs, &out)
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out.String())
	}
	m := resultsByName(rs)
	for _, name := range []string{"config", "agent", "shim on PATH", "packObjectsHook", "git"} {
		if m[name].status != checkOK {
			t.Errorf("%s: %s %s", name, m[name].status, m[name].detail)
		}
	}
	if m["cgroups"].status != checkSkip {
		t.Errorf("cgroups disabled in config should SKIP:\n%s", out.String())
	}
	// No BTF at the injected path: a warning, not a failure.
	if m["bpf"].status != checkWarn || !strings.Contains(m["bpf"].detail, "no kernel BTF") {
		t.Errorf("bpf without BTF should WARN:\n%s", out.String())
	}
}

func TestCheckFailures(t *testing.T) {
	t.Run("hook missing", func(t *testing.T) {
		env, vars := fakeCheckEnv(t)
		os.WriteFile(vars["GIT_CONFIG_SYSTEM"], []byte("[core]\n\tbare = false\n"), 0o644)
		var out strings.Builder
		if code := printChecks(runChecks(env), &out); code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if !strings.Contains(out.String(), "FAIL  packObjectsHook  uploadpack.packObjectsHook is not set in the system gitconfig") ||
			!strings.Contains(out.String(), "fix: git config --system uploadpack.packObjectsHook "+env.shim) {
			t.Fatalf("missing message or fix:\n%s", out.String())
		}
	})
	t.Run("hook included", func(t *testing.T) {
		env, vars := fakeCheckEnv(t)
		inc := vars["GIT_CONFIG_SYSTEM"] + ".inc"
		os.Rename(vars["GIT_CONFIG_SYSTEM"], inc)
		os.WriteFile(vars["GIT_CONFIG_SYSTEM"], []byte("[include]\n\tpath = "+inc+"\n"), 0o644)
		if r := resultsByName(runChecks(env))["packObjectsHook"]; r.status != checkOK {
			t.Fatalf("hook through include.path: %s %s", r.status, r.detail)
		}
	})
	t.Run("hook is another program", func(t *testing.T) {
		env, vars := fakeCheckEnv(t)
		os.WriteFile(vars["GIT_CONFIG_SYSTEM"], []byte("[uploadpack]\n\tpackObjectsHook = /bin/true\n"), 0o644)
		if r := resultsByName(runChecks(env))["packObjectsHook"]; r.status != checkFail || !strings.Contains(r.detail, `"/bin/true", not the shim`) {
			t.Fatalf("got %s %s", r.status, r.detail)
		}
	})
	t.Run("real git first on PATH", func(t *testing.T) {
		env, _ := fakeCheckEnv(t)
		git, _ := exec.LookPath("git")
		env.path = filepath.Dir(git) + ":" + env.path
		r := resultsByName(runChecks(env))["shim on PATH"]
		if r.status != checkFail || !strings.Contains(r.detail, "git is "+git) || !strings.Contains(r.fix, "/usr/lib/sluice/bin first") {
			t.Fatalf("got %s %s (fix %s)", r.status, r.detail, r.fix)
		}
	})
	t.Run("agent down", func(t *testing.T) {
		env, _ := fakeCheckEnv(t)
		env.status = func(s string) (string, error) {
			return "", errors.New("sluice: cannot reach sluiced at " + s + ": connection refused")
		}
		if r := resultsByName(runChecks(env))["agent"]; r.status != checkFail || !strings.Contains(r.detail, "connection refused") {
			t.Fatalf("got %s %s", r.status, r.detail)
		}
	})
	t.Run("socket mode", func(t *testing.T) {
		env, _ := fakeCheckEnv(t)
		os.Chmod(env.socket, 0o600)
		if r := resultsByName(runChecks(env))["socket"]; r.status != checkFail || !strings.Contains(r.detail, "mode 0600") {
			t.Fatalf("got %s %s", r.status, r.detail)
		}
	})
	t.Run("invalid config", func(t *testing.T) {
		env, _ := fakeCheckEnv(t)
		os.WriteFile(env.configPath, []byte("[agent]\nfail_mod = \"open\"\n"), 0o644)
		r := resultsByName(runChecks(env))["config"]
		if r.status != checkFail || !strings.Contains(r.detail, "fail_mod") || !strings.Contains(r.fix, "sluice validate") {
			t.Fatalf("got %s %s", r.status, r.detail)
		}
	})
}

func TestCheckCgroupsOnThisHost(t *testing.T) {
	env, _ := fakeCheckEnv(t)
	env.cgroupRoot = "/sys/fs/cgroup"
	os.WriteFile(env.configPath, []byte("[cgroups]\nenabled = true\nrequired = true\n"), 0o644)
	r := resultsByName(runChecks(env))["cgroups"]
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		if r.status != checkFail {
			t.Fatalf("no cgroups here, required: got %s %s", r.status, r.detail)
		}
		t.Skip("no /sys/fs/cgroup on this machine")
	}
	if os.Geteuid() != 0 {
		t.Skip("creating a cgroup needs root")
	}
	if r.status != checkOK {
		t.Fatalf("got %s %s", r.status, r.detail)
	}
}

func TestReadCapEff(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "self"), 0o755)
	os.WriteFile(filepath.Join(dir, "self", "status"), []byte("Name:\tx\nCapEff:\t000001ffffffffff\n"), 0o644)
	c, err := readCapEff(procfs.FS{Root: dir})
	if err != nil || c != 0x1ffffffffff {
		t.Fatalf("CapEff %x, %v", c, err)
	}
	os.WriteFile(filepath.Join(dir, "self", "status"), []byte("Name:\tx\n"), 0o644)
	if _, err := readCapEff(procfs.FS{Root: dir}); err == nil || !strings.Contains(err.Error(), "has no CapEff line") {
		t.Fatalf("no CapEff line: %v", err)
	}
	if ma, mi, ok := gitVersion("git version 2.39.5"); !ok || ma != 2 || mi != 39 {
		t.Fatalf("gitVersion: %d %d %v", ma, mi, ok)
	}
}
