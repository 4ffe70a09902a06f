package test

// guides_servers_test.go wires real servers exactly as packaging/README.md
// says — the system gitconfig line, the sshd_config block, the git daemon
// command — against a sluiced listening where every shim looks without
// SLUICE_SOCKET (/run/sluice/sluice.sock, a tmpfs of the tests' private
// view): no hidden extra environment. A clone through each must be
// admitted (upload-pack and pack-objects, with the client's address), run
// no git around the shim, and pass `sluice check`.

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// guideAgent starts sluiced on the default socket with the package
// installed and the README's hook line run as written; it needs the
// private view (privateroot_test.go) so that none of it touches the host.
func guideAgent(t *testing.T, socketGroup string) *agentProc {
	t.Helper()
	if !inPrivateRoot() {
		t.Skip("needs the tests' private mount namespace (root and overlayfs) to wire the host's /etc and /run/sluice as the guide says")
	}
	usePackage(t)
	hook := guideBlock(t, "<!-- guide:hook")
	if out, err := exec.Command("sh", "-e", "-c", hook).CombinedOutput(); err != nil {
		t.Fatalf("the guide's hook block: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("git", "config", "--system", "--unset-all", "include.path").Run() })
	a := newAgentDir(t)
	a.socket = "/run/sluice/sluice.sock"
	if socketGroup != "" {
		// What the unit's RuntimeDirectory (or a tmpfiles.d line) does:
		// /run/sluice belongs to the socket group.
		g, err := user.LookupGroup(socketGroup)
		if err != nil {
			t.Fatal(err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.MkdirAll(privateRunDir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(privateRunDir, 0, gid); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chown(privateRunDir, 0, 0) })
		a.agentExtra = fmt.Sprintf("socket_group = %q", socketGroup)
	}
	a.start(`
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = 4
max_queue_wait = "10s"

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "remote_ip"
max_per_key = 4
max_queue_wait = "10s"
`, "open")
	return a
}

// checkGuideClone asserts that the clone was admitted through the shim
// (upload-pack and pack-objects, keyed by the loopback client) and that the
// tracer saw no git run around it.
func checkGuideClone(t *testing.T, a *agentProc, user string) {
	t.Helper()
	waitFor(t, 10*time.Second, "upload-pack and pack-objects finished", func() bool {
		seen := map[any]bool{}
		for _, l := range a.LogLines("command finished") {
			seen[l["subcmd"]] = true
		}
		return seen["upload-pack"] && seen["pack-objects"]
	})
	for _, l := range a.LogLines("command finished") {
		if l["remote_ip"] != "127.0.0.1" || l["outcome"] != "ok" || (user != "" && l["user"] != user) {
			t.Errorf("admitted as %v", l)
		}
	}
	if lines := a.LogLines("git ran without admission: it bypassed the sluice shim"); len(lines) > 0 {
		t.Errorf("git ran around the shim: %v", lines)
	}
}

func TestGuideGitDaemonVerbatim(t *testing.T) {
	daemon := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(daemon); err != nil {
		t.Skipf("git daemon is not installed (%v): apt-get install git", err)
	}
	a := guideAgent(t, "")
	repos := filepath.Join(a.dir, "srv-git")
	os.MkdirAll(repos, 0o755)
	src := makeRepo(t, a.dir, "project", 3)
	git(t, a.dir, baseEnv(a.dir), "clone", "-q", "--bare", src, filepath.Join(repos, "project.git"))
	port := freePort(t)
	cmd := substitute(t, guideBlock(t, "<!-- guide:git-daemon"),
		"--base-path=/srv/git", "--base-path="+repos,
		"--export-all", "--export-all --listen=127.0.0.1 --port="+strconv.Itoa(port))
	d := startGroup(t, []string{"PATH=/usr/bin:/bin", "HOME=/root", "LANG=C"}, filepath.Join(a.dir, "daemon.log"), "sh", "-c", cmd)
	waitListening(t, port, "git daemon")
	git(t, a.dir, baseEnv(a.dir), "clone", "-q", fmt.Sprintf("git://127.0.0.1:%d/project.git", port), filepath.Join(a.dir, "clone"))
	checkGuideClone(t, a, "")
	out, err := exec.Command("/usr/bin/sluice", "check", "--socket", a.socket, "--config", filepath.Join(a.dir, "sluice.toml"),
		"--pid", strconv.Itoa(daemonPid(t, d.Process.Pid))).CombinedOutput()
	if err != nil || strings.Contains(string(out), "FAIL") {
		t.Errorf("sluice check of the guide's git daemon: %v\n%s", err, out)
	}
}

// daemonPid is git-daemon's pid under the shell that started it (sh -c
// usually execs it in place).
func daemonPid(t *testing.T, shell int) int {
	t.Helper()
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", shell)); filepath.Base(exe) == "git-daemon" {
		return shell
	}
	out, _ := exec.Command("pgrep", "-P", strconv.Itoa(shell), "git-daemon").Output()
	pid, err := strconv.Atoi(strings.TrimSpace(strings.Split(string(out), "\n")[0]))
	if err != nil {
		t.Fatalf("no git-daemon under pid %d", shell)
	}
	return pid
}

func TestGuideSSHDVerbatim(t *testing.T) {
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Skip("sshd is not installed (apt-get install openssh-server)")
	}
	if _, err := os.Stat("/usr/bin/git-shell"); err != nil {
		t.Skip("git-shell is not installed")
	}
	if !inPrivateRoot() {
		t.Skip("needs the tests' private mount namespace (root and overlayfs)")
	}
	u := gitUser(t)
	a := guideAgent(t, "git")
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for d := a.dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	repos := filepath.Join(a.dir, "srv-git")
	os.MkdirAll(repos, 0o755)
	src := makeRepo(t, a.dir, "project", 3)
	bare := filepath.Join(repos, "project.git")
	git(t, a.dir, baseEnv(a.dir), "clone", "-q", "--bare", src, bare)
	filepath.Walk(repos, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			os.Lchown(p, uid, gid)
		}
		return err
	})
	// The test's own settings first (a Match block must come last), then
	// the guide's block as written.
	srv := startSSHD(t, sshd, filepath.Join(a.dir, "sshd"), guideBlock(t, "<!-- guide:sshd"))
	dir, port := srv.dir, srv.port
	env := append(baseEnv(a.dir), "GIT_SSH_COMMAND="+srv.sshCmd)
	git(t, a.dir, env, "clone", "-q", fmt.Sprintf("ssh://git@127.0.0.1:%d%s", port, bare), filepath.Join(a.dir, "clone"))
	checkGuideClone(t, a, "git")
	pid, _ := os.ReadFile(filepath.Join(dir, "sshd.pid"))
	out, err := exec.Command("/usr/bin/sluice", "check", "--socket", a.socket, "--config", filepath.Join(a.dir, "sluice.toml"),
		"--pid", strings.TrimSpace(string(pid)), "--user", "git").CombinedOutput()
	if err != nil || strings.Contains(string(out), "FAIL") {
		t.Errorf("sluice check of the guide's sshd: %v\n%s", err, out)
	}
}
