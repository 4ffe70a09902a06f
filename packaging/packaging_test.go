// Package packaging holds no Go code: it is the systemd unit, the Debian
// package build (build-deb.sh, `make deb`), the gitconfig snippet, the
// Prometheus rules and the Grafana dashboard. These tests check the rules
// with promtool, the dashboard's queries against the metric names sluice
// exports, and the unit's load-bearing lines.
package packaging

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (apt-get install prometheus)")
	}
	if out, err := exec.Command(promtool, "check", "rules", "prometheus/sluice-rules.yml").CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	// Each alert fires on the series that should trigger it.
	cmd := exec.Command(promtool, "test", "rules", "sluice-rules.test.yml")
	cmd.Dir = "prometheus"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// exported are the metric families sluice exports (docs/metrics.md), and
// the one the rules use before it exists.
var exported = []string{
	"sluice_command_cpu_seconds_total", "sluice_command_real_seconds_total", "sluice_command_max_rss_bytes",
	"sluice_commands_total", "sluice_concurrency_limiting_in_progress", "sluice_concurrency_limiting_queued",
	"sluice_concurrency_limiting_acquiring_seconds", "sluice_requests_dropped_total",
	"sluice_concurrency_limiting_current_limit", "sluice_concurrency_limiting_backoff_events_total",
	"sluice_build_info", "sluice_cgroup_memory_usage_bytes", "sluice_cgroup_memory_limit_bytes",
	"sluice_cgroup_memory_inactive_file_bytes", "sluice_cgroup_cpu_usage_seconds_total",
	"sluice_cgroup_cpu_periods_total", "sluice_cgroup_cpu_throttled_periods_total",
	"sluice_cgroup_cpu_throttled_seconds_total", "sluice_cgroup_oom_kills_total", "sluice_cgroup_processes",
	"sluice_cgroup_placement_failures_total", "sluice_timeouts_total",
	"sluice_unwrapped_exec_total",
}

var metricRe = regexp.MustCompile(`sluice_[a-z_]+`)

// checkNames fails for a sluice_* name in expr that sluice does not export.
func checkNames(t *testing.T, where, expr string) {
	t.Helper()
	for _, m := range metricRe.FindAllString(expr, -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
		ok := false
		for _, e := range exported {
			if base == e {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s uses %s, which sluice does not export", where, m)
		}
	}
}

func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/sluice-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	all := ""
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			checkNames(t, "panel "+p.Title, q.Expr)
			all += q.Expr + "\n"
		}
	}
	// What the issue asks the dashboard to show.
	for _, want := range []string{"sluice_concurrency_limiting_queued", "sluice_requests_dropped_total",
		"sluice_concurrency_limiting_backoff_events_total", "sluice_cgroup_oom_kills_total", "sluice_unwrapped_exec_total"} {
		if !strings.Contains(all, want) {
			t.Errorf("dashboard does not show %s", want)
		}
	}
	rules, err := os.ReadFile("prometheus/sluice-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	checkNames(t, "sluice-rules.yml", string(rules))
}

func TestUnit(t *testing.T) {
	data, err := os.ReadFile("systemd/sluiced.service")
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(data), "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	for _, want := range []string{
		"Type=notify", "Delegate=yes", "RuntimeDirectory=sluice", "RuntimeDirectoryPreserve=yes",
		"ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "KillMode=process",
		"ProtectSystem=strict", "ReadWritePaths=/sys/fs/cgroup", "Group=sluice",
	} {
		if !lines[want] {
			t.Errorf("sluiced.service lacks %q", want)
		}
	}
	// These would break cgroup placement.
	for _, bad := range []string{"ProtectControlGroups=yes", "ProtectKernelTunables=yes", "PrivateUsers=yes"} {
		if lines[bad] {
			t.Errorf("sluiced.service has %q, which makes /sys/fs/cgroup unwritable", bad)
		}
	}
}
