package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/internal/procfs"
)

func TestAuthorize(t *testing.T) {
	lookup := func(name string) (uint32, error) {
		if name == "sluice-admin" {
			return 900, nil
		}
		return lookupGroupID(name)
	}
	groups := func(g ...uint32) func(int32) ([]uint32, error) {
		return func(int32) ([]uint32, error) { return g, nil }
	}
	broken := func(int32) ([]uint32, error) { return nil, errors.New("gone") }
	tests := []struct {
		name   string
		cred   PeerCred
		group  string
		groups func(int32) ([]uint32, error)
		want   string // "" allowed, "deny" errNotAdmin, else error substring
	}{
		{"root", PeerCred{UID: 0, GID: 5}, "", broken, ""},
		{"no admin group", PeerCred{UID: 1000, GID: 900}, "", groups(900), "deny"},
		{"primary gid", PeerCred{UID: 1000, GID: 900}, "sluice-admin", broken, ""},
		{"supplementary", PeerCred{UID: 1000, GID: 1000}, "sluice-admin", groups(4, 900), ""},
		{"numeric gid", PeerCred{UID: 1000, GID: 1000}, "900", groups(900), ""},
		{"not a member", PeerCred{UID: 1000, GID: 1000}, "sluice-admin", groups(4, 27), "deny"},
		{"groups unreadable", PeerCred{UID: 1000, GID: 1000, PID: 7}, "sluice-admin", broken, "reading the groups of pid 7"},
		{"unknown group", PeerCred{UID: 1000, GID: 1000}, "no-such-group-sluice", groups(900), "no such group"},
	}
	for _, tt := range tests {
		err := authorize(tt.cred, tt.group, tt.groups, lookup)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tt.name, err)
		case tt.want == "deny" && !errors.As(err, new(errNotAdmin)):
			t.Errorf("%s: err = %v, want a refusal", tt.name, err)
		case tt.want != "" && tt.want != "deny" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
}

// TestProcTreeCPU runs a shell whose child burns CPU: the tree's CPU must
// grow although the shell itself only waits.
func TestProcTreeCPU(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sh -c 'while :; do :; done' & wait")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sh to run a CPU-burning child: %v", err)
	}
	t.Cleanup(func() {
		// Kill the whole tree: the busy child too.
		tab := procfs.Default.ReadTable()
		for _, c := range tab.Children[cmd.Process.Pid] {
			syscall.Kill(c, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	pid := cmd.Process.Pid
	deadline := time.Now().Add(20 * time.Second)
	for {
		tab := procfs.Default.ReadTable()
		tree, self := tab.TreeCPU(pid), tab.CPU[pid]
		if tree.Microseconds() >= 100000 && self < tree/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tree CPU %d ticks (shell itself %d) after 20s; children %v", tree, self, tab.Children[pid])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// adminHelperEnv makes the test binary act as an admin API client: see
// TestAdminHelperProcess.
const adminHelperEnv = "SLUICE_ADMIN_TEST_HELPER"

// TestAdminHelperProcess is not a test: run by TestAdminAuthorization as
// another user, it calls Status (and Admit) on the socket in the env and
// prints what happened.
func TestAdminHelperProcess(t *testing.T) {
	socket := os.Getenv(adminHelperEnv)
	if socket == "" {
		t.Skip("helper process for TestAdminAuthorization only")
	}
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(3)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = admitpb.NewAdminClient(cc).Status(ctx, &admitpb.StatusRequest{})
	fmt.Printf("status: %s: %s\n", status.Code(err), status.Convert(err).Message())
	stream, err := admitpb.NewAdmissionClient(cc).Admit(ctx)
	if err == nil {
		err = stream.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: &admitpb.AdmitRequest{
			Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte("/srv/helper.git"), CorrelationId: "helper"}}})
	}
	var m *admitpb.ServerMsg
	if err == nil {
		m, err = stream.Recv()
	}
	switch {
	case err != nil:
		fmt.Printf("admit: %v\n", err)
	case m.GetAdmitted() != nil:
		fmt.Println("admit: admitted")
	default:
		fmt.Printf("admit: %v\n", m)
	}
	os.Exit(0)
}

// TestAdminAuthorization runs a client as uid 65534 against a real agent:
// it may admit, but Status needs root or the admin group.
func TestAdminAuthorization(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	// The test binary may sit in a 0700 build directory: copy it where
	// uid 65534 can run it.
	bin := filepath.Join(t.TempDir(), "agent.test")
	copyFile(t, os.Args[0], bin)
	for _, d := range []string{filepath.Dir(bin), filepath.Dir(filepath.Dir(bin))} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name        string
		adminGroup  string
		gid         uint32
		groups      []uint32
		wantAllowed bool
		wantMsg     string
	}{
		{"no admin group", "", 65534, nil, false,
			`sluice: permission denied: uid 65534 is not root and no admin group is configured ([agent] admin_group in test.toml)`},
		{"not a member", "4242", 65534, []uint32{4243}, false,
			`sluice: permission denied: uid 65534 is not root and not in admin group "4242" ([agent] admin_group in test.toml); run as root or add the user to that group`},
		{"supplementary group", "4242", 65534, []uint32{4243, 4242}, true, ""},
		{"primary group", "4242", 4242, nil, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toml := testPolicy
			if tt.adminGroup != "" {
				toml = fmt.Sprintf("[agent]\nadmin_group = %q\n", tt.adminGroup) + toml
			}
			_, sock := startTestAgent(t, toml)
			for _, d := range []string{filepath.Dir(sock), filepath.Dir(filepath.Dir(sock))} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(sock, 0o666); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "-test.run=^TestAdminHelperProcess$")
			cmd.Env = []string{adminHelperEnv + "=" + sock, "PATH=/usr/bin:/bin"}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: tt.gid, Groups: tt.groups}}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			got := string(out)
			if !strings.Contains(got, "admit: admitted") {
				t.Errorf("admission must stay open to any user who can reach the socket:\n%s", got)
			}
			if tt.wantAllowed {
				if !strings.Contains(got, "status: OK: ") {
					t.Errorf("status refused:\n%s", got)
				}
				return
			}
			if !strings.Contains(got, "status: PermissionDenied: "+tt.wantMsg) {
				t.Errorf("status answer:\n%s\nwant PermissionDenied: %s", got, tt.wantMsg)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestStatusLeaseDetails checks what Status says about a running lease:
// its key, and CPU so far of the peer's process tree (here the test
// process itself, which has certainly used some).
func TestStatusLeaseDetails(t *testing.T) {
	a, sock := startTestAgent(t, testPolicy)
	cc := grpcClient(t, sock)
	_, reply := admitGRPC(t, cc, &admitpb.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack",
		Repo: []byte("/srv/a.git"), CorrelationId: "corr-1"})
	if reply.GetAdmitted() == nil {
		t.Fatalf("not admitted: %v", reply)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := admitpb.NewAdminClient(cc).Status(ctx, &admitpb.StatusRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Leases) != 1 {
		t.Fatalf("leases = %v", st.Leases)
	}
	l := st.Leases[0]
	if l.CorrelationId != "corr-1" || l.Key != "/srv/a.git" || l.State != StateRunning || l.Pid != int32(os.Getpid()) {
		t.Errorf("lease = %v", l)
	}
	if l.CpuUsec <= 0 {
		t.Errorf("cpu_usec = %d, want the test process's CPU so far", l.CpuUsec)
	}
	if st.Limits[0].InFlight != 1 || st.ConfigPath != "test.toml" || a.Status().Version != "test" {
		t.Errorf("status = %v", st)
	}
}
