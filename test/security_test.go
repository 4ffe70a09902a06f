package test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shimAs runs the shim as git-upload-pack under uid 65534 with the given
// groups, with /bin/true standing in for the real git, and returns its
// exit code and stderr.
func shimAs(t *testing.T, a *agentProc, gid uint32, groups []uint32) (int, string) {
	t.Helper()
	dir := t.TempDir()
	shim := filepath.Join(dir, "git-upload-pack")
	copyExecutable(t, bins.shim, shim)
	for _, d := range []string{dir, filepath.Dir(dir), a.dir, filepath.Dir(a.dir), filepath.Dir(a.socket)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(a.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(shim, "/srv/security.git")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "SLUICE_SOCKET=" + a.socket, "SLUICE_REAL_GIT=/bin/true",
		"SLUICE_SHIM_LOG=/dev/null"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: gid, Groups: groups}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run shim as uid 65534: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// TestShimAdmitPermission runs the real shim as uid 65534 against an agent
// with admit_users / admit_groups: a refusal is a rejection (exit 75, one
// "sluice: permission denied" line) whatever the fail mode, never a
// fail-over; an allowed caller runs git.
func TestShimAdmitPermission(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the shim as another uid")
	}
	rules := uploadPackRule
	for _, tt := range []struct {
		name, agent, mode string
		gid               uint32
		groups            []uint32
		allowed           bool
	}{
		{"user not listed, fail open", `admit_users = ["root"]`, "open", 65534, nil, false},
		{"user not listed, fail closed", `admit_users = ["root"]`, "closed", 65534, nil, false},
		{"group not held", `admit_groups = ["4242"]`, "open", 65534, []uint32{4243}, false},
		{"supplementary group", `admit_groups = ["4242"]`, "closed", 65534, []uint32{4243, 4242}, true},
		{"user listed", `admit_users = ["65534"]`, "closed", 65534, nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newAgentDir(t)
			a.agentExtra = tt.agent
			a.start(rules, tt.mode)
			code, stderr := shimAs(t, a, tt.gid, tt.groups)
			if tt.allowed {
				if code != 0 || stderr != "" {
					t.Fatalf("allowed caller: exit %d, stderr %q; want git (/bin/true) to run", code, stderr)
				}
				return
			}
			want := regexp.MustCompile("^" + regexp.QuoteMeta(fmt.Sprintf("sluice: permission denied: uid 65534 (gid %d) may not ask for admission ([agent] admit_users / admit_groups in %s); add the Git server's user or group there",
				tt.gid, filepath.Join(a.dir, "sluice.toml"))) + ` \(correlation id [0-9a-f]{16}\)\n$`)
			if code != 75 || !want.MatchString(stderr) {
				t.Fatalf("refused caller: exit %d, stderr %q; want exit 75 and %s", code, stderr, want)
			}
			if v := a.metric(`sluice_commands_total{cmd="git",outcome="rejected",subcmd="denied"}`); v != 1 {
				t.Errorf("rejections counted: %v, want 1", v)
			}
		})
	}
}

// TestMaxConnectionsShim fills [agent] max_connections with held clones and
// checks what one more shim does: it is refused with exit 75 and a sluice:
// line naming max_connections under fail_mode open and closed alike (a
// saturated agent never turns into git without a lease); it is counted.
func TestMaxConnectionsShim(t *testing.T) {
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			a := newAgentDir(t)
			a.agentExtra = "max_connections = 2"
			a.start(uploadPackRule, mode)
			repo := makeRepo(t, a.dir, "r", 2)
			other := makeRepo(t, a.dir, "o", 2)
			h1, h2 := holdUploadPack(t, a, repo), holdUploadPack(t, a, other)
			<-h1.first
			<-h2.first
			code, out := cloneVia(t, a, repo, filepath.Join(a.dir, "clone"))
			if code == 0 || !strings.Contains(out, "sluice: the admission service is at its connection limit ([agent] max_connections = 2") {
				t.Fatalf("clone over max_connections (fail_mode %s): exit %d\n%s\nshim log: %s", mode, code, out, readFile(a.shimLog))
			}
			m := a.scrape()
			if m[`sluice_connections_rejected_total{reason="max_connections"}`] != 1 || m["sluice_connections"] != 2 {
				t.Errorf("sluice_connections %v, sluice_connections_rejected_total{reason=\"max_connections\"} %v; want 2 and 1", m["sluice_connections"], m[`sluice_connections_rejected_total{reason="max_connections"}`])
			}
			h1.release()
			h2.release()
			h1.wait(t, 10*time.Second)
			h2.wait(t, 10*time.Second)
			waitFor(t, 10*time.Second, "connections closed", func() bool { return a.metric("sluice_connections") == 0 })
		})
	}
}

// TestAgentSurvivesFDExhaustion lowers sluiced's file descriptor limit
// while it runs and connects more clients than it can accept: accept fails
// with EMFILE, and the agent must keep running and serve again once the
// clients are gone, instead of stopping.
func TestAgentSurvivesFDExhaustion(t *testing.T) {
	a := startAgent(t, uploadPackRule, "open")
	pid := a.Pid()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Skipf("cannot read sluiced's fds: %v", err)
	}
	lim := &unix.Rlimit{Cur: uint64(len(ents) + 8), Max: uint64(len(ents) + 8)}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, lim, nil); err != nil {
		t.Skipf("prlimit(RLIMIT_NOFILE) on sluiced: %v (needs CAP_SYS_RESOURCE)", err)
	}
	var conns []net.Conn
	for range 40 {
		c, err := net.DialTimeout("unix", a.socket, time.Second)
		if err != nil {
			break // the listen backlog is full: enough
		}
		conns = append(conns, c)
	}
	waitFor(t, 10*time.Second, "accept to fail with EMFILE", func() bool {
		return strings.Contains(a.Logs(), "accept failed; retrying") && strings.Contains(a.Logs(), "too many open files")
	})
	for _, c := range conns {
		c.Close()
	}
	select {
	case <-a.Done():
		t.Fatalf("sluiced exited when it ran out of file descriptors: %v\n%s", a.ExitErr(), a.Logs())
	default:
	}
	repo := makeRepo(t, a.dir, "r", 2)
	waitFor(t, 15*time.Second, "a lease-holding clone after the storm", func() bool {
		before := a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`)
		code, out := cloneVia(t, a, repo, filepath.Join(a.dir, fmt.Sprintf("clone-%d", time.Now().UnixNano())))
		if code != 0 {
			t.Fatalf("clone after fd exhaustion: exit %d\n%s", code, out)
		}
		return a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`) == before+1
	})
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// TestOddEnvironmentNeverRejects clones with a CORRELATION_ID and a user
// name beyond the agent's bounds (too long, control characters, invalid
// UTF-8): the shim clamps them, so the clone is admitted, not refused as
// an invalid request.
func TestOddEnvironmentNeverRejects(t *testing.T) {
	a := startAgent(t, uploadPackRule, "closed")
	repo := makeRepo(t, a.dir, "r", 2)
	cmd := exec.Command(bins.realGit, "clone", "-q", "--upload-pack="+filepath.Join(a.shimBin, "git-upload-pack"), "file://"+repo, filepath.Join(a.dir, "clone"))
	cmd.Env = a.env("CORRELATION_ID="+strings.Repeat("id\x01", 200), "REMOTE_USER="+strings.Repeat("\xffu", 400))
	cmd.Dir = a.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("clone with an odd environment: %v\n%s", err, out)
	}
	if v := a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`); v != 1 {
		t.Fatalf("the clone was not admitted under its rule (ok count %v)\n%s", v, a.Logs())
	}
}
