package test

// End-to-end tests of the operator CLI (sluice status, top, reload, demo)
// against a real sluiced with real git in flight.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runCLI runs the sluice binary and returns its exit code, stdout and
// stderr.
func runCLI(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bins.cli, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("sluice %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// statusJSON is the part of `sluice status --json` the tests read (counts
// are JSON numbers).
type statusJSON struct {
	ConfigPath string `json:"config_path"`
	Limits     []struct {
		Name           string  `json:"name"`
		InFlight       float64 `json:"in_flight"`
		Queued         float64 `json:"queued"`
		AdmittedTotal  float64 `json:"admitted_total"`
		DroppedMaxSize float64 `json:"dropped_max_size"`
		DroppedMaxTime float64 `json:"dropped_max_time"`
		CurrentLimit   int     `json:"current_limit"`
	} `json:"limits"`
	Leases []struct {
		CorrelationID string `json:"correlation_id"`
		State         string `json:"state"`
		Pid           int    `json:"pid"`
		Key           string `json:"key"`
	} `json:"leases"`
}

// TestCLIStatusAndTopWithGitInFlight holds one upload-pack running and one
// queued, has a third rejected, and checks that `status --json` says what
// /metrics says and `top --once` lists both commands by correlation id.
func TestCLIStatusAndTopWithGitInFlight(t *testing.T) {
	a := startAgent(t, limitRule("upload-pack", "repo", 1, 1, "60s"), "open")
	repo := makeRepo(t, a.dir, "cli", 3)

	held := holdUploadPack(t, a, repo, "CORRELATION_ID=cli-held-1")
	select {
	case <-held.first:
	case <-time.After(10 * time.Second):
		t.Fatalf("holder not admitted: %s", held.stderr.String())
	}
	queued := holdUploadPack(t, a, repo, "CORRELATION_ID=cli-queued-1")
	waitFor(t, 10*time.Second, "one request queued", func() bool {
		return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 1
	})
	rejected := holdUploadPack(t, a, repo, "CORRELATION_ID=cli-rejected-1")
	if code := rejected.wait(t, 10*time.Second); code != 75 {
		t.Fatalf("third request: exit %d, want 75 (queue full); stderr %s", code, rejected.stderr.String())
	}

	env := baseEnv(a.dir)
	code, out, errs := runCLI(t, env, "status", "--json", "--socket", a.socket)
	if code != 0 {
		t.Fatalf("status --json: exit %d: %s", code, errs)
	}
	m := a.scrape()
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if len(st.Limits) != 1 || st.Limits[0].Name != "upload-pack" {
		t.Fatalf("limits: %+v", st.Limits)
	}
	l := st.Limits[0]
	for _, c := range []struct {
		field  string
		got    float64
		series string
	}{
		{"in_flight", l.InFlight, `sluice_concurrency_limiting_in_progress{limit="upload-pack"}`},
		{"queued", l.Queued, `sluice_concurrency_limiting_queued{limit="upload-pack"}`},
		{"dropped_max_size", l.DroppedMaxSize, `sluice_requests_dropped_total{limit="upload-pack",reason="max_size"}`},
		{"dropped_max_time", l.DroppedMaxTime, `sluice_requests_dropped_total{limit="upload-pack",reason="max_time"}`},
		{"admitted_total", l.AdmittedTotal, `sluice_concurrency_limiting_acquiring_seconds_count{limit="upload-pack"}`},
	} {
		if c.got != m[c.series] {
			t.Errorf("status %s = %v, /metrics %s = %v", c.field, c.got, c.series, m[c.series])
		}
	}
	if l.InFlight != 1 || l.Queued != 1 || l.DroppedMaxSize != 1 || l.CurrentLimit != 1 {
		t.Errorf("limit status %+v, want 1 in flight, 1 queued, 1 dropped", l)
	}
	states := map[string]string{}
	for _, ls := range st.Leases {
		states[ls.CorrelationID] = ls.State
		if ls.Key != repo {
			t.Errorf("lease %s key %q, want %q", ls.CorrelationID, ls.Key, repo)
		}
	}
	if states["cli-held-1"] != "running" || states["cli-queued-1"] != "queued" || len(states) != 2 {
		t.Errorf("lease states %v", states)
	}

	code, out, errs = runCLI(t, env, "status", "--socket", a.socket)
	if code != 0 || !strings.Contains(out, "config     "+filepath.Join(a.dir, "sluice.toml")) || !strings.Contains(out, "1 running, 1 queued") {
		t.Errorf("status: exit %d, stdout:\n%s\nstderr: %s", code, out, errs)
	}

	// top --once, at $COLUMNS, the socket from SLUICE_SOCKET.
	code, out, errs = runCLI(t, append(env, "COLUMNS=150", "SLUICE_SOCKET="+a.socket), "top", "--once", "--sort", "age")
	if code != 0 {
		t.Fatalf("top --once: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var heldLine, queuedLine int
	for i, line := range lines {
		if len([]rune(line)) > 150 {
			t.Errorf("line wider than COLUMNS=150: %q", line)
		}
		switch {
		case strings.HasPrefix(line, "cli-held-1 "):
			heldLine = i
			if !strings.Contains(line, " upload-pack ") || !strings.Contains(line, " running ") || !strings.Contains(line, "cli.git") {
				t.Errorf("held line %q", line)
			}
		case strings.HasPrefix(line, "cli-queued-1 "):
			queuedLine = i
			if !strings.Contains(line, " queued ") {
				t.Errorf("queued line %q", line)
			}
		}
	}
	if heldLine == 0 || queuedLine <= heldLine || !strings.Contains(out, "upload-pack: 1 in flight, 1 queued") {
		t.Errorf("top --once (oldest first):\n%s", out)
	}

	// reload with an unchanged file.
	code, out, errs = runCLI(t, env, "reload", "--socket", a.socket)
	if code != 0 || !strings.Contains(out, "reloaded "+filepath.Join(a.dir, "sluice.toml")) {
		t.Errorf("reload: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	held.release()
	queued.release()
}

// TestCLIAdminRefusedForNonRoot runs `sluice status` as uid 65534 against a
// socket it can reach: the agent refuses, naming the fix.
func TestCLIAdminRefusedForNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the CLI as another uid")
	}
	a := startAgent(t, limitRule("upload-pack", "repo", 1, 1, "1s"), "open")
	// The built binaries sit in a 0700 directory: copy the CLI where uid
	// 65534 can run it, and open the way to the socket.
	cli := filepath.Join(t.TempDir(), "sluice")
	copyExecutable(t, bins.cli, cli)
	for _, d := range []string{filepath.Dir(cli), filepath.Dir(filepath.Dir(cli)), a.dir, filepath.Dir(a.dir), filepath.Dir(a.socket)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(a.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"status"}, {"top", "--once"}, {"reload"}} {
		cmd := exec.Command(cli, append(args, "--socket", a.socket)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("sluice %v as uid 65534: %v (want a non-zero exit)\n%s", args, err, stderr.String())
		}
		want := fmt.Sprintf("sluice: permission denied: uid 65534 is not root and no admin group is configured ([agent] admin_group in %s); run as root or set admin_group to a group of the user\n",
			filepath.Join(a.dir, "sluice.toml"))
		if code := cmd.ProcessState.ExitCode(); code != 1 || stderr.String() != want || stdout.Len() != 0 {
			t.Errorf("sluice %v as uid 65534: exit %d, stdout %q, stderr %q; want exit 1 and %q", args, code, stdout.String(), stderr.String(), want)
		}
	}
	// The same command as root works.
	if code, _, errs := runCLI(t, baseEnv(a.dir), "status", "--socket", a.socket); code != 0 {
		t.Errorf("status as root: exit %d: %s", code, errs)
	}
}

func copyExecutable(t *testing.T, from, to string) {
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

// processesMentioning returns "pid: cmdline" of every process whose
// command line contains s.
func processesMentioning(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cmdline := strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " ")
		if strings.Contains(cmdline, s) {
			out = append(out, fmt.Sprintf("%d: %s", pid, cmdline))
		}
	}
	return out
}

// startDemo starts `sluice demo` with its own TMPDIR and returns the
// command, its stdout so far and TMPDIR.
func startDemo(t *testing.T, args ...string) (*exec.Cmd, *lockedBuffer, *lockedBuffer, string) {
	t.Helper()
	tmp := t.TempDir()
	// Two storms (without sluice, then through it): on a loaded 2-core
	// machine each clone of the demo repository may take most of a minute.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bins.cli, append([]string{"demo"}, args...)...)
	cmd.Env = append(baseEnv(tmp), "TMPDIR="+tmp)
	stdout, stderr := &lockedBuffer{}, &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdout, stderr, tmp
}

// checkNothingLeft asserts the demo left no file (sandbox, socket) in tmp
// and no process (sluiced, git daemon, clones) behind.
func checkNothingLeft(t *testing.T, tmp string) {
	t.Helper()
	ents, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
	if ps := processesMentioning(tmp); len(ps) > 0 {
		t.Errorf("processes left behind:\n%s", strings.Join(ps, "\n"))
		for _, p := range ps {
			pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// TestCLIDemo runs `sluice demo` to completion: clones are admitted and
// rejected, metrics are printed, and nothing is left behind.
func TestCLIDemo(t *testing.T) {
	cmd, stdout, stderr, tmp := startDemo(t, "--clients", "12", "--duration", "3s")
	start := time.Now()
	err := cmd.Wait()
	took := time.Since(start)
	out := stdout.String()
	if err != nil {
		t.Fatalf("sluice demo: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	for _, want := range []string{
		"sluiced ready: socket " + tmp,
		"git daemon ready: git://127.0.0.1:",
		"in flight 2, queued",
		": ok in ",
		"run 1 of 2, without sluice",
		"run 2 of 2, with sluice",
		"rejected after ",
		// The client's own words, with the id the agent logged.
		`: sluice: too many upload-pack requests for this repository`,
		"try again in 3s (correlation id ",
		"side by side, 12 clients",
		"what 'sluice top --once' shows now:",
		`sluice_requests_dropped_total{limit="upload-pack",reason="max_size"} `,
		`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"} `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	// Every clone either ran or was rejected by sluice: nothing else broke,
	// and a waiting line is never taken for a reason.
	if strings.Contains(out, ": failed after ") {
		t.Errorf("some clones failed for another reason than a rejection")
	}
	if strings.Contains(out, "rejected after") && strings.Contains(out, ": sluice: waiting") {
		t.Errorf("a waiting line shown as a rejection reason")
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", out, stderr.String())
	}
	t.Logf("demo took %v", took.Round(100*time.Millisecond))
	checkNothingLeft(t, tmp)
}

// TestCLIDemoInterrupted stops the demo with SIGINT in the middle of the
// clone storm: it must stop everything it started and remove its files.
func TestCLIDemoInterrupted(t *testing.T) {
	cmd, stdout, stderr, tmp := startDemo(t, "--clients", "6", "--duration", "30s")
	// The first storm (without sluice) starts right after its heading; the
	// one through sluice only after it ends.
	waitFor(t, 60*time.Second, "the clone storm to start", func() bool {
		return strings.Contains(stdout.String(), "run 1 of 2, without sluice")
	})
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Errorf("exit %d (%v), want 130\nstdout:\n%s\nstderr:\n%s", code, err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "interrupted; everything it started is stopped and its files removed") {
		t.Errorf("stderr: %s", stderr.String())
	}
	checkNothingLeft(t, tmp)
}

// TestCLIReloadUnderLoad lowers a limit with real git in flight: no lease
// is dropped or double-counted, and an invalid file changes nothing.
func TestCLIReloadUnderLoad(t *testing.T) {
	const rule = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = %d
max_queue_size = 5
max_queue_wait = "60s"
`
	a := startAgent(t, fmt.Sprintf(rule, 3), "open")
	repo := makeRepo(t, a.dir, "r", 2)
	var held []*proc
	for i := 0; i < 3; i++ {
		h := holdUploadPack(t, a, repo)
		<-h.first
		held = append(held, h)
	}
	waiter := holdUploadPack(t, a, repo)
	waitFor(t, 5*time.Second, "one waiter", func() bool {
		return a.metric(`sluice_concurrency_limiting_queued{limit="upload-pack"}`) == 1
	})
	cfgPath := filepath.Join(a.dir, "sluice.toml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	lowered := strings.Replace(string(cfg), "max_per_key = 3", "max_per_key = 1", 1)
	if err := os.WriteFile(cfgPath, []byte(lowered), 0o644); err != nil {
		t.Fatal(err)
	}
	env := baseEnv(a.dir)
	code, out, errs := runCLI(t, env, "reload", "--socket", a.socket)
	if code != 0 || !strings.Contains(out, "limit 3 -> 1") {
		t.Fatalf("reload: exit %d\n%s\n%s", code, out, errs)
	}
	m := a.scrape()
	if m[`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`] != 3 || m[`sluice_concurrency_limiting_queued{limit="upload-pack"}`] != 1 ||
		m[`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`] != 1 {
		t.Fatalf("after lowering: in progress %v, queued %v, limit %v; want 3, 1, 1", m[`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`],
			m[`sluice_concurrency_limiting_queued{limit="upload-pack"}`], m[`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`])
	}
	// An invalid file is refused whole; the lowered limit stays.
	if err := os.WriteFile(cfgPath, []byte(lowered+"\nbogus_key = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs = runCLI(t, env, "reload", "--socket", a.socket)
	if code == 0 || !strings.Contains(out+errs, "bogus_key") {
		t.Fatalf("invalid reload: exit %d\n%s\n%s", code, out, errs)
	}
	// Two holders finish: 1 still runs, which the new limit allows alone.
	held[0].release()
	held[1].release()
	held[0].wait(t, 10*time.Second)
	held[1].wait(t, 10*time.Second)
	waitFor(t, 5*time.Second, "one running", func() bool {
		return a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 1
	})
	if waiter.admitted() {
		t.Fatal("waiter admitted while the lowered limit was full")
	}
	held[2].release()
	select {
	case <-waiter.first:
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not admitted after all holders finished")
	}
	waiter.release()
	for _, p := range append(held, waiter) {
		if code := p.wait(t, 10*time.Second); code != 0 {
			t.Errorf("exit %d: %s", code, p.stderr.String())
		}
	}
	// Each command's outcome is recorded when the agent hears of its exit,
	// a moment after the test's wait returns.
	waitFor(t, 5*time.Second, "4 commands recorded", func() bool {
		return a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`) >= 4
	})
	m = a.scrape()
	if m[`sluice_concurrency_limiting_acquiring_seconds_count{limit="upload-pack"}`] != 4 ||
		m[`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`] != 4 ||
		m[`sluice_requests_dropped_total{limit="upload-pack",reason="max_size"}`]+m[`sluice_requests_dropped_total{limit="upload-pack",reason="max_time"}`] != 0 {
		t.Errorf("counts after reload: %v admitted, %v ok, dropped %v/%v; want 4, 4, 0",
			m[`sluice_concurrency_limiting_acquiring_seconds_count{limit="upload-pack"}`], m[`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`],
			m[`sluice_requests_dropped_total{limit="upload-pack",reason="max_size"}`], m[`sluice_requests_dropped_total{limit="upload-pack",reason="max_time"}`])
	}
}
