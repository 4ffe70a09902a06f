package test

// security_shim_test.go plays a local attacker against the real shim
// (issue 14, property 1): an unprivileged user plants shim.conf — whose
// git_bin is the binary the shim executes — wherever a shim used to look or
// next to a socket it is pointed at, and a "Git server" user runs the shim.
// The attacker's binary (a script that leaves a marker file) must never run.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// shimsecUser creates an unprivileged user (and its group) for the test
// (users_test.go).
func shimsecUser(t *testing.T, role string) (uid, gid int, name string) {
	t.Helper()
	u := newTestUser(t, role)
	return int(u.uid), int(u.gid), u.name
}

// shimsecLab is a directory every test user can reach: the shim copied in
// as git and git-upload-pack, a stand-in real git on PATH that leaves a
// marker, and a world-writable marker directory.
type shimsecLab struct {
	dir     string
	bin     string // shim copies
	markers string
	log     string // SLUICE_SHIM_LOG
	evil    string // the attacker's "git": leaves markers/evil
}

func newShimsecLab(t *testing.T) *shimsecLab {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-shimsec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l := &shimsecLab{dir: dir, bin: filepath.Join(dir, "bin"), markers: filepath.Join(dir, "markers"), log: filepath.Join(dir, "shim.log")}
	os.Chmod(dir, 0o755)
	os.Mkdir(l.bin, 0o755)
	os.Mkdir(l.markers, 0o777)
	os.Chmod(l.markers, 0o777)
	os.Mkdir(filepath.Join(dir, "realbin"), 0o755)
	copyExecutable(t, bins.shim, filepath.Join(l.bin, "git-upload-pack"))
	copyExecutable(t, bins.shim, filepath.Join(l.bin, "git"))
	script := "#!/bin/sh\n: > " + filepath.Join(l.markers, "real") + "\nexit 0\n"
	if err := os.WriteFile(filepath.Join(dir, "realbin", "git"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.log, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(l.log, 0o666)
	return l
}

// plantEvil writes the attacker's binary into dir (owned by uid) and a
// shim.conf there pointing at it, fail_mode open, matching upload-pack.
func (l *shimsecLab) plantEvil(t *testing.T, dir string, uid, gid int, mode os.FileMode) {
	t.Helper()
	l.evil = filepath.Join(dir, "evil")
	script := "#!/bin/sh\n: > " + filepath.Join(l.markers, "evil") + "\nexit 0\n"
	if err := os.WriteFile(l.evil, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "shim.conf")
	if err := os.WriteFile(conf, []byte("version=1\nfail_mode=open\ngit_bin="+l.evil+"\nmatch=upload-pack\n"), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(conf, mode)
	for _, p := range []string{l.evil, conf} {
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}

type shimsecRun struct {
	code            int
	stderr          string
	evilRan, gitRan bool
}

// run runs the shim copy name with args as uid/gid and reports what ran.
func (l *shimsecLab) run(t *testing.T, uid, gid int, env []string, name string, args ...string) shimsecRun {
	t.Helper()
	os.Remove(filepath.Join(l.markers, "evil"))
	os.Remove(filepath.Join(l.markers, "real"))
	cmd := exec.Command(filepath.Join(l.bin, name), args...)
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=" + filepath.Join(l.dir, "realbin") + ":/usr/bin:/bin", "HOME=/nonexistent", "SLUICE_SHIM_LOG=" + l.log}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run shim as uid %d: %v", uid, err)
	}
	r := shimsecRun{code: cmd.ProcessState.ExitCode(), stderr: stderr.String()}
	_, err = os.Stat(filepath.Join(l.markers, "evil"))
	r.evilRan = err == nil
	_, err = os.Stat(filepath.Join(l.markers, "real"))
	r.gitRan = err == nil
	return r
}

// TestShimIgnoresOldFallbackPlaces: the attacker plants shim.conf (and its
// binary) in /tmp/sluice-<uid of the Git server> and in the Git server's
// $XDG_RUNTIME_DIR/sluice, the places shims used to look without
// SLUICE_SOCKET. The Git server's shim, matched or not, must never run it.
func TestShimIgnoresOldFallbackPlaces(t *testing.T) {
	attUID, attGID, _ := shimsecUser(t, "att")
	gitUID, gitGID, _ := shimsecUser(t, "git")
	l := newShimsecLab(t)

	tmpDir := "/tmp/sluice-" + strconv.Itoa(gitUID)
	if _, err := os.Lstat(tmpDir); err == nil {
		t.Fatalf("%s exists already; remove it", tmpDir)
	}
	if err := os.Mkdir(tmpDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmpDir) })
	os.Chown(tmpDir, attUID, attGID)
	l.plantEvil(t, tmpDir, attUID, attGID, 0o644)

	// An XDG_RUNTIME_DIR the attacker can write into (a shared runtime
	// directory); the old code read $XDG_RUNTIME_DIR/sluice/shim.conf.
	xdg := filepath.Join(l.dir, "xdg")
	os.Mkdir(xdg, 0o777)
	syscall.Chmod(xdg, 0o1777)
	xdgSluice := filepath.Join(xdg, "sluice")
	os.Mkdir(xdgSluice, 0o755)
	os.Chown(xdgSluice, attUID, attGID)
	evilTmp := l.evil
	l.plantEvil(t, xdgSluice, attUID, attGID, 0o644)
	evilXDG := l.evil
	_, rootSocketErr := os.Stat(filepath.Dir("/run/sluice/sluice.sock"))

	for _, env := range [][]string{nil, {"XDG_RUNTIME_DIR=" + xdg}} {
		for _, argv := range [][]string{{"git-upload-pack", "/srv/none.git"}, {"git", "version"}} {
			r := l.run(t, gitUID, gitGID, env, argv[0], argv[1:]...)
			if r.evilRan {
				t.Fatalf("env %q, %v: the attacker's git_bin (%s or %s) ran as the Git server's user", env, argv, evilTmp, evilXDG)
			}
			// With no agent installed the shim fails open to the real git.
			if rootSocketErr != nil && (!r.gitRan || r.code != 0) {
				t.Errorf("env %q, %v: exit %d, real git ran %v, stderr %q; want the real git (no agent installed: fail open)", env, argv, r.code, r.gitRan, r.stderr)
			}
		}
	}
}

// TestShimRefusesUntrustedConfig: SLUICE_SOCKET points at a directory, and
// the attacker controls shim.conf there (owns it, or it or the directory is
// writable by others, or owns the directory). The shim fails closed for a
// matched command without running either git, with one "sluice:" line
// naming the path, owner and mode; an unmatched command runs the real git.
func TestShimRefusesUntrustedConfig(t *testing.T) {
	attUID, attGID, attName := shimsecUser(t, "att")
	gitUID, gitGID, _ := shimsecUser(t, "git")
	for _, tt := range []struct {
		name     string
		dirOwner int // -1: root
		dirMode  uint32
		confUID  int // -1: root
		confMode os.FileMode
		want     []string // in the sluice: line; RUN is the directory
	}{
		{"shim.conf owned by the attacker", -1, 0o755, attUID, 0o644,
			[]string{"not trusting RUN/shim.conf", fmt.Sprintf("owner uid %d (%s)", attUID, attName), "mode 0644"}},
		{"shim.conf world-writable", -1, 0o755, -1, 0o666,
			[]string{"not trusting RUN/shim.conf", "owner uid 0 (root)", "mode 0666"}},
		{"shim.conf group-writable", -1, 0o755, -1, 0o664,
			[]string{"not trusting RUN/shim.conf", "mode 0664"}},
		{"directory world-writable like /tmp", -1, 0o1777, attUID, 0o644,
			[]string{"not trusting RUN:", "owner uid 0 (root)", "mode 1777"}},
		{"directory owned by the attacker", attUID, 0o755, attUID, 0o644,
			[]string{"not trusting RUN:", fmt.Sprintf("owner uid %d (%s)", attUID, attName)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newShimsecLab(t)
			run := filepath.Join(l.dir, "run")
			os.Mkdir(run, 0o755)
			syscall.Chmod(run, tt.dirMode)
			if tt.dirOwner >= 0 {
				os.Chown(run, tt.dirOwner, attGID)
			}
			uid, gid := 0, 0
			if tt.confUID >= 0 {
				uid, gid = tt.confUID, attGID
			}
			l.plantEvil(t, run, uid, gid, tt.confMode)
			env := []string{"SLUICE_SOCKET=" + filepath.Join(run, "sluice.sock")}
			r := l.run(t, gitUID, gitGID, env, "git-upload-pack", "/srv/none.git")
			if r.evilRan {
				t.Fatalf("the attacker's git_bin ran as the Git server's user (stderr %q)", r.stderr)
			}
			if r.gitRan || r.code != 75 {
				t.Fatalf("matched command: exit %d, git ran %v; want exit 75 without git (an untrusted shim.conf fails closed)\nstderr: %s", r.code, r.gitRan, r.stderr)
			}
			if n := strings.Count(r.stderr, "\n"); n != 1 || !strings.HasPrefix(r.stderr, "sluice: ") {
				t.Errorf("want one sluice: line, got %q", r.stderr)
			}
			for _, w := range tt.want {
				if w = strings.ReplaceAll(w, "RUN", run); !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			r = l.run(t, gitUID, gitGID, env, "git", "version")
			if r.evilRan || !r.gitRan || r.code != 0 {
				t.Errorf("unmatched command: exit %d, evil ran %v, real git ran %v; want the real git only\nstderr: %s", r.code, r.evilRan, r.gitRan, r.stderr)
			}
			if log := readFile(l.log); !strings.Contains(log, "not trusting "+run) {
				t.Errorf("shim log lacks the warning:\n%s", log)
			}
		})
	}
}

// TestShimPermissionDenied: a real agent whose socket directory (0750) or
// socket (0660) the Git server's user may not open because it is not in the
// socket group. The message says "permission denied" and names the group
// to join, not "no such file"; fail_mode closed holds even though the shim
// cannot read shim.conf (the directory's sticky bit carries it), and with
// the agent stopped and shim.conf unreadable the shim still fails closed.
func TestShimPermissionDenied(t *testing.T) {
	gitUID, gitGID, _ := shimsecUser(t, "git")
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			// run/ exists before the agent, as systemd's RuntimeDirectory
			// makes it: a clean stop then leaves shim.conf for the shims.
			a := newAgentDir(t)
			run := filepath.Dir(a.socket)
			if err := os.Mkdir(run, 0o750); err != nil {
				t.Fatal(err)
			}
			a.start(uploadPackRule, mode)
			l := newShimsecLab(t)
			for d := a.dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
				os.Chmod(d, 0o755)
			}
			// The real git of shim.conf ([git] bin) would not leave a marker.
			env := []string{"SLUICE_SOCKET=" + a.socket, "SLUICE_REAL_GIT=" + filepath.Join(l.dir, "realbin", "git")}
			check := func(what string, wantDenied string) {
				t.Helper()
				os.Truncate(l.log, 0)
				r := l.run(t, gitUID, gitGID, env, "git-upload-pack", "/srv/none.git")
				msg := r.stderr
				if mode == "open" {
					if r.code != 0 || !r.gitRan {
						t.Fatalf("%s, fail_mode open: exit %d, git ran %v, stderr %q; want git to run", what, r.code, r.gitRan, r.stderr)
					}
					msg = readFile(l.log)
				} else if r.code != 75 || r.gitRan {
					t.Fatalf("%s, fail_mode closed: exit %d, git ran %v, stderr %q; want exit 75 without git", what, r.code, r.gitRan, r.stderr)
				} else if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "sluice: ") {
					t.Errorf("%s: want one sluice: line, got %q", what, r.stderr)
				}
				for _, w := range []string{wantDenied, "add the Git server's user to the socket's group gid 0 (root) ([agent] socket_group)"} {
					if !strings.Contains(msg, w) {
						t.Errorf("%s: message %q lacks %q", what, msg, w)
					}
				}
				if strings.Contains(msg, "no such file") {
					t.Errorf("%s: message says no such file: %q", what, msg)
				}
			}
			// run/ is 0750 root:root: not searchable for the Git server.
			check("socket directory 0750", "permission denied opening "+run)
			// Directory searchable, socket 0660 root:root (os.Chmod would
			// clear the sticky bit that carries fail_mode).
			var st syscall.Stat_t
			syscall.Stat(run, &st)
			syscall.Chmod(run, st.Mode&0o7777|0o755)
			check("socket 0660", "permission denied connecting as uid "+strconv.Itoa(gitUID))
			// Agent stopped, shim.conf unreadable: the shim cannot read
			// fail_mode from it and must not default to open.
			a.stop()
			os.Chmod(filepath.Join(run, "shim.conf"), 0o600)
			r := l.run(t, gitUID, gitGID, env, "git-upload-pack", "/srv/none.git")
			if mode == "closed" && (r.code != 75 || r.gitRan) {
				t.Fatalf("agent stopped, shim.conf unreadable, fail_mode closed: exit %d, git ran %v, stderr %q; want exit 75 without git", r.code, r.gitRan, r.stderr)
			}
			if mode == "open" && (r.code != 0 || !r.gitRan) {
				t.Fatalf("agent stopped, shim.conf unreadable, fail_mode open: exit %d, git ran %v, stderr %q; want git", r.code, r.gitRan, r.stderr)
			}
			if log := readFile(l.log); !strings.Contains(log, "permission denied reading "+filepath.Join(run, "shim.conf")) && !strings.Contains(r.stderr, "sluice: ") {
				t.Errorf("no word on the unreadable shim.conf: stderr %q, log %q", r.stderr, log)
			}
		})
	}
}
