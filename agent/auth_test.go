package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/policy"
)

func TestAdmitACLAllows(t *testing.T) {
	noGroups := func() ([]uint32, error) { t.Fatal("groups read although not needed"); return nil, nil }
	groups := func(g ...uint32) func() ([]uint32, error) {
		return func() ([]uint32, error) { return g, nil }
	}
	broken := func() ([]uint32, error) { return nil, errors.New("peer process exited") }
	tests := []struct {
		name   string
		acl    admitACL
		cred   PeerCred
		groups func() ([]uint32, error)
		want   error
	}{
		{"open", admitACL{open: true}, PeerCred{UID: 1000, GID: 1000}, noGroups, nil},
		{"root always", admitACL{uids: []uint32{7}}, PeerCred{UID: 0, GID: 0}, noGroups, nil},
		{"listed uid", admitACL{uids: []uint32{7, 1000}}, PeerCred{UID: 1000, GID: 1000}, noGroups, nil},
		{"unlisted uid, no groups configured", admitACL{uids: []uint32{7}}, PeerCred{UID: 1000, GID: 1000}, noGroups, errNotAllowed},
		{"primary gid", admitACL{gids: []uint32{50}}, PeerCred{UID: 1000, GID: 50}, noGroups, nil},
		{"supplementary gid", admitACL{gids: []uint32{50}}, PeerCred{UID: 1000, GID: 1000}, groups(4, 50), nil},
		{"no matching gid", admitACL{gids: []uint32{50}}, PeerCred{UID: 1000, GID: 1000}, groups(4, 51), errNotAllowed},
		{"groups unreadable", admitACL{gids: []uint32{50}}, PeerCred{UID: 1000, GID: 1000}, broken, errors.New("peer process exited")},
		// An unresolvable name leaves the lists empty but not open.
		{"names did not resolve", admitACL{}, PeerCred{UID: 1000, GID: 1000}, noGroups, errNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.acl.allows(tt.cred, tt.groups)
			if (err == nil) != (tt.want == nil) || (err != nil && err.Error() != tt.want.Error()) {
				t.Fatalf("allows = %v, want %v", err, tt.want)
			}
		})
	}
}

// admitHelperEnv makes the test binary act as a shim: see
// TestAdmitHelperProcess.
const admitHelperEnv = "SLUICE_ADMIT_TEST_HELPER"

// TestAdmitHelperProcess is not a test: run by TestAdmitPermission as
// another user, it asks for admission over the shim framing and over gRPC
// and prints both answers.
func TestAdmitHelperProcess(t *testing.T) {
	socket := os.Getenv(admitHelperEnv)
	if socket == "" {
		t.Skip("helper process for TestAdmitPermission only")
	}
	c, err := shimproto.Dial(socket, time.Second)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(3)
	}
	// worker_pid names another process (pid 1): it must change nothing.
	rep, err := c.Admit(&shimproto.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte("/srv/helper.git"), WorkerPID: 1},
		time.Now().Add(10*time.Second), nil)
	switch {
	case err != nil:
		fmt.Println("shim:", err)
	case rep.Admitted:
		fmt.Println("shim: admitted")
	default:
		fmt.Printf("shim: rejected %d: %s\n", rep.Reason, rep.Message)
	}
	c.Close()
	cc := grpcClientNoT(socket)
	defer cc.Close()
	fmt.Println("grpc:", grpcAdmitOnce(cc))
	os.Exit(0)
}

// TestAdmitPermission runs shims as uid 65534 with various groups against
// a real agent with [agent] admit_users / admit_groups.
func TestAdmitPermission(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid (setuid in the child)")
	}
	bin := filepath.Join(t.TempDir(), "agent.test")
	copyFile(t, os.Args[0], bin)
	for _, d := range []string{filepath.Dir(bin), filepath.Dir(filepath.Dir(bin))} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const denied = `rejected 5: sluice: permission denied: uid 65534 (gid %d) may not ask for admission ([agent] admit_users / admit_groups in test.toml); add the Git server's user or group there`
	tests := []struct {
		name   string
		agent  string
		gid    uint32
		groups []uint32
		denied bool
	}{
		{"no lists: anyone with socket access", ``, 65534, nil, false},
		{"uid not listed", `admit_users = ["4000", "root"]`, 65534, nil, true},
		{"uid listed by number", `admit_users = ["4000", "65534"]`, 65534, nil, false},
		{"uid listed by name", `admit_users = ["nobody"]`, 65534, nil, false},
		{"primary gid listed", `admit_groups = ["4242"]`, 4242, nil, false},
		{"supplementary gid listed", `admit_groups = ["4242"]`, 65534, []uint32{4243, 4242}, false},
		{"no gid listed", `admit_groups = ["4242"]`, 65534, []uint32{4243}, true},
		{"unknown group name matches nobody", `admit_groups = ["no-such-group-sluice"]`, 65534, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, sock := startTestAgent(t, "[agent]\n"+tt.agent+"\n"+testPolicy)
			for _, d := range []string{filepath.Dir(sock), filepath.Dir(filepath.Dir(sock))} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(sock, 0o666); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "-test.run=^TestAdmitHelperProcess$")
			cmd.Env = []string{admitHelperEnv + "=" + sock, "PATH=/usr/bin:/bin"}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: tt.gid, Groups: tt.groups}}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			got := string(out)
			if !tt.denied {
				if !strings.Contains(got, "shim: admitted") || !strings.Contains(got, "grpc: admitted") {
					t.Fatalf("want admitted over both protocols:\n%s", got)
				}
				return
			}
			want := fmt.Sprintf(denied, tt.gid)
			if !strings.Contains(got, "shim: "+want) || !strings.Contains(got, "grpc: "+want) {
				t.Fatalf("got:\n%s\nwant on both protocols: %s", got, want)
			}
			// Nothing was queued or leased for a refused caller.
			if st := a.Limiters()[0]; st.Admitted != 0 || st.Keys != 0 {
				t.Fatalf("a refused request reached the limiter: %+v", st)
			}
		})
	}
}

// TestWorkerPIDIgnored sends worker_pid naming a live process that is not
// the caller: placement and the lease table use the peer's pid only.
func TestWorkerPIDIgnored(t *testing.T) {
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Skipf("cannot start a second process (sleep): %v", err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	fp := &fakePlacer{}
	a, sock := startTestAgentOpts(t, testPolicy, Options{Placer: fp})
	c := rawShim(t, sock, admitFrame(t, &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack",
		Repo: []byte("/srv/w.git"), WorkerPid: int32(other.Process.Pid)}))
	if m := readFinal(t, c); m.GetAdmitted() == nil {
		t.Fatalf("not admitted: %v", m)
	}
	fp.mu.Lock()
	placed := append([][2]int(nil), fp.placed...)
	fp.mu.Unlock()
	if len(placed) != 1 || placed[0][0] != os.Getpid() {
		t.Fatalf("placed %v, want only our pid %d (worker_pid %d must be ignored)", placed, os.Getpid(), other.Process.Pid)
	}
	st := a.Status()
	if len(st.Leases) != 1 || st.Leases[0].Pid != int32(os.Getpid()) {
		t.Fatalf("status leases %v, want one with pid %d", st.Leases, os.Getpid())
	}
}

// TestAdmitListsApplyOnReload narrows admit_users by a reload and checks
// the next request from the same caller is refused, and that the reload
// reports the change.
func TestAdmitListsApplyOnReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.toml")
	if err := os.WriteFile(path, []byte(testPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: mustLoad(t, path), ConfigPath: path})
	// A caller as the kernel would describe uid 65534 (no groups are
	// configured, so /proc is not read).
	self := PeerCred{PID: int32(os.Getpid()), UID: 65534, GID: 65534, pidfd: -1}
	if m := a.authorizeAdmit(self); m != nil {
		t.Fatalf("open policy refused: %v", m)
	}
	if err := os.WriteFile(path, []byte("[agent]\nadmit_users = [\"0\"]\n"+testPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	resp := a.Reload()
	if !resp.Applied || !strings.Contains(strings.Join(resp.Changes, "\n"), "admit_users [] -> [0]") {
		t.Fatalf("reload: %+v", resp)
	}
	if m := a.authorizeAdmit(self); m.GetRejected().GetReason() != admitpb.RejectReason_REJECT_REASON_PERMISSION {
		t.Fatalf("after narrowing: %v, want a permission rejection", m)
	}
}

func mustLoad(t *testing.T, path string) *policy.Config {
	t.Helper()
	c, err := policy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAccessChanges(t *testing.T) {
	old := policy.Agent{MaxConnections: 10, AdmitUsers: []string{}}
	cfg := policy.Agent{MaxConnections: 20, AdmitUsers: []string{"git"}, AdmitGroups: []string{"www-data", "1001"}}
	got := strings.Join(accessChanges(&old, &cfg), "; ")
	// The per-uid cap follows max_connections when unset.
	want := "admit_users [] -> [git]; admit_groups [] -> [www-data, 1001]; max_connections 10 -> 20; max_connections_per_uid 2 -> 5"
	if got != want {
		t.Fatalf("accessChanges = %q, want %q", got, want)
	}
}
