package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/policy"
)

const reloadPolicy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = %d
max_queue_size = 5
max_queue_wait = "10s"
`

func TestReloadKeepsLeases(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.toml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Replace(reloadPolicy, "%d", "2", 1))
	cfg, err := policy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var reloaded []*policy.Config
	a := New(Options{Policy: cfg, ConfigPath: path, Log: zaptest.NewLogger(t),
		OnReload: func(c *policy.Config) []string { reloaded = append(reloaded, c); return nil }})
	sock, err := Listen(SocketOptions{Path: filepath.Join(dir, "s.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Serve(ctx, sock) }()
	defer func() { cancel(); <-done }()

	req := &admitpb.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/a.git")}
	h1 := rawShim(t, sock.Path, admitFrame(t, req))
	h2 := rawShim(t, sock.Path, admitFrame(t, req))
	if readFinal(t, h1).GetAdmitted() == nil || readFinal(t, h2).GetAdmitted() == nil {
		t.Fatal("holders not admitted")
	}
	w := rawShim(t, sock.Path, admitFrame(t, req))
	if readReply(t, w).GetQueued() == nil {
		t.Fatal("third request not queued")
	}

	// Lower the limit to 1 while two run and one waits.
	write(strings.Replace(reloadPolicy, "%d", "1", 1))
	resp := a.Reload()
	// Only what changed is named: no "max_queue_size 5 -> 5".
	if !resp.Applied || len(resp.Changes) != 1 || !strings.HasSuffix(resp.Changes[0], ": limit 2 -> 1") {
		t.Fatalf("reload: %+v", resp)
	}
	if len(reloaded) != 1 {
		t.Fatalf("OnReload called %d times", len(reloaded))
	}
	st := a.Limiters()[0]
	if st.Running != 2 || st.Queued != 1 || st.Limit != 1 {
		t.Fatalf("after reload: %+v; running leases and waiters must stay", st)
	}

	// An invalid file changes nothing.
	write(strings.Replace(reloadPolicy, "%d", "-3", 1) + "\nbogus = 1\n")
	resp = a.Reload()
	if resp.Applied || len(resp.Errors) < 2 || !strings.Contains(strings.Join(resp.Errors, "\n"), "sluice.toml:") {
		t.Fatalf("invalid reload: %+v", resp)
	}
	if st := a.Limiters()[0]; st.Limit != 1 || st.Running != 2 || st.Queued != 1 {
		t.Fatalf("invalid reload changed state: %+v", st)
	}
	// A restart-only change is refused whole.
	write(strings.Replace(reloadPolicy, "%d", "5", 1) + "\n[agent]\nmetrics_addr = \"127.0.0.1:1\"\n")
	if resp = a.Reload(); resp.Applied || !strings.Contains(resp.Errors[0], "needs a restart") {
		t.Fatalf("restart-only reload: %+v", resp)
	}

	// Releasing both holders admits the waiter only once the new limit
	// allows: after the first release, 1 running (the old holder) >= 1.
	h1.Close()
	waitUntil(t, "one holder released", func() bool { return a.Limiters()[0].Running == 1 })
	if st := a.Limiters()[0]; st.Queued != 1 {
		t.Fatalf("waiter admitted over the lowered limit: %+v", st)
	}
	h2.Close()
	if m := readFinal(t, w); m.GetAdmitted() == nil {
		t.Fatalf("waiter after both released: %v", m)
	}
	if st := a.Limiters()[0]; st.Running != 1 || st.Queued != 0 || st.Admitted != 3 {
		t.Fatalf("final: %+v (no double counting)", st)
	}
}
