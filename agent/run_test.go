package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/policy"
)

// newRunAgent returns an agent on the policy file it writes (toml, with
// [agent] socket in a directory that does not exist yet) and that socket.
func newRunAgent(t *testing.T, toml string) (*Agent, string, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "sluice.sock")
	file := filepath.Join(dir, "sluice.toml")
	if err := os.WriteFile(file, []byte("[agent]\nsocket = \""+sock+"\"\n"+toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zap.NewNop(), Version: "test", ConfigPath: file,
		StateDir: filepath.Join(filepath.Dir(sock), "leases")})
	// sluiced exits after Run; a test process lives on, so it closes
	// the state directory Start's recovery keeps open.
	t.Cleanup(func() { closeStateDir(a) })
	return a, sock, file
}

// notifications records what Run tells the service manager.
type notifications chan string

func (n notifications) notify(state string) error { n <- state; return nil }

func (n notifications) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-n:
		if got != want {
			t.Fatalf("notified %q, want %q", got, want)
		}
	case <-time.After(time.Minute):
		// Fail with what is known instead of hanging the package until
		// go test's timeout (one CI run waited 10 minutes here, Run gone).
		t.Fatalf("no %q notification within a minute", want)
	}
}

// TestRunLifecycle walks sluiced's life: Start writes shim.conf, Run says
// ready, reloads on request (rewriting shim.conf), stops when its context
// ends and removes the runtime directory it created.
func TestRunLifecycle(t *testing.T) {
	a, sock, file := newRunAgent(t, testPolicy)
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)
	s, err := a.Start(sock, log)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(filepath.Dir(sock), "shim.conf")
	if b, err := os.ReadFile(conf); err != nil || strings.Contains(string(b), "fail_mode=closed") {
		t.Fatalf("shim.conf after Start: %q, %v", b, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := make(notifications, 8)
	reload := make(chan os.Signal, 1)
	metricsDone := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, s, RunOptions{Log: log, Reload: reload, Notify: n.notify,
			Metrics: func(ctx context.Context) error { <-ctx.Done(); close(metricsDone); return nil }})
	}()
	// If Run returns on its own (a part stopped), say why.
	defer func() {
		if t.Failed() {
			select {
			case err := <-done:
				t.Logf("Run had returned: %v; its log:", err)
				for _, e := range logs.All() {
					t.Logf("  %s %v", e.Message, e.ContextMap())
				}
			default:
			}
		}
	}()
	n.expect(t, "READY=1\nSTATUS=admitting")
	if e := logs.FilterMessage("sluiced ready").All(); len(e) != 1 || e[0].ContextMap()["socket"] != sock || e[0].ContextMap()["rules"] != int64(1) {
		t.Fatalf("ready line: %v", e)
	}

	// fail_mode is not restart-only: the reload applies it and rewrites
	// shim.conf for the shims.
	if err := os.WriteFile(file, []byte("[agent]\nsocket = \""+sock+"\"\nfail_mode = \"closed\"\n"+testPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	reload <- syscall.SIGHUP
	n.expect(t, "RELOADING=1")
	n.expect(t, "READY=1")
	if b, _ := os.ReadFile(conf); !strings.Contains(string(b), "fail_mode=closed") {
		t.Fatalf("shim.conf after the reload:\n%s", b)
	}
	// Back to open, so that the stop removes the directory.
	os.WriteFile(file, []byte("[agent]\nsocket = \""+sock+"\"\n"+testPolicy), 0o644)
	reload <- syscall.SIGHUP
	n.expect(t, "RELOADING=1")
	n.expect(t, "READY=1")

	cancel()
	n.expect(t, "STOPPING=1")
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	<-metricsDone
	if _, err := os.Stat(filepath.Dir(sock)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runtime directory left behind: %v", err)
	}
	if logs.FilterMessage("sluiced stopped").Len() != 1 {
		t.Errorf("no stop line: %v", logs.All())
	}
}

// TestRunPartFailureStopsAll: metrics failing stops the admission service
// too, and is Run's error.
func TestRunPartFailureStopsAll(t *testing.T) {
	a, sock, _ := newRunAgent(t, testPolicy)
	s, err := a.Start(sock, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	broken := errors.New("serve metrics: listener broke")
	err = a.Run(context.Background(), s, RunOptions{Log: zap.NewNop(),
		Metrics: func(context.Context) error { return broken }})
	if !errors.Is(err, broken) {
		t.Fatalf("Run = %v, want %v", err, broken)
	}
}

// TestRunStopTimeout: a part that does not stop makes Run give up and
// exit with status 1.
func TestRunStopTimeout(t *testing.T) {
	a, sock, _ := newRunAgent(t, testPolicy)
	s, err := a.Start(sock, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	stuck := make(chan struct{})
	exited := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = a.Run(ctx, s, RunOptions{Log: zap.New(core), StopTimeout: time.Millisecond,
		Metrics: func(context.Context) error { <-stuck; return nil },
		Exit:    func(code int) { exited <- code; close(stuck) }})
	if err != nil || <-exited != 1 {
		t.Fatalf("Run = %v", err)
	}
	if logs.FilterMessage("shutdown took longer than 1ms; exiting").Len() != 1 {
		t.Errorf("logs %v", logs.All())
	}
}

// fakeCache is a PackCache that serves nothing.
type fakeCache struct{}

func (fakeCache) ServeConn(c *net.UnixConn, _, _ uint32) { c.Close() }
func (fakeCache) Status() *admitpb.PackCacheStatus {
	return &admitpb.PackCacheStatus{Dir: "/var/cache/sluice"}
}

// TestStatusReportsParts: the states sluiced passes and the pack cache's
// status are in every Status answer; shim.conf enables the pack cache
// only while one serves.
func TestStatusReportsParts(t *testing.T) {
	cfg, err := policy.Parse("test.toml", []byte("[pack_cache]\nenabled = true\ndir = \"/var/cache/sluice\"\n"+testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, CgroupState: "disabled", TracerState: "unavailable: no BTF", PackCache: fakeCache{}})
	st := a.Status()
	if st.Cgroups.GetState() != "disabled" || st.EbpfState != "unavailable: no BTF" || st.PackCache.GetDir() != "/var/cache/sluice" {
		t.Errorf("status %v %q %v", st.Cgroups, st.EbpfState, st.PackCache)
	}
	if !ShimConfig(cfg, true).PackCache || ShimConfig(cfg, false).PackCache {
		t.Error("shim.conf pack_cache does not follow whether the cache serves")
	}
	if st := New(Options{Policy: cfg}).Status(); st.Cgroups != nil || st.EbpfState != "" || st.PackCache != nil {
		t.Errorf("without parts: %v %q %v", st.Cgroups, st.EbpfState, st.PackCache)
	}
}
