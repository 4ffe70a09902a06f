package test

// keys_test.go: the keys a request is limited by are the ones git's view
// gives — one repository key for every spelling of its path, and the
// client's own address even when git daemon inherited an ssh login's
// SSH_CONNECTION.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestRepoKeySpellings runs the real shim as git-upload-pack with one
// repository written six ways and checks the agent admitted all six under
// one key: the real path.
func TestRepoKeySpellings(t *testing.T) {
	a := startAgent(t, `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = 10
max_queue_wait = "10s"
`, "open")
	root := filepath.Join(a.dir, "keys")
	repo := makeRepo(t, a.dir, "key", 1)
	real := filepath.Join(root, "srv", "git", "key.git")
	os.MkdirAll(filepath.Dir(real), 0o755)
	git(t, a.dir, baseEnv(a.dir), "clone", "-q", "--bare", repo, real)
	real, _ = filepath.EvalSymlinks(real)
	os.MkdirAll(filepath.Join(root, "deep", "er"), 0o755)
	os.Symlink(filepath.Join(root, "srv", "git"), filepath.Join(root, "link"))
	os.Symlink(filepath.Join(root, "srv", "git"), filepath.Join(root, "deep", "er", "via"))
	os.Symlink(filepath.Join(root, "srv", "git"), filepath.Join(root, "home"))
	shim := filepath.Join(a.shimBin, "git-upload-pack")
	spellings := [][]string{
		{shim, real},
		{shim, filepath.Join(root, "link", "key.git")},
		{shim, filepath.Join(root, "link", "key")},
		{shim, root + "/deep/er/via/../git/key.git"},
		{shim, "~/key.git"},
		{filepath.Join(a.shimBin, "git"), "upload-pack", real, "--timeout", "30"},
	}
	for i, argv := range spellings {
		cmd := exec.Command(argv[0], append(argv[1:], "--advertise-refs")...)
		cmd.Dir = "/"
		cmd.Env = a.env("HOME="+filepath.Join(root, "home"), "CORRELATION_ID=spelling-"+strconv.Itoa(i))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%q: %v\n%s", argv, err, out)
		}
	}
	for _, l := range a.waitLogLines(t, "command finished", len(spellings)) {
		if id, _ := l["correlation_id"].(string); strings.HasPrefix(id, "spelling-") && l["repo"] != real {
			n, _ := strconv.Atoi(strings.TrimPrefix(id, "spelling-"))
			t.Errorf("%q: admitted under repo key %v, want %s", spellings[n], l["repo"], real)
		}
	}
}

// TestDaemonInheritedSSHConnection starts git daemon with the
// SSH_CONNECTION of an operator's login in its environment: clients from
// two loopback addresses must still get their own keys (REMOTE_ADDR wins).
func TestDaemonInheritedSSHConnection(t *testing.T) {
	socat, err := exec.LookPath("socat")
	if err != nil {
		t.Skip("socat is not installed (apt-get install socat): needed for distinct client addresses")
	}
	s := startDaemonSetupEnv(t, `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "remote_ip"
max_per_key = 10
max_queue_wait = "10s"
`, "", false, 4096, []string{"SSH_CONNECTION=198.51.100.77 50000 198.51.100.1 22", "SSH_CLIENT=198.51.100.77 50000 22"})
	url := fmt.Sprintf("git://127.0.0.1:%d/project.git", s.port)
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		proxy := filepath.Join(s.client, "proxy-"+src)
		script := fmt.Sprintf("#!/bin/sh\nexec %s -t 300 - TCP:$1:$2,bind=%s\n", socat, src)
		if err := os.WriteFile(proxy, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		git(t, s.client, append(baseEnv(s.client), "GIT_PROXY_COMMAND="+proxy), "ls-remote", url)
	}
	seen := map[any]bool{}
	for _, l := range s.a.waitLogLines(t, "command finished", 2) {
		seen[l["remote_ip"]] = true
	}
	if !seen["127.0.0.2"] || !seen["127.0.0.3"] || seen["198.51.100.77"] {
		t.Errorf("remote_ip keys seen: %v; want 127.0.0.2 and 127.0.0.3, never the inherited ssh address", seen)
	}
}
