package main

// demo.go: `sluice demo` shows sluice at work on a machine with nothing but
// git and the three sluice binaries. It builds nothing and installs
// nothing: everything lives in one temporary directory, and every process
// it starts runs in its own process group, stopped (and the directory
// removed) on success, error and Ctrl-C alike.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/gitwrap"
	"github.com/sluicehq/sluice/internal/agenttest"
)

const demoUsage = `usage: sluice demo [--clients N] [--duration D]

Show sluice limiting a clone storm, in a throw-away sandbox: generate a
repository, start sluiced (cgroups off) and two git daemons on 127.0.0.1,
one plain and one with git's upload-pack going through sluice-shim, then
let N clients clone it over git:// at once, again and again for D: first
from the plain daemon (without sluice), then through sluice. Each second a
line shows what sluiced has in flight and queued and how many it rejected;
each clone's outcome is printed as it ends, as the client itself printed
it, then the two runs side by side and the relevant /metrics lines.

The demo policy admits 2 clones of the repository at a time, queues 4 more
for up to 3s and rejects the rest. It needs git, and sluiced and
sluice-shim next to this sluice binary (bin/ after 'make build') or on
PATH. Nothing is left behind: processes are stopped and the temporary
directory removed, also on Ctrl-C.

flags:
`

// Demo settings.
const (
	demoCommits     = 3000 // a clone takes ~0.6 s on 2 cores
	demoFiles       = 50
	demoFileLines   = 400
	demoMaxPerKey   = 2
	demoQueueSize   = 4
	demoQueueWait   = 3 * time.Second
	demoRetryPause  = time.Second // a rejected client waits this long before trying again
	demoStartupWait = 20 * time.Second
	demoStopWait    = 5 * time.Second
)

func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	clients := fs.Int("clients", 12, "concurrent git clients")
	duration := fs.Duration("duration", 5*time.Second, "how long the clients keep cloning")
	if code, ok := parseFlags(fs, demoUsage, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sluice demo: takes no arguments; run 'sluice demo -h'")
		return 2
	}
	if *clients < 1 || *clients > 200 {
		fmt.Fprintf(stderr, "sluice demo: --clients %d: use 1 to 200\n", *clients)
		return 2
	}
	if *duration <= 0 || *duration > 5*time.Minute {
		fmt.Fprintf(stderr, "sluice demo: --duration %v: use more than 0 and at most 5m\n", *duration)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	d := &demo{out: &syncWriter{w: stdout}, clients: *clients, duration: *duration}
	err := d.run(ctx)
	d.cleanup()
	switch {
	case err != nil && ctx.Err() != nil:
		fmt.Fprintln(stderr, "sluice demo: interrupted; everything it started is stopped and its files removed")
		return 130
	case err != nil:
		fmt.Fprintf(stderr, "sluice demo: %v\n", err)
		return 1
	}
	return 0
}

// syncWriter serialises lines from the demo's goroutines.
type syncWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (s *syncWriter) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, format, args...)
}

// demo is one run of `sluice demo`.
type demo struct {
	out      *syncWriter
	clients  int
	duration time.Duration

	dir           string // temporary directory holding everything
	sluiced, shim string
	realGit       string
	socket        string
	metricsAddr   string
	port          int
	procs         []*exec.Cmd       // started daemons, stopped by cleanup
	waits         []<-chan struct{} // closed when procs[i] has exited
	plainPort     int               // git daemon without sluice

	seenMu sync.Mutex      // guards seen
	seen   map[string]bool // rejection lines printed in full
}

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.sluiced, d.shim, err = findSluiceBinaries(); err != nil {
		return err
	}
	if d.realGit, err = findRealGit(d.shim); err != nil {
		return err
	}
	if d.dir, err = os.MkdirTemp("", "sluice-demo-"); err != nil {
		return err
	}
	d.out.printf("sandbox %s (removed at the end)\n", d.dir)

	start := time.Now()
	repo := filepath.Join(d.dir, "demo.git")
	if err := generateRepo(ctx, d.realGit, repo, demoCommits, demoFiles, demoFileLines); err != nil {
		return err
	}
	d.out.printf("generated demo.git: %d commits in %.1fs\n", demoCommits, time.Since(start).Seconds())

	if err := d.startSluiced(ctx); err != nil {
		return err
	}
	if d.plainPort, err = d.startGitDaemon(ctx, false); err != nil {
		return err
	}
	if d.port, err = d.startGitDaemon(ctx, true); err != nil {
		return err
	}
	c, err := dialAdmin(d.socket)
	if err != nil {
		return err
	}
	defer c.Close()

	d.out.printf("\nrun 1 of 2, without sluice: %d clients clone git://127.0.0.1:%d/demo.git for %v\n\n",
		d.clients, d.plainPort, d.duration)
	plain := d.runClients(ctx, d.plainPort, nil)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	d.out.printf("\nrun 2 of 2, with sluice: %d clients clone git://127.0.0.1:%d/demo.git for %v; policy: %d clones of a repository at a time, %d more queued for up to %v, the rest rejected\n",
		d.clients, d.port, d.duration, demoMaxPerKey, demoQueueSize, demoQueueWait)
	d.out.printf("(each outcome is what that client printed: a rejected client hears \"remote error: sluice: …\")\n\n")
	results := d.runClients(ctx, d.port, c)
	if ctx.Err() != nil {
		return ctx.Err()
	}

	d.out.printf("\nper client (with sluice):\n")
	for i, r := range results {
		d.out.printf("  client %2d: %d ok, %d rejected, %d failed\n", i+1, r.ok, r.rejected, r.failed)
	}
	d.out.printf("\nside by side, %d clients for %v each:\n", d.clients, d.duration)
	for _, l := range compareRuns(plain, results) {
		d.out.printf("  %s\n", l)
	}
	lines, err := demoMetrics(ctx, d.metricsAddr)
	if err != nil {
		return err
	}
	d.out.printf("\nfrom http://%s/metrics:\n", d.metricsAddr)
	for _, l := range lines {
		d.out.printf("  %s\n", l)
	}
	return nil
}

// clientResult counts one client's clone outcomes and how long its
// successful clones took.
type clientResult struct {
	ok, rejected, failed int
	took                 []time.Duration
}

// compareRuns formats the two runs side by side.
func compareRuns(plain, sluice []clientResult) []string {
	type sum struct {
		ok, rejected, failed int
		took                 []time.Duration
	}
	total := func(rs []clientResult) sum {
		var s sum
		for _, r := range rs {
			s.ok, s.rejected, s.failed = s.ok+r.ok, s.rejected+r.rejected, s.failed+r.failed
			s.took = append(s.took, r.took...)
		}
		slices.Sort(s.took)
		return s
	}
	pct := func(d []time.Duration, p int) string {
		if len(d) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fs", d[(len(d)-1)*p/100].Seconds())
	}
	a, b := total(plain), total(sluice)
	row := func(name, x, y string) string { return fmt.Sprintf("%-30s %15s %15s", name, x, y) }
	return []string{
		row("", "without sluice", "with sluice"),
		row("clones completed", strconv.Itoa(a.ok), strconv.Itoa(b.ok)),
		row("rejected, told why by sluice", strconv.Itoa(a.rejected), strconv.Itoa(b.rejected)),
		row("failed otherwise", strconv.Itoa(a.failed), strconv.Itoa(b.failed)),
		row("completed clone time, median", pct(a.took, 50), pct(b.took, 50)),
		row("completed clone time, max", pct(a.took, 100), pct(b.took, 100)),
	}
}

// runClients runs the clone storm against port and prints each clone's
// outcome and, when c is not nil (sluice's run), a status line every
// second.
func (d *demo) runClients(ctx context.Context, port int, c *adminClient) []clientResult {
	results := make([]clientResult, d.clients)
	deadline := time.Now().Add(d.duration)
	var wg sync.WaitGroup
	for i := range d.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 1; time.Now().Before(deadline) && ctx.Err() == nil; n++ {
				outcome, detail, took := d.clone(ctx, port, i, n)
				switch outcome {
				case "ok":
					results[i].ok++
					results[i].took = append(results[i].took, took)
				case "rejected":
					results[i].rejected++
				default:
					results[i].failed++
				}
				if ctx.Err() != nil {
					return
				}
				d.out.printf("  client %2d: %s\n", i+1, detail)
				if outcome != "ok" {
					select {
					case <-ctx.Done():
					case <-time.After(demoRetryPause):
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	began := time.Now()
	shownTop := false
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return results
		case <-ctx.Done():
			<-done
			return results
		case <-tick.C:
			if c == nil {
				continue
			}
			st, err := c.Status(ctx)
			if err != nil {
				d.out.printf("[%3ds] %v\n", int(time.Since(began).Seconds()+0.5), err)
				continue
			}
			var inFlight, queued, rejected int64
			for _, l := range st.Limits {
				inFlight += l.InFlight
				queued += l.Queued
				rejected += l.DroppedMaxSize + l.DroppedMaxTime
			}
			secs := int(time.Since(began).Seconds() + 0.5)
			d.out.printf("[%3ds] in flight %d, queued %d, rejected so far %d\n", secs, inFlight, queued, rejected)
			if secs >= 2 && !shownTop {
				// Once, at the first tick after 2s (a loaded machine
				// skips ticks).
				shownTop = true
				d.out.printf("\n  what 'sluice top --once' shows now:\n")
				for _, l := range topLines(st, time.Now(), 110, sortCPU) {
					d.out.printf("%s\n", strings.TrimRight("  | "+l, " "))
				}
				d.out.printf("\n")
			}
		}
	}
}

// clone runs one git clone from port and describes its outcome from what
// that client printed: the rejection a git daemon's client hears arrives
// as "fatal: remote error: sluice: …" (the shim's ERR packet), over the
// pack-objects hook as "remote: sluice: …".
func (d *demo) clone(ctx context.Context, port, client, n int) (outcome, detail string, took time.Duration) {
	dest := filepath.Join(d.dir, "clones", fmt.Sprintf("p%d-c%d-%d", port, client+1, n))
	defer os.RemoveAll(dest)
	cmd := exec.CommandContext(ctx, d.realGit, "clone", "-q", fmt.Sprintf("git://127.0.0.1:%d/demo.git", port), dest)
	cmd.Env = d.gitEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	outcome, line := classifyClone(stderr.String(), err)
	switch outcome {
	case "ok":
		return outcome, fmt.Sprintf("ok in %.2fs", took.Seconds()), took
	case "rejected":
		return outcome, fmt.Sprintf("rejected after %.2fs: %s", took.Seconds(), d.once(line)), took
	}
	return outcome, fmt.Sprintf("failed after %.2fs: %v: %s", took.Seconds(), err, line), took
}

// classifyClone tells a clone's outcome from its own stderr: "ok",
// "rejected" with sluice's line (the "sluice: waiting …" progress line is
// not a reason), or "failed" with the client's last line.
func classifyClone(stderr string, err error) (outcome, line string) {
	if err == nil {
		return "ok", ""
	}
	last := ""
	for _, l := range strings.Split(stderr, "\n") {
		// A refreshed waiting line holds several \r-separated states.
		if i := strings.LastIndexByte(l, '\r'); i >= 0 {
			l = l[i+1:]
		}
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		last = l
		i := strings.Index(l, "sluice: ")
		if i < 0 {
			continue
		}
		msg := l[i:]
		if strings.HasPrefix(msg, "sluice: waiting ") || strings.HasPrefix(msg, "sluice: waited ") {
			continue
		}
		return "rejected", msg
	}
	return "failed", last
}

// once returns line the first time it is seen, and a short reference to
// it afterwards, so a storm of identical rejections stays readable.
func (d *demo) once(line string) string {
	d.seenMu.Lock()
	defer d.seenMu.Unlock()
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	// Every rejection carries its own correlation id: compare without it.
	key, id, _ := strings.Cut(line, " (correlation id ")
	if d.seen[key] {
		if id != "" {
			return "the same sluice: line (correlation id " + id
		}
		return "the same sluice: line"
	}
	d.seen[key] = true
	return line
}

// gitEnv is a hermetic environment for git: no user or system config.
func (d *demo) gitEnv() []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + d.dir,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_TERMINAL_PROMPT=0",
		"LANG=C",
	}
}

// startSluiced writes the demo policy and starts sluiced, returning once
// it is ready.
func (d *demo) startSluiced(ctx context.Context) error {
	d.socket = filepath.Join(d.dir, "run", "sluice.sock")
	policy := fmt.Sprintf(`# sluice demo policy
[agent]
socket = %q
metrics_addr = "127.0.0.1:0"

[git]
bin = %q

[cgroups]
enabled = false

[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = %d
max_queue_size = %d
max_queue_wait = %q
`, d.socket, d.realGit, demoMaxPerKey, demoQueueSize, demoQueueWait.String())
	logFile := filepath.Join(d.dir, "sluiced.log")
	a := &agenttest.Agent{Bin: d.sluiced, Dir: d.dir, Socket: d.socket, Env: append(d.gitEnv(), "SLUICE_SOCKET="+d.socket),
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true}, LogFile: logFile, ReadyTimeout: demoStartupWait}
	err := a.Start(policy)
	if a.Cmd() != nil && a.Cmd().Process != nil {
		// cleanup stops it with the daemons.
		d.procs = append(d.procs, a.Cmd())
		d.waits = append(d.waits, a.Done())
	}
	switch {
	case err != nil && a.Done() == nil:
		return err
	case err != nil && a.Exited():
		b, _ := os.ReadFile(logFile)
		return fmt.Errorf("sluiced exited at start:\n%s", b)
	case err != nil:
		return fmt.Errorf("sluiced not ready after %v; its log is %s", demoStartupWait, logFile)
	}
	if a.Metrics == "" {
		return errors.New("sluiced did not say where its metrics listen")
	}
	d.metricsAddr = strings.TrimPrefix(a.Metrics, "http://")
	d.out.printf("sluiced ready: socket %s, metrics http://%s\n", d.socket, d.metricsAddr)
	return nil
}

// startGitDaemon starts git daemon on a free loopback port — withSluice:
// with git's upload-pack (and pack-objects hook) going through the shim —
// waits until it accepts connections and returns the port.
//
// git daemon runs `git upload-pack --strict --timeout=0 .` found on PATH,
// and git puts its exec path first on PATH: so the demo gives it an exec
// path of its own, mirroring the real one with git, git-upload-pack,
// git-receive-pack and git-upload-archive pointing at the shim.
func (d *demo) startGitDaemon(ctx context.Context, withSluice bool) (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	cmd := exec.Command(d.realGit, "daemon", "--reuseaddr", "--base-path="+d.dir, "--export-all",
		"--listen=127.0.0.1", "--port="+strconv.Itoa(port))
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + d.dir,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"LANG=C",
	}
	logName := "git-daemon-plain.log"
	if withSluice {
		execPath, err := mirrorExecPath(d.realGit, d.shim, filepath.Join(d.dir, "exec"))
		if err != nil {
			return 0, err
		}
		gitconfig := filepath.Join(d.dir, "gitconfig")
		if err := os.WriteFile(gitconfig, []byte("[uploadpack]\n\tpackObjectsHook = "+d.shim+"\n"), 0o644); err != nil {
			return 0, err
		}
		cmd.Env = []string{
			"PATH=" + execPath + ":" + os.Getenv("PATH"),
			"GIT_EXEC_PATH=" + execPath,
			"HOME=" + d.dir,
			"GIT_CONFIG_SYSTEM=" + gitconfig,
			"GIT_CONFIG_GLOBAL=/dev/null",
			"SLUICE_SOCKET=" + d.socket,
			"SLUICE_REAL_GIT=" + d.realGit,
			"SLUICE_SHIM_LOG=" + filepath.Join(d.dir, "shim.log"),
			"LANG=C",
		}
		logName = "git-daemon.log"
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The daemon's stderr (its children's too) is the server's log; what
	// a client hears, it prints itself.
	logFile, err := os.Create(filepath.Join(d.dir, logName))
	if err != nil {
		return 0, err
	}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	go func() { io.Copy(logFile, pr); logFile.Close() }()
	exited, err := d.startProc(cmd, pw)
	if err != nil {
		return 0, fmt.Errorf("start git daemon: %w", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(demoStartupWait)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return 0, fmt.Errorf("git daemon exited at start (port %d taken?)", port)
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("git daemon not listening on %s after %v", addr, demoStartupWait)
		}
	}
	if withSluice {
		d.out.printf("git daemon ready: git://%s/ (upload-pack through %s)\n", addr, d.shim)
	} else {
		d.out.printf("git daemon ready: git://%s/ (plain git, without sluice)\n", addr)
	}
	return port, nil
}

// startProc starts cmd, registers it for cleanup and returns a channel
// closed when it has exited (closing w, its output pipe, then).
func (d *demo) startProc(cmd *exec.Cmd, w *io.PipeWriter) (<-chan struct{}, error) {
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		w.Close()
		close(exited)
	}()
	d.procs = append(d.procs, cmd)
	d.waits = append(d.waits, exited)
	return exited, nil
}

// cleanup stops every process group the demo started (SIGTERM, then
// SIGKILL after demoStopWait) in reverse order, and removes the sandbox.
func (d *demo) cleanup() {
	for i := len(d.procs) - 1; i >= 0; i-- {
		pgid := d.procs[i].Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-d.waits[i]:
		case <-time.After(demoStopWait):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-d.waits[i]
		}
		// Children of the group leader (a git daemon's upload-packs)
		// may outlive it briefly.
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}

// findSluiceBinaries finds sluiced and sluice-shim next to this executable,
// else on PATH.
func findSluiceBinaries() (sluiced, shim string, err error) {
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	dir := ""
	if err == nil {
		dir = filepath.Dir(self)
	}
	return findBinary("sluiced", dir), findBinary("sluice-shim", dir), binariesErr(dir)
}

// findBinary returns dir/name if it is an executable file, else name's
// path on PATH, else "".
func findBinary(name, dir string) string {
	if dir != "" {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	return ""
}

func binariesErr(dir string) error {
	var missing []string
	for _, n := range []string{"sluiced", "sluice-shim"} {
		if findBinary(n, dir) == "" {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	where := "next to this sluice binary"
	if dir != "" {
		where += " (" + dir + ")"
	}
	return fmt.Errorf("cannot find %s %s or on PATH; run 'make build' and use bin/sluice, or install sluice", strings.Join(missing, " and "), where)
}

// findRealGit finds the git the shim would run (gitwrap.FindRealGitFor):
// $SLUICE_REAL_GIT, else git on PATH skipping the shim (a server's PATH
// may have a git link to it), else /usr/bin/git.
func findRealGit(shim string) (string, error) {
	git, err := gitwrap.FindRealGitFor(os.Getenv, "", shim)
	if err != nil && os.Getenv(gitwrap.RealGitEnv) == "" {
		return "", errors.New("git is not installed (or only the shim is on PATH): install git, e.g. apt-get install git")
	}
	return git, err
}

// mirrorExecPath makes dir an exec path for git: links to everything in
// the real git's exec path, but with git and the server-side commands
// pointing at the shim. It returns dir.
func mirrorExecPath(realGit, shim, dir string) (string, error) {
	out, err := exec.Command(realGit, "--exec-path").Output()
	if err != nil {
		return "", fmt.Errorf("%s --exec-path: %w", realGit, err)
	}
	real := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(real, "git-daemon")); err != nil {
		return "", fmt.Errorf("git daemon is not installed (%v): install it with git (Debian: apt-get install git; some distributions package it as git-daemon)", err)
	}
	ents, err := os.ReadDir(real)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	viaShim := map[string]bool{"git": true, "git-upload-pack": true, "git-receive-pack": true, "git-upload-archive": true}
	for name := range viaShim {
		if err := os.Symlink(shim, filepath.Join(dir, name)); err != nil {
			return "", err
		}
	}
	for _, e := range ents {
		if viaShim[e.Name()] {
			continue
		}
		if err := os.Symlink(filepath.Join(real, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// generateRepo creates a bare repository at dir with a generated history
// of commits on main, through git fast-import.
func generateRepo(ctx context.Context, git, dir string, commits, files, lines int) error {
	if out, err := exec.CommandContext(ctx, git, "init", "-q", "--bare", "--initial-branch=main", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("git init: %v: %s", err, out)
	}
	cmd := exec.CommandContext(ctx, git, "fast-import", "--quiet")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_DIR="+dir)
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("git fast-import: %w", err)
	}
	werr := writeFastImport(in, commits, files, lines)
	in.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("git fast-import: %v: %s", err, stderr.String())
	}
	return werr
}

// writeFastImport writes a git fast-import stream: commits commits on
// refs/heads/main, each rewriting a few lines of one of files files of
// lines random hex lines. The same arguments give the same stream.
func writeFastImport(w io.Writer, commits, files, lines int) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	line := func() string {
		return fmt.Sprintf("%016x %016x %016x\n", rng.Uint64(), rng.Uint64(), rng.Uint64())
	}
	content := make([][]string, files)
	for f := range content {
		content[f] = make([]string, lines)
		for l := range content[f] {
			content[f][l] = line()
		}
	}
	for c := range commits {
		f := c % files
		for range 5 {
			content[f][rng.IntN(lines)] = line()
		}
		size := 0
		for _, l := range content[f] {
			size += len(l)
		}
		fmt.Fprintf(bw, "blob\nmark :%d\ndata %d\n", c+1, size)
		for _, l := range content[f] {
			bw.WriteString(l)
		}
		msg := fmt.Sprintf("change %d of file%03d.txt", c+1, f)
		fmt.Fprintf(bw, "\ncommit refs/heads/main\ncommitter sluice demo <demo@sluice.invalid> %d +0000\ndata %d\n%s\nM 100644 :%d file%03d.txt\n\n",
			1700000000+c*60, len(msg), msg, c+1, f)
	}
	return bw.Flush()
}

// demoMetrics scrapes the agent and keeps the series worth showing: every
// sluice_ series but histogram buckets and build info.
func demoMetrics(ctx context.Context, addr string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	return filterMetrics(resp.Body)
}

// filterMetrics keeps the sample lines of sluice_ series, without histogram
// buckets and build info.
func filterMetrics(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "sluice_") || strings.HasPrefix(l, "sluice_build_info") {
			continue
		}
		name, _, _ := strings.Cut(l, "{")
		if strings.HasSuffix(name, "_bucket") {
			continue
		}
		out = append(out, l)
	}
	return out, sc.Err()
}
