package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var uploadPackRule = limitRule("upload-pack", "repo", 2, 5, "5s")

// cloneVia clones repo with the shim as git-upload-pack and returns git's
// exit code and stderr.
func cloneVia(t *testing.T, a *agentProc, repo, dest string) (int, string) {
	t.Helper()
	cmd := exec.Command(bins.realGit, "clone", "-q", "--upload-pack="+filepath.Join(a.shimBin, "git-upload-pack"), "file://"+repo, dest)
	cmd.Env = a.env()
	cmd.Dir = a.dir
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

func TestFailOpenWithAgentStopped(t *testing.T) {
	a := startAgent(t, uploadPackRule, "open")
	repo := makeRepo(t, a.dir, "r", 2)
	a.stop()
	if _, err := os.Stat(a.socket); !os.IsNotExist(err) {
		t.Fatalf("socket %s still exists after the agent stopped (err %v)", a.socket, err)
	}
	code, out := cloneVia(t, a, repo, filepath.Join(a.dir, "clone"))
	if code != 0 {
		t.Fatalf("fail-open clone with the agent stopped: exit %d\n%s", code, out)
	}
	log, _ := os.ReadFile(a.shimLog)
	if !strings.Contains(string(log), "unavailable") && !strings.Contains(string(log), "unreachable") {
		t.Errorf("shim logged no warning about the unreachable agent; log:\n%s", log)
	}
}

func TestFailClosedWithAgentStopped(t *testing.T) {
	a := startAgent(t, uploadPackRule, "closed")
	repo := makeRepo(t, a.dir, "r", 2)
	a.stop()
	code, out := cloneVia(t, a, repo, filepath.Join(a.dir, "clone"))
	if code == 0 {
		t.Fatalf("fail-closed clone succeeded with the agent stopped:\n%s", out)
	}
	if !strings.Contains(out, "sluice: admission service unavailable") || !strings.Contains(out, `fail_mode is "closed"`) {
		t.Fatalf("fail-closed output does not explain itself:\n%s", out)
	}
	// The client's own reason, from the shim's ERR packet, without the
	// socket path.
	if !regexp.MustCompile(`fatal: remote error: sluice: admission service unavailable \(fail_mode closed\); try again in 5s \(correlation id [0-9a-f]{16}\)\n`).MatchString(out) {
		t.Fatalf("fail-closed clone: no remote error line:\n%s", out)
	}
	// With the agent back, the same clone works.
	a.start(uploadPackRule, "closed")
	if code, out := cloneVia(t, a, repo, filepath.Join(a.dir, "clone2")); code != 0 {
		t.Fatalf("clone with the agent back: exit %d\n%s", code, out)
	}
}

// TestExitStatusTransparency compares the shim's exit status with git's,
// for unmatched commands (exec'd) and matched ones (supervised).
func TestExitStatusTransparency(t *testing.T) {
	a := startAgent(t, uploadPackRule, "open")
	repo := makeRepo(t, a.dir, "r", 2)
	cases := []struct {
		name string
		args []string
	}{
		{"ok", []string{"rev-parse", "HEAD"}},
		{"fatal 128", []string{"rev-parse", "--verify", "no-such-ref"}},
		{"usage 129", []string{"rev-parse", "--no-such-option-xyz"}},
		{"upload-pack ok", []string{"upload-pack", "--advertise-refs", "."}},
		{"upload-pack missing repo", []string{"upload-pack", "--advertise-refs", "/nonexistent/repo.git"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			direct := exec.Command(bins.realGit, c.args...)
			direct.Dir, direct.Env = repo, a.env()
			directOut, _ := direct.Output()
			shim := exec.Command(filepath.Join(a.shimBin, "git"), c.args...)
			shim.Dir, shim.Env = repo, a.env()
			shimOut, _ := shim.Output()
			if got, want := shim.ProcessState.ExitCode(), direct.ProcessState.ExitCode(); got != want {
				t.Fatalf("exit code via shim %d, direct %d", got, want)
			}
			if string(shimOut) != string(directOut) {
				t.Fatalf("stdout differs:\nshim:   %q\ndirect: %q", shimOut, directOut)
			}
		})
	}
	t.Run("SIGTERM-ed git", func(t *testing.T) {
		p := holdUploadPack(t, a, repo)
		<-p.first
		syscall.Kill(gitOf(t, p.cmd.Process.Pid), syscall.SIGTERM)
		p.wait(t, 10*time.Second)
		ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Fatalf("shim wait status %v, want killed by SIGTERM like its git", ws)
		}
		waitFor(t, 5*time.Second, "signaled outcome recorded", func() bool {
			return a.metric(`sluice_commands_total{cmd="git",outcome="signaled",subcmd="upload-pack"}`) == 1
		})
	})
}

// TestShimNeverFindsItself puts the shim first on PATH as "git" with no
// SLUICE_REAL_GIT and no git_bin: it must still run the real git.
func TestShimNeverFindsItself(t *testing.T) {
	a := newAgentDir(t) // no agent: the shim fails open
	env := baseEnv(a.dir)
	for i, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			env[i] = "PATH=" + a.shimBin + ":" + strings.TrimPrefix(e, "PATH=")
		}
	}
	env = append(env, "SLUICE_SOCKET="+a.socket, "SLUICE_SHIM_LOG="+a.shimLog)
	cmd := exec.Command("git", "--version")
	cmd.Env = env
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("shim as git on PATH did not finish: recursion?")
	}
	if err != nil || !strings.HasPrefix(string(out), "git version") {
		t.Fatalf("git --version via shim on PATH: %v %q", err, out)
	}
}
