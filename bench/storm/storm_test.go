package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
)

func TestWriteHistoryIsDeterministicAndImports(t *testing.T) {
	p := repoParams{Files: 30, Bytes: 256, Fanout: 4, Commits: 7, Changes: 3}
	var a, b bytes.Buffer
	if err := writeHistory(&a, p); err != nil {
		t.Fatal(err)
	}
	if err := writeHistory(&b, p); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two streams for the same parameters differ: the cache key would lie")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	env := []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null"}
	repo, err := ensureRepo(dir, "big", p, env, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	out, err := gitCmd(env, repo, "rev-list", "--count", "HEAD").Output()
	if err != nil || strings.TrimSpace(string(out)) != "8" {
		t.Fatalf("rev-list --count HEAD = %q, %v; want 8 commits", out, err)
	}
	out, err = gitCmd(env, repo, "ls-tree", "-r", "--name-only", "HEAD").Output()
	if n := len(strings.Fields(string(out))); err != nil || n != p.Files {
		t.Fatalf("HEAD has %d files (%v), want %d", n, err, p.Files)
	}
	// A second call reuses the cache.
	again, err := ensureRepo(dir, "big", p, env, func(string, ...any) { t.Error("regenerated a cached repository") })
	if err != nil || again != repo {
		t.Fatalf("ensureRepo again = %q, %v", again, err)
	}
}

func TestScrapeSumsByLimitLabel(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`# HELP sluice_concurrency_limiting_current_limit x
# TYPE sluice_concurrency_limiting_current_limit gauge
sluice_concurrency_limiting_current_limit{limit="pack-objects"} 4
sluice_concurrency_limiting_current_limit{limit="upload-pack"} 12
sluice_concurrency_limiting_queued{limit="upload-pack"} 30
sluice_commands_total{cmd="git",outcome="rejected",subcmd="upload-pack"} 5
sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"} 7
sluice_commands_total{cmd="git",outcome="rejected",subcmd="pack-objects"} 2
`))
	}))
	defer srv.Close()
	m, err := scrape(srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := m["sluice_concurrency_limiting_current_limit"]; got["pack-objects"] != 4 || got["upload-pack"] != 12 {
		t.Errorf("current limits = %v", got)
	}
	if got := m["sluice_concurrency_limiting_queued"]["upload-pack"]; got != 30 {
		t.Errorf("queued = %v", got)
	}
	if got := counter(srv.Client(), srv.URL, "sluice_commands_total", `outcome="rejected"`); got != 7 {
		t.Errorf("rejected = %v, want 7", got)
	}
	if got := counter(srv.Client(), srv.URL, "sluice_commands_total", `subcmd="upload-pack"`); got != 12 {
		t.Errorf("upload-pack = %v, want 12", got)
	}
}

func TestCountAndSummarize(t *testing.T) {
	ops := []op{{Outcome: ok, Seconds: 1}, {Outcome: ok, Seconds: 3}, {Outcome: rejected}, {Outcome: timedOut}, {Outcome: failed}, {Outcome: cutOff}}
	c := count(ops)
	if c.OK != 2 || c.Failed() != 3 || c.CutOff != 1 {
		t.Errorf("count = %+v", c)
	}
	s := summarize([]float64{4, 1, 3, 2})
	if s.N != 4 || s.P50 != 2 || s.P99 != 4 || s.Mean != 2.5 {
		t.Errorf("summarize = %+v", s)
	}
}

func TestModesQuotaTransportsAndRepeats(t *testing.T) {
	ms, err := modes([]string{"static", "static+cgroups", "adaptive+cgroups", "adaptive-anon", "static"}, []string{"git", "ssh"}, "root", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 10 {
		t.Fatalf("%d modes, want 5 per transport", len(ms))
	}
	for _, m := range ms {
		quota := strings.Contains(m.Policy, "cpu_quota_us = 150000")
		if quota != m.Cgroups {
			t.Errorf("%s: CPU quota %v, cgroups %v: the cgroup modes (and only they) carry the quota", m.label(), quota, m.Cgroups)
		}
	}
	if ms[1].Policy[:strings.Index(ms[1].Policy, "[cgroups]")] != ms[0].Policy[:strings.Index(ms[0].Policy, "[cgroups]")] {
		t.Error("static+cgroups does not run static's rules")
	}
	if !strings.Contains(ms[3].Policy, `memory_signal = "anon"`) {
		t.Errorf("adaptive-anon policy:\n%s", ms[3].Policy)
	}
	if ms[4].Name != "static #2" || ms[9].label() != "static #2 (ssh)" || ms[5].label() != "static (ssh)" {
		t.Errorf("labels %q %q %q", ms[4].label(), ms[9].label(), ms[5].label())
	}
	if _, err := modes([]string{"adaptive+psi"}, []string{"git"}, "r", 1); err == nil {
		t.Error("an unknown mode was accepted")
	}
}
