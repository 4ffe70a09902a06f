package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sluicehq/sluice/internal/procfs"
)

func TestKindOf(t *testing.T) {
	for _, tt := range []struct {
		exe     string
		cmdline []string
		want    string
	}{
		{"/usr/sbin/sshd", []string{"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"}, kindSSHD},
		{"/usr/lib/git-core/git-daemon", []string{"/usr/lib/git-core/git-daemon", "--export-all"}, kindDaemon},
		{"/usr/bin/git", []string{"git", "daemon", "--export-all"}, kindDaemon},
		{"/usr/bin/git", []string{"git", "upload-pack", "."}, kindOther},
		{"/usr/sbin/fcgiwrap", []string{"/usr/sbin/fcgiwrap", "-c", "4"}, kindHTTP},
		{"/usr/local/bin/gitea", []string{"gitea", "web"}, kindGitea},
		{"/usr/bin/forgejo", []string{"forgejo", "web"}, kindGitea},
		{"/usr/sbin/nginx", []string{"nginx: master process"}, kindOther},
	} {
		if got := kindOf(tt.exe, tt.cmdline); got != tt.want {
			t.Errorf("kindOf(%s, %q) = %q, want %q", tt.exe, tt.cmdline, got, tt.want)
		}
	}
}

func TestGitShellUsers(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "passwd"), []byte("root:x:0:0:root:/root:/bin/bash\ngit:x:999:999::/srv/git:/usr/bin/git-shell\nbad line\nmirror:x:1001:1001::/srv:/usr/lib/git-core/git-shell\n"), 0o644)
	if got := gitShellUsers(filepath.Join(dir, "passwd")); !slices.Equal(got, []string{"git", "mirror"}) {
		t.Errorf("gitShellUsers = %q", got)
	}
}

// TestProcServer describes the git daemon of the procfs fixture tree: its
// effective uid and gid, its groups and its environment.
func TestProcServer(t *testing.T) {
	proc := procfs.FS{Root: filepath.Join("..", "..", "internal", "procfs", "testdata", "proc")}
	got, err := procServer(proc, 4242, "")
	if err != nil || len(got) != 1 {
		t.Fatalf("procServer = %v, %v", got, err)
	}
	s := got[0]
	if s.kind != kindDaemon || s.uid != 998 || s.gid != 997 || !slices.Equal(s.groups, []uint32{4, 24, 997}) ||
		s.env["GIT_EXEC_PATH"] != "/usr/lib/sluice/git-core" || s.envFrom != "/proc/4242/environ" {
		t.Errorf("procServer(4242) = %+v", s)
	}
	if _, err := procServer(proc, 4300, ""); err == nil {
		t.Error("a process without an exe link: no error")
	}
}

// TestServerChecksFailBrokenEnv: the environment mistakes of the first hour
// FAIL, each with the fix for that kind of server.
func TestServerChecksFailBrokenEnv(t *testing.T) {
	dir := t.TempDir()
	shim := filepath.Join(dir, "sluice-shim")
	os.WriteFile(shim, []byte("#!/bin/sh\n"), 0o755)
	bin, core := filepath.Join(dir, "bin"), filepath.Join(dir, "git-core")
	for _, d := range []string{bin, core} {
		os.Mkdir(d, 0o755)
		for _, n := range serverCommands {
			os.Symlink(shim, filepath.Join(d, n))
		}
	}
	env := checkEnv{shim: shim}
	good := &gitServer{kind: kindSSHD, user: "git", env: map[string]string{"PATH": bin + ":/usr/bin", "GIT_EXEC_PATH": core}, envFrom: "test"}
	if r := checkServerPath(env, good); r.status != checkOK {
		t.Errorf("good PATH: %+v", r)
	}
	if r := checkServerExecPath(env, good); r.status != checkOK {
		t.Errorf("good GIT_EXEC_PATH: %+v", r)
	}
	noExec := &gitServer{kind: kindSSHD, user: "git", env: map[string]string{"PATH": bin + ":/usr/bin"}, envFrom: "test"}
	if r := checkServerExecPath(env, noExec); r.status != checkFail || r.fix == "" {
		t.Errorf("sshd without GIT_EXEC_PATH: %+v", r)
	}
	wrongExec := &gitServer{kind: kindDaemon, env: map[string]string{"PATH": bin, "GIT_EXEC_PATH": "/usr/lib/git-core"}, envFrom: "test"}
	if r := checkServerExecPath(env, wrongExec); r.status != checkFail {
		t.Errorf("git daemon with git's own exec path: %+v", r)
	}
	noPath := &gitServer{kind: kindDaemon, env: map[string]string{"PATH": "/usr/bin:/bin", "GIT_EXEC_PATH": core}, envFrom: "test"}
	if r := checkServerPath(env, noPath); r.status != checkFail {
		t.Errorf("PATH without the shim: %+v", r)
	}
	unknown := &gitServer{kind: kindHTTP, envFrom: "unknown"}
	if r := checkServerExecPath(env, unknown); r.status != checkWarn {
		t.Errorf("fcgiwrap without --env: %+v, want WARN (not OK)", r)
	}
	gitea := &gitServer{kind: kindGitea, env: map[string]string{"PATH": "/usr/bin"}}
	if r := checkServerExecPath(env, gitea); r.status != checkSkip {
		t.Errorf("gitea exec path: %+v", r)
	}
}
