package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/policy"
)

const clientTestPolicy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = %s
max_queue_size = 2
max_queue_wait = "10s"
`

// startAgent serves a real agent in-process on a socket in a temp dir,
// with its policy in a file so that reload can re-read it.
func startAgent(t *testing.T, maxPerKey string) (socket, configPath string) {
	t.Helper()
	dir := t.TempDir()
	configPath = filepath.Join(dir, "sluice.toml")
	if err := os.WriteFile(configPath, []byte(strings.Replace(clientTestPolicy, "%s", maxPerKey, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(configPath)
	if err != nil {
		t.Fatal(err)
	}
	a := agent.New(agent.Options{Policy: cfg, ConfigPath: configPath, Log: zaptest.NewLogger(t), Version: "test"})
	sock, err := agent.Listen(agent.SocketOptions{Path: filepath.Join(dir, "run", "sluice.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock.Path, configPath
}

// holdLease admits a request over gRPC and keeps its lease until the test
// ends.
func holdLease(t *testing.T, socket, corrID, repo string) {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	stream, err := admitpb.NewAdmissionClient(cc).Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: &admitpb.AdmitRequest{
		Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte(repo), CorrelationId: corrID}}}); err != nil {
		t.Fatal(err)
	}
	m, err := stream.Recv()
	if err != nil || m.GetAdmitted() == nil {
		t.Fatalf("not admitted: %v %v", m, err)
	}
}

func TestStatusTopAgainstAgent(t *testing.T) {
	socket, configPath := startAgent(t, "1")
	holdLease(t, socket, "corr-held", "/srv/git/held.git")

	code, out, errs := runArgs("status", "--socket", socket)
	if code != 0 || errs != "" {
		t.Fatalf("status: exit %d, stderr %q", code, errs)
	}
	for _, want := range []string{"sluiced test, up ", "config     " + configPath, "fail mode  open",
		"upload-pack  upload-pack  repo  1 static  2, 10s fifo  1          0       1     1 ", "1 running, 0 queued"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	code, out, errs = runArgs("status", "--json", "--socket", socket)
	if code != 0 || errs != "" {
		t.Fatalf("status --json: exit %d, stderr %q", code, errs)
	}
	var st struct {
		Limits []struct {
			InFlight int64 `json:"in_flight"`
		} `json:"limits"`
		Leases []struct {
			CorrelationID string `json:"correlation_id"`
			Key           string `json:"key"`
		} `json:"leases"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if len(st.Limits) != 1 || st.Limits[0].InFlight != 1 || len(st.Leases) != 1 || st.Leases[0].CorrelationID != "corr-held" || st.Leases[0].Key != "/srv/git/held.git" {
		t.Errorf("status --json = %+v", st)
	}

	// SLUICE_SOCKET is honoured when there is no --socket.
	t.Setenv("SLUICE_SOCKET", socket)
	t.Setenv("COLUMNS", "100")
	code, out, errs = runArgs("top", "--once", "--sort", "age")
	if code != 0 || errs != "" {
		t.Fatalf("top --once: exit %d, stderr %q", code, errs)
	}
	if !strings.Contains(out, "corr-held        upload-pack  /srv/git/held.git") || !strings.Contains(out, "upload-pack: 1 in flight, 0 queued") {
		t.Errorf("top --once:\n%s", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if len([]rune(l)) > 100 {
			t.Errorf("line wider than $COLUMNS=100: %q", l)
		}
	}
}

func TestReloadAgainstAgent(t *testing.T) {
	socket, configPath := startAgent(t, "1")
	if err := os.WriteFile(configPath, []byte(strings.Replace(clientTestPolicy, "%s", "3", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runArgs("reload", "--socket", socket)
	if code != 0 || !strings.HasPrefix(out, "reloaded "+configPath+":\n  ") || !strings.Contains(out, "1 -> 3") {
		t.Errorf("reload: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if err := os.WriteFile(configPath, []byte("[[limit]]\nname = 3\nbogus = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs = runArgs("reload", "--socket", socket)
	if code != 1 || out != "" || !strings.Contains(errs, "not applied; the previous policy stays in force:\n  "+configPath+":") {
		t.Errorf("invalid reload: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestUnreachableAgent(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.sock")
	code, _, errs := runArgs("status", "--socket", missing)
	want := "sluice: cannot reach sluiced at " + missing + ": no such file or directory; is it running? (systemctl status sluiced), or set SLUICE_SOCKET\n"
	if code != 1 || errs != want {
		t.Errorf("missing socket: exit %d, stderr %q, want %q", code, errs, want)
	}

	// A socket file nobody listens on (a crashed agent) refuses.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	for _, cmd := range []string{"status", "top", "reload"} {
		args := []string{cmd, "--socket", stale}
		if cmd == "top" {
			args = append(args, "--once")
		}
		code, out, errs := runArgs(args...)
		want := "sluice: cannot reach sluiced at " + stale + ": connection refused; is it running? (systemctl status sluiced), or set SLUICE_SOCKET\n"
		if code != 1 || out != "" || errs != want {
			t.Errorf("%s on a stale socket: exit %d, stdout %q, stderr %q, want %q", cmd, code, out, errs, want)
		}
	}
}

func TestCLIUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "x"}, "takes no arguments"},
		{[]string{"top", "--sort", "mem"}, `--sort "mem": use cpu or age`},
		{[]string{"top", "--interval", "1ms"}, "too short"},
		{[]string{"reload", "x"}, "takes no arguments"},
		{[]string{"demo", "--clients", "0"}, "use 1 to 200"},
		{[]string{"demo", "--duration", "0s"}, "more than 0"},
	} {
		code, _, errs := runArgs(tt.args...)
		if code != 2 || !strings.Contains(errs, tt.want) {
			t.Errorf("%q: exit %d, stderr %q, want 2 and %q", tt.args, code, errs, tt.want)
		}
	}
}

func TestPrintReload(t *testing.T) {
	var out, errs strings.Builder
	if code := printReload(&admitpb.ReloadResponse{Applied: true, ConfigPath: "/etc/s.toml"}, &out, &errs); code != 0 || out.String() != "reloaded /etc/s.toml: no changes\n" {
		t.Errorf("no changes: %d %q", code, out.String())
	}
	out.Reset()
	if code := printReload(&admitpb.ReloadResponse{Applied: false, ConfigPath: "/etc/s.toml"}, &out, &errs); code != 1 || !strings.Contains(errs.String(), "sluiced gave no reason") {
		t.Errorf("no reason: %d %q", code, errs.String())
	}
}
