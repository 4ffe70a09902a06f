package exporter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"
)

var update = flag.Bool("update", false, "rewrite testdata/metrics.golden from the current output")

// fakeLimits is a LimitSource whose stats a test can change while scrapes run.
type fakeLimits struct {
	mu    sync.Mutex // guards the fields below
	stats []LimitStat
}

func (f *fakeLimits) LimitStats() []LimitStat {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]LimitStat(nil), f.stats...)
}

func (f *fakeLimits) set(stats ...LimitStat) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats = stats
}

// fakeCgroups reports fixed cgroup statistics.
type fakeCgroups struct{}

func (fakeCgroups) CgroupStats() ([]CgroupStat, uint64, bool) {
	return []CgroupStat{
		{Scope: ScopeParent, MemoryUsage: 3 << 30, MemoryLimit: 4 << 30, MemoryInactiveFile: 1 << 30,
			CPUPeriods: 1000, CPUThrottledPeriods: 250, CPUThrottledSeconds: 12.5, CPUUsageSeconds: 300, OOMKills: 2, Processes: 17},
		{Scope: ScopeBuckets, MemoryUsage: 3 << 30, CPUUsageSeconds: 299, OOMKills: 2, Processes: 17},
	}, 1, true
}

// fakeConns reports 7 open connections and 3 refused.
type fakeConns struct{}

func (fakeConns) ConnectionStats() (int, map[string]uint64) {
	return 7, map[string]uint64{"max_connections": 3, "per_uid": 2, "handshake": 1}
}

type fakeBudget struct{}

func (fakeBudget) BudgetStats() []BudgetStat {
	return []BudgetStat{
		{Class: "pack", Limit: 4, InUse: 4, Queued: 30, BackloggedKeys: 5, Fairness: 0.98, GoodputBytesPerSecond: 52428800, Admitted: 120, DroppedTime: 2},
		{Class: "upload-pack", Limit: 96, InUse: 34, Admitted: 150},
		{Class: "receive-pack", Limit: 8, InUse: 1, Admitted: 3},
		{Class: "pack", Limit: 99}, // a duplicate is dropped, not a failed scrape
	}
}

// recordedExporter is an Exporter with a fixed set of recorded events, the
// input of the golden and promtool tests.
func recordedExporter() *Exporter {
	limits := &fakeLimits{}
	limits.set(
		LimitStat{Name: "upload-pack", InProgress: 3, Queued: 2, CurrentLimit: 20, Keys: 2},
		LimitStat{Name: "pack-objects", InProgress: 1, Queued: 0, CurrentLimit: 8, Keys: 1},
	)
	e := New(Options{Version: "v1.2.3", Limits: limits, Cgroups: fakeCgroups{}, Connections: fakeConns{}, Budget: fakeBudget{}})
	e.SetLimits([]string{"upload-pack", "pack-objects"})

	e.CommandFinished("git", "upload-pack", OutcomeOK, 1500*time.Millisecond, 250*time.Millisecond, 4*time.Second, 40<<20)
	e.CommandFinished("git", "upload-pack", OutcomeOK, 500*time.Millisecond, 250*time.Millisecond, 2*time.Second, 100<<20)
	e.CommandFinished("git", "pack-objects", OutcomeSignaled, 3*time.Second, time.Second, 5*time.Second, 3<<30)
	e.CommandFinished("git-receive-pack", "receive-pack", OutcomeError, 100*time.Millisecond, 50*time.Millisecond, 500*time.Millisecond, 0)
	e.CommandRejected("git", "upload-pack")

	e.Acquired("upload-pack", 0)
	e.Acquired("upload-pack", 250*time.Millisecond)
	e.Acquired("upload-pack", 3*time.Second)
	e.Acquired("pack-objects", 40*time.Second)
	e.Dropped("upload-pack", ReasonMaxSize)
	e.Dropped("upload-pack", ReasonMaxTime)
	e.Dropped("upload-pack", ReasonMaxTime)
	e.Backoff("memory")
	e.Backoff("memory")
	e.Backoff("cpu_throttle")
	e.WatcherError("psi_cpu")
	e.Timeout("upload-pack", KindUploadPackNegotiation)
	e.Timeout("pack-objects", KindMaxRuntime)
	return e
}

// scrape GETs path from h and returns the status and body.
func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// sluiceFamilies keeps the sluice_* lines of a text exposition and replaces
// the Go version, which changes with the toolchain.
func sluiceFamilies(t *testing.T, exposition string) string {
	t.Helper()
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		line := sc.Text()
		name := line
		if rest, ok := strings.CutPrefix(line, "# HELP "); ok {
			name = rest
		} else if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name = rest
		}
		if strings.HasPrefix(name, "sluice_") {
			out.WriteString(line)
			out.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(out.String(), fmt.Sprintf("goversion=%q", runtime.Version()), `goversion="GOVERSION"`)
}

func TestGoldenExposition(t *testing.T) {
	srv := httptest.NewServer(recordedExporter().Handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want the text format", ct)
	}
	got := sluiceFamilies(t, string(body))

	const golden = "testdata/metrics.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./exporter -run Golden -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("sluice_* families differ from %s (rerun with -update if the change is intended)\n--- got:\n%s", golden, got)
	}
	for _, family := range []string{"go_goroutines", "process_cpu_seconds_total", "promhttp_metric_handler_errors_total"} {
		if !strings.Contains(string(body), "\n# TYPE "+family+" ") {
			t.Errorf("exposition lacks %s", family)
		}
	}
}

func TestPromtoolCheckMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	code, body := get(t, recordedExporter().Handler(), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", code)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestEndpoints(t *testing.T) {
	notReady := errors.New("calibrator not started")
	var readyErr error
	var mu sync.Mutex
	e := New(Options{Ready: func() error {
		mu.Lock()
		defer mu.Unlock()
		return readyErr
	}})
	h := e.Handler()

	tests := []struct {
		name     string
		path     string
		notReady bool
		code     int
		body     string // substring
	}{
		{"healthz", "/healthz", false, 200, "ok\n"},
		{"healthz while not ready", "/healthz", true, 200, "ok\n"},
		{"readyz ready", "/readyz", false, 200, "ok\n"},
		{"readyz not ready", "/readyz", true, 503, "calibrator not started\n"},
		// pprof is off unless [agent] pprof = true (TestPprofGate).
		{"pprof index off", "/debug/pprof/", false, 404, ""},
		{"pprof goroutine off", "/debug/pprof/goroutine?debug=1", false, 404, ""},
		{"pprof cmdline off", "/debug/pprof/cmdline", false, 404, ""},
		{"index", "/", false, 200, "/metrics"},
		{"metrics", "/metrics", false, 200, "sluice_build_info"},
		{"unknown", "/nope", false, 404, ""},
		{"unknown under root", "/healthz/x", false, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			readyErr = nil
			if tt.notReady {
				readyErr = notReady
			}
			mu.Unlock()
			code, body := get(t, h, tt.path)
			if code != tt.code {
				t.Fatalf("GET %s: status %d, want %d; body:\n%s", tt.path, code, tt.code, body)
			}
			if !strings.Contains(body, tt.body) {
				t.Errorf("GET %s: body lacks %q:\n%s", tt.path, tt.body, body)
			}
		})
	}

	t.Run("readyz without func", func(t *testing.T) {
		code, body := get(t, New(Options{}).Handler(), "/readyz")
		if code != 200 || body != "ok\n" {
			t.Errorf("GET /readyz: %d %q, want 200 \"ok\\n\"", code, body)
		}
	})
}

// TestPprofGate: /debug/pprof/ answers 404 by default and is served, and
// listed in the index, only with Options.Pprof ([agent] pprof = true).
func TestPprofGate(t *testing.T) {
	paths := []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline", "/debug/pprof/symbol", "/debug/pprof/heap"}
	off := New(Options{}).Handler()
	for _, p := range paths {
		if code, body := get(t, off, p); code != 404 {
			t.Errorf("pprof off: GET %s: status %d, want 404; body:\n%s", p, code, body)
		}
	}
	if _, body := get(t, off, "/"); strings.Contains(body, "pprof") {
		t.Errorf("pprof off: index mentions pprof:\n%s", body)
	}
	on := New(Options{Pprof: true}).Handler()
	for _, p := range paths {
		if code, body := get(t, on, p); code != 200 {
			t.Errorf("pprof on: GET %s: status %d, want 200; body:\n%s", p, code, body)
		}
	}
	if _, body := get(t, on, "/debug/pprof/goroutine?debug=1"); !strings.Contains(body, "goroutine profile") {
		t.Errorf("pprof on: goroutine profile:\n%s", body)
	}
	if _, body := get(t, on, "/"); !strings.Contains(body, "/debug/pprof/") {
		t.Errorf("pprof on: index lacks /debug/pprof/:\n%s", body)
	}
}

func TestExposureWarning(t *testing.T) {
	for _, tt := range []struct {
		addr  string
		ip    string
		pprof bool
		want  []string
	}{
		{"127.0.0.1:9780", "127.0.0.1", true, nil},
		{"[::1]:9780", "::1", true, nil},
		{"localhost:9780", "127.0.0.2", false, nil},
		{"0.0.0.0:9780", "0.0.0.0", false, []string{`[agent] metrics_addr = "0.0.0.0:9780"`, "beyond loopback", "/metrics", "127.0.0.1:9780"}},
		{":9780", "::", true, []string{`[agent] metrics_addr = ":9780"`, "/debug/pprof/", "/metrics"}},
		{"10.1.2.3:9780", "10.1.2.3", false, []string{`"10.1.2.3:9780"`}},
	} {
		got := ExposureWarning(tt.addr, &net.TCPAddr{IP: net.ParseIP(tt.ip), Port: 9780}, tt.pprof)
		if tt.want == nil {
			if got != "" {
				t.Errorf("%s: unexpected warning %q", tt.addr, got)
			}
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: warning %q lacks %q", tt.addr, got, w)
			}
		}
		if !tt.pprof && strings.Contains(got, "pprof") {
			t.Errorf("%s: pprof off but the warning names it: %q", tt.addr, got)
		}
	}
}

// value returns the value of the named metric with exactly the given label
// values, and whether it exists. Histograms report their sample count.
func value(t *testing.T, e *Exporter, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := e.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsMatch(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	if len(m.GetLabel()) != len(want) {
		return false
	}
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
			return false
		}
	}
	return true
}

func TestSetLimits(t *testing.T) {
	e := New(Options{})
	dropped := func(limit, reason string) (float64, bool) {
		return value(t, e, "sluice_requests_dropped_total", map[string]string{"limit": limit, "reason": reason})
	}

	e.SetLimits([]string{"a", "b"})
	for _, limit := range []string{"a", "b"} {
		for _, reason := range []string{ReasonMaxSize, ReasonMaxTime, ReasonUnavailable} {
			if v, ok := dropped(limit, reason); !ok || v != 0 {
				t.Errorf("after SetLimits: dropped{%s,%s} = %v (present %v), want 0", limit, reason, v, ok)
			}
		}
		if _, ok := value(t, e, "sluice_concurrency_limiting_acquiring_seconds", map[string]string{"limit": limit}); !ok {
			t.Errorf("after SetLimits: acquiring_seconds{limit=%q} missing", limit)
		}
	}

	e.Dropped("a", ReasonMaxTime)
	e.Acquired("a", time.Second)
	e.SetLimits([]string{"a", "b"}) // reload with the same limits keeps counts
	if v, _ := dropped("a", ReasonMaxTime); v != 1 {
		t.Errorf("after a second SetLimits: dropped{a,max_time} = %v, want 1", v)
	}
	if v, _ := value(t, e, "sluice_concurrency_limiting_acquiring_seconds", map[string]string{"limit": "a"}); v != 1 {
		t.Errorf("after a second SetLimits: acquiring_seconds{a} count = %v, want 1", v)
	}

	e.SetLimits([]string{"a", "c"}) // reload removed b, added c
	if _, ok := dropped("b", ReasonMaxSize); ok {
		t.Error("dropped{b} still exported after b was removed")
	}
	if _, ok := value(t, e, "sluice_concurrency_limiting_acquiring_seconds", map[string]string{"limit": "b"}); ok {
		t.Error("acquiring_seconds{b} still exported after b was removed")
	}
	if v, ok := dropped("c", ReasonUnavailable); !ok || v != 0 {
		t.Errorf("dropped{c,unavailable} = %v (present %v), want 0", v, ok)
	}
	if v, _ := dropped("a", ReasonMaxTime); v != 1 {
		t.Errorf("dropped{a,max_time} = %v after an unrelated reload, want 1", v)
	}
}

func TestRecordingEdgeCases(t *testing.T) {
	e := New(Options{})
	e.CommandFinished("git", "upload-pack", OutcomeOK, -time.Second, 0, -1, 0)
	e.Acquired("x", -time.Second)

	cpu, _ := value(t, e, "sluice_command_cpu_seconds_total", map[string]string{"cmd": "git", "subcmd": "upload-pack", "mode": "user"})
	real, _ := value(t, e, "sluice_command_real_seconds_total", map[string]string{"cmd": "git", "subcmd": "upload-pack"})
	if cpu != 0 || real != 0 {
		t.Errorf("negative durations were counted: cpu %v real %v", cpu, real)
	}
	if n, ok := value(t, e, "sluice_command_max_rss_bytes", map[string]string{"cmd": "git", "subcmd": "upload-pack"}); ok {
		t.Errorf("unknown max RSS was observed (%v samples)", n)
	}
	if n, _ := value(t, e, "sluice_commands_total", map[string]string{"cmd": "git", "subcmd": "upload-pack", "outcome": OutcomeOK}); n != 1 {
		t.Errorf("commands_total{ok} = %v, want 1", n)
	}
	if n, _ := value(t, e, "sluice_concurrency_limiting_acquiring_seconds", map[string]string{"limit": "x"}); n != 1 {
		t.Errorf("acquiring_seconds{x} count = %v, want 1", n)
	}
}

func TestLimitSourceDuplicateNames(t *testing.T) {
	limits := &fakeLimits{}
	limits.set(
		LimitStat{Name: "a", InProgress: 1, CurrentLimit: 5},
		LimitStat{Name: "a", InProgress: 9, CurrentLimit: 9},
	)
	e := New(Options{Limits: limits})
	code, body := get(t, e.Handler(), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", code)
	}
	if !strings.Contains(body, `sluice_concurrency_limiting_in_progress{limit="a"} 1`+"\n") {
		t.Errorf("want the first entry for a duplicated limit name; got:\n%s", sluiceFamilies(t, body))
	}
	if n, _ := value(t, e, "promhttp_metric_handler_errors_total", map[string]string{"cause": "gathering"}); n != 0 {
		t.Errorf("scrape errors: %v", n)
	}
}

func TestConcurrentRecordingWhileScraping(t *testing.T) {
	limits := &fakeLimits{}
	e := New(Options{Limits: limits})
	h := e.Handler()

	const workers, rounds = 8, 1000
	stop := make(chan struct{})
	scraped := make(chan int)
	go func() {
		n := 0
		defer func() { scraped <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if code, _ := get(t, h, "/metrics"); code != http.StatusOK {
				t.Errorf("GET /metrics: status %d", code)
				return
			}
			n++
		}
	}()

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				e.CommandFinished("git", "upload-pack", OutcomeOK, time.Millisecond, time.Millisecond, time.Millisecond, 64<<20)
				e.CommandRejected("git", "upload-pack")
				e.Acquired("upload-pack", time.Duration(i)*time.Millisecond)
				e.Dropped("upload-pack", ReasonMaxTime)
				e.Backoff("memory")
				if i%50 == 0 {
					e.SetLimits([]string{"upload-pack", fmt.Sprintf("w%d", w)})
					limits.set(LimitStat{Name: "upload-pack", InProgress: i, Queued: w, CurrentLimit: 10})
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if n := <-scraped; n == 0 {
		t.Error("no scrape completed while recording")
	} else {
		t.Logf("%d scrapes while recording", n)
	}

	want := float64(workers * rounds)
	checks := []struct {
		name   string
		labels map[string]string
	}{
		{"sluice_commands_total", map[string]string{"cmd": "git", "subcmd": "upload-pack", "outcome": OutcomeOK}},
		{"sluice_commands_total", map[string]string{"cmd": "git", "subcmd": "upload-pack", "outcome": OutcomeRejected}},
		{"sluice_command_max_rss_bytes", map[string]string{"cmd": "git", "subcmd": "upload-pack"}},
		{"sluice_concurrency_limiting_acquiring_seconds", map[string]string{"limit": "upload-pack"}},
		{"sluice_requests_dropped_total", map[string]string{"limit": "upload-pack", "reason": ReasonMaxTime}},
		{"sluice_concurrency_limiting_backoff_events_total", map[string]string{"watcher": "memory"}},
	}
	for _, c := range checks {
		if got, _ := value(t, e, c.name, c.labels); got != want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, want)
		}
	}
}

func TestListenAddressInUse(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()

	_, err = Listen(addr)
	if err == nil {
		t.Fatalf("second Listen(%q) succeeded", addr)
	}
	want := fmt.Sprintf(`metrics_addr %q: address in use; set [agent] metrics_addr to a free port or "off"`, addr)
	if err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v does not match EADDRINUSE", err)
	}
}

// serverGoroutines lists the stacks of goroutines left by an http.Server.
func serverGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "net/http.(*Server).Serve(") || strings.Contains(s, "net/http.(*conn).serve(") ||
			strings.Contains(s, "exporter.(*Exporter).Serve(") {
			left = append(left, s)
		}
	}
	return left
}

func TestServe(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	e := recordedExporter()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx, ln, zaptest.NewLogger(t)) }()

	// A keep-alive connection stays open across the shutdown: Serve must
	// still return and close it.
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for _, path := range []string{"/healthz", "/metrics"} {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d: %s", path, resp.StatusCode, body)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Serve returned", addr)
	}
	// Serve has returned; connection goroutines end as their sockets close.
	deadline := time.Now().Add(5 * time.Second)
	for left := serverGoroutines(); len(left) > 0; left = serverGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left after Serve returned:\n%s", strings.Join(left, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestServeListenerBroken(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	err = New(Options{}).Serve(context.Background(), ln, nil)
	if err == nil {
		t.Fatal("Serve on a closed listener returned nil")
	}
}
