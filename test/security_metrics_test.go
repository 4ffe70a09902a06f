package test

// security_metrics_test.go: the agent's HTTP listener stays on loopback by
// default, /debug/pprof/ is off unless [agent] pprof = true, and a
// metrics_addr beyond loopback is logged as a warning at start (issue 14,
// property 7).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMetricsDefaults: a default agent listens on loopback, warns about
// nothing, and answers 404 on /debug/pprof/; with pprof = true it serves it.
func TestMetricsDefaults(t *testing.T) {
	a := startAgent(t, uploadPackRule, "open")
	if !strings.HasPrefix(a.Metrics, "http://127.0.0.1:") {
		t.Fatalf("metrics listener %s, want loopback", a.Metrics)
	}
	if strings.Contains(a.Logs(), "beyond loopback") {
		t.Errorf("loopback listener warned:\n%s", a.Logs())
	}
	pprofCode := func(a *agentProc) int {
		resp, err := http.Get(a.Metrics + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := pprofCode(a); c != 404 {
		t.Errorf("default agent: /debug/pprof/goroutine answered %d, want 404", c)
	}
	b := newAgentDir(t)
	b.agentExtra = "pprof = true"
	b.start(uploadPackRule, "open")
	if c := pprofCode(b); c != 200 {
		t.Errorf("pprof = true: /debug/pprof/goroutine answered %d, want 200", c)
	}
}

// TestMetricsAddrWarning starts sluiced with metrics_addr = "0.0.0.0:0" in
// a network namespace of its own (so nothing is exposed beyond this test)
// and checks the one warning at start names the key, the value and what
// is exposed.
func TestMetricsAddrWarning(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare is not installed (util-linux): needed to bind 0.0.0.0 in a private network namespace")
	}
	if out, err := exec.Command("unshare", "-n", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace (unshare -n: %v %s): needs CAP_SYS_ADMIN", err, out)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf("[agent]\nsocket = %q\nmetrics_addr = \"0.0.0.0:0\"\npprof = true\n[git]\nbin = %q\n[cgroups]\nenabled = false\n[ebpf]\nenabled = false\n",
		filepath.Join(dir, "run", "sluice.sock"), bins.realGit)
	cfgPath := filepath.Join(dir, "sluice.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "-n", bins.sluiced, "-config", cfgPath)
	cmd.Env = baseEnv(dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	lines := make(chan map[string]any, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	var warnings []map[string]any
	timeout := time.After(20 * time.Second)
wait:
	for {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatal("sluiced exited before it was ready")
			}
			if m["level"] == "warn" && strings.Contains(fmt.Sprint(m["msg"]), "metrics_addr") {
				warnings = append(warnings, m)
			}
			if m["msg"] == "sluiced ready" {
				break wait
			}
		case <-timeout:
			t.Fatal("sluiced not ready after 20s")
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("want one metrics_addr warning at start, got %d: %v", len(warnings), warnings)
	}
	w := warnings[0]
	msg := fmt.Sprint(w["msg"])
	for _, want := range []string{`[agent] metrics_addr = "0.0.0.0:0"`, "beyond loopback", "/debug/pprof/", "/metrics", "127.0.0.1:9780"} {
		if !strings.Contains(msg, want) {
			t.Errorf("warning %q lacks %q", msg, want)
		}
	}
	if w["key"] != "[agent] metrics_addr" || w["value"] != "0.0.0.0:0" {
		t.Errorf("warning fields key=%v value=%v", w["key"], w["value"])
	}
}
