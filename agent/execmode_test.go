package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// fakeTracer records Track/Untrack; prev maps a pid to the root Track
// reports it descends from.
type fakeTracer struct {
	mu        sync.Mutex
	tracked   map[int]bool
	prev      map[int]int
	fail      error
	untracked []int
	// defaultRoot is returned for pids not in prev (0: none).
	defaultRoot int
}

func (f *fakeTracer) Track(pid int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return 0, f.fail
	}
	f.tracked[pid] = true
	if r, ok := f.prev[pid]; ok {
		return r, nil
	}
	return f.defaultRoot, nil
}

func (f *fakeTracer) Untrack(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.tracked, pid)
	f.untracked = append(f.untracked, pid)
}

// finishedCmd is one CommandFinished call.
type finishedCmd struct {
	subcmd, outcome string
	user, system    time.Duration
	maxRSS          int64
}

type recordingObserver struct {
	nopObserver
	mu        sync.Mutex
	finished  []finishedCmd
	unwrapped []string
}

func (o *recordingObserver) CommandFinished(_, subcmd, outcome string, user, system, _ time.Duration, maxRSS int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.finished = append(o.finished, finishedCmd{subcmd, outcome, user, system, maxRSS})
}

func (o *recordingObserver) Unwrapped(subcmd string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.unwrapped = append(o.unwrapped, subcmd)
}

func (o *recordingObserver) snapshot() []finishedCmd {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]finishedCmd(nil), o.finished...)
}

const execPolicy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "global"
max_per_key = 2
max_queue_size = 2
max_queue_wait = "10s"

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "global"
max_per_key = 2
max_queue_size = 2
max_queue_wait = "10s"
`

func startExecAgent(t *testing.T, tr *fakeTracer, obs Observer) (*Agent, string) {
	t.Helper()
	cfg, err := policy.Parse("test.toml", []byte(execPolicy))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t), Observer: obs, Tracer: tr})
	sock, err := Listen(SocketOptions{Path: filepath.Join(t.TempDir(), "s.sock")})
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
	return a, sock.Path
}

// TestExecHelperProcess is the peer of the exec-mode tests: a separate
// process (so the agent has a real pid and pidfd to hold) that asks for
// admission like the shim, says whether it was told to exec, closes the
// connection as exec would, and lives until its stdin closes.
func TestExecHelperProcess(t *testing.T) {
	sock := os.Getenv("SLUICE_EXEC_HELPER")
	if sock == "" {
		t.Skip("helper process for the exec-mode tests")
	}
	c, err := shimproto.Dial(sock, time.Second)
	if err != nil {
		os.Stdout.WriteString("dial: " + err.Error() + "\n")
		os.Exit(2)
	}
	rep, err := c.Admit(&shimproto.AdmitRequest{
		Command: "git-upload-pack", Subcommand: os.Getenv("SLUICE_EXEC_SUBCMD"), Repo: []byte("/srv/a.git"),
		CanExec: os.Getenv("SLUICE_EXEC_CAN") == "1",
	}, time.Now().Add(5*time.Second), nil)
	if err != nil {
		os.Stdout.WriteString("admit: " + err.Error() + "\n")
		os.Exit(2)
	}
	if rep.Exec {
		c.Close()
		os.Stdout.WriteString("exec\n")
	} else {
		os.Stdout.WriteString("supervised\n")
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	if !rep.Exec {
		_ = c.Finish(&shimproto.Finished{UserUsec: 7})
		c.Close()
	}
	os.Exit(0)
}

// execPeer is a running TestExecHelperProcess.
type execPeer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mode  string // "exec" or "supervised"
}

func startExecPeer(t *testing.T, sock, subcmd string, canExec bool) *execPeer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestExecHelperProcess$")
	can := "0"
	if canExec {
		can = "1"
	}
	cmd.Env = append(os.Environ(), "SLUICE_EXEC_HELPER="+sock, "SLUICE_EXEC_SUBCMD="+subcmd, "SLUICE_EXEC_CAN="+can)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &execPeer{cmd: cmd, stdin: stdin}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	p.mode = strings.TrimSpace(line)
	return p
}

func (p *execPeer) pid() int { return p.cmd.Process.Pid }

// end makes the peer exit and reaps it.
func (p *execPeer) end(t *testing.T) {
	t.Helper()
	p.stdin.Close()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("helper exited: %v", err)
	}
}

func inFlight(a *Agent, rule string) int64 {
	for _, s := range a.Limiters() {
		if s.Name == rule {
			return int64(s.Running)
		}
	}
	return -1
}

func TestExecModeHoldsLeaseUntilExitEvent(t *testing.T) {
	tr := &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}
	obs := &recordingObserver{}
	a, sock := startExecAgent(t, tr, obs)

	p := startExecPeer(t, sock, "upload-pack", true)
	if p.mode != "exec" {
		t.Fatalf("peer told %q, want exec", p.mode)
	}
	// The connection is closed, yet the slot stays taken: the lease is the
	// process now.
	time.Sleep(50 * time.Millisecond)
	if n := inFlight(a, "upload-pack"); n != 1 {
		t.Fatalf("in flight after the shim's connection closed = %d, want 1", n)
	}
	if !tr.tracked[p.pid()] {
		t.Fatalf("pid %d not tracked", p.pid())
	}
	// The exit event carries what the kernel measured.
	a.ProcessExited(ProcessExit{PID: p.pid(), User: 1500 * time.Millisecond, System: 250 * time.Millisecond,
		MaxRSSKiB: 2048, ExitCode: 0, End: time.Now()})
	waitUntil(t, "lease released", func() bool { return inFlight(a, "upload-pack") == 0 })
	got := obs.snapshot()
	if len(got) != 1 || got[0] != (finishedCmd{"upload-pack", OutcomeOK, 1500 * time.Millisecond, 250 * time.Millisecond, 2048 * 1024}) {
		t.Fatalf("finished = %+v", got)
	}
	if len(a.Leases()) != 0 {
		t.Fatalf("lease table not empty: %+v", a.Leases())
	}
	a.execMu.Lock()
	n := len(a.execLeases)
	a.execMu.Unlock()
	if n != 0 || tr.tracked[p.pid()] {
		t.Fatalf("exec lease not forgotten: %d registered, tracked %v", n, tr.tracked)
	}
	p.end(t)
}

// execPeerRunning starts an agent with a fake tracer and an exec-mode
// upload-pack peer, and returns once the agent counts it running.
func execPeerRunning(t *testing.T) (*Agent, *fakeTracer, *recordingObserver, *execPeer) {
	t.Helper()
	tr := &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}
	obs := &recordingObserver{}
	a, sock := startExecAgent(t, tr, obs)
	p := startExecPeer(t, sock, "upload-pack", true)
	if p.mode != "exec" {
		t.Fatalf("peer told %q, want exec", p.mode)
	}
	waitUntil(t, "running", func() bool { return inFlight(a, "upload-pack") == 1 })
	return a, tr, obs, p
}

// TestExecModeWithoutExitEventReleasesOnPidfd: a process whose exit event
// never comes frees its slot by its pidfd and, after the late-event
// window, counts as "unknown" with no CPU: never "signaled".
func TestExecModeWithoutExitEventReleasesOnPidfd(t *testing.T) {
	defer func(w time.Duration) { lateExitWindow = w }(lateExitWindow)
	lateExitWindow = 300 * time.Millisecond
	a, tr, obs, p := execPeerRunning(t)
	pid := p.pid()
	p.end(t) // exits; the tracer (fake) says nothing
	waitUntil(t, "lease released by the pidfd", func() bool { return inFlight(a, "upload-pack") == 0 })
	waitUntil(t, "outcome recorded after the window", func() bool { return len(obs.snapshot()) == 1 })
	got := obs.snapshot()
	if got[0].outcome != OutcomeUnknown || got[0].user != 0 {
		t.Fatalf("finished = %+v, want one unknown with no CPU", got)
	}
	// An event after the window changes nothing.
	a.ProcessExited(ProcessExit{PID: pid, User: time.Second, End: time.Now()})
	if got := obs.snapshot(); len(got) != 1 {
		t.Fatalf("finished = %+v after a too-late event", got)
	}
	tr.mu.Lock()
	tracked := tr.tracked[pid]
	tr.mu.Unlock()
	if tracked {
		t.Fatal("pid still tracked after the window")
	}
}

// TestExecModeLateExitEvent: the fake tracer delivers the exit event after
// the pidfd released the slot (as under load): the command still gets its
// real outcome and CPU, once, and an event for a later process reusing
// the pid (it exited after the pidfd said the first one was gone) is not
// taken for it.
func TestExecModeLateExitEvent(t *testing.T) {
	a, _, obs, p := execPeerRunning(t)
	pid := p.pid()
	start, err := procfs.Default.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	exited := time.Now()
	p.end(t)
	waitUntil(t, "slot released by the pidfd", func() bool { return inFlight(a, "upload-pack") == 0 })
	if got := obs.snapshot(); len(got) != 0 {
		t.Fatalf("outcome recorded before the exit event: %+v", got)
	}
	// A reused pid's exit, long after: not this lease's.
	a.ProcessExited(ProcessExit{PID: pid, User: 9 * time.Second, ExitCode: 1, End: time.Now().Add(time.Second)})
	if got := obs.snapshot(); len(got) != 0 {
		t.Fatalf("a later process's exit was taken for the lease: %+v", got)
	}
	// A reused pid's exit in time, but its start time names another process.
	a.ProcessExited(ProcessExit{PID: pid, User: 8 * time.Second, ExitCode: 1, End: exited, StartTicks: start + 50})
	if got := obs.snapshot(); len(got) != 0 {
		t.Fatalf("an exit with another start time was taken for the lease: %+v", got)
	}
	a.ProcessExited(ProcessExit{PID: pid, User: 700 * time.Millisecond, System: 50 * time.Millisecond,
		MaxRSSKiB: 1024, ExitCode: 0, End: exited, StartTicks: start})
	got := obs.snapshot()
	if len(got) != 1 || got[0] != (finishedCmd{"upload-pack", OutcomeOK, 700 * time.Millisecond, 50 * time.Millisecond, 1024 * 1024}) {
		t.Fatalf("finished = %+v, want the late report's outcome and CPU", got)
	}
	a.ProcessExited(ProcessExit{PID: pid, User: time.Second, End: exited})
	if got := obs.snapshot(); len(got) != 1 {
		t.Fatalf("counted twice: %+v", got)
	}
	a.execMu.Lock()
	n := len(a.lateExits)
	a.execMu.Unlock()
	if n != 0 {
		t.Fatalf("%d late entries left", n)
	}
}

func TestExecModeSubtractsNestedLeases(t *testing.T) {
	tr := &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}
	obs := &recordingObserver{}
	a, sock := startExecAgent(t, tr, obs)
	up := startExecPeer(t, sock, "upload-pack", true)
	po := startExecPeerUnder(t, sock, tr, up.pid())
	if up.mode != "exec" || po.mode != "exec" {
		t.Fatalf("modes %q %q", up.mode, po.mode)
	}
	a.ProcessExited(ProcessExit{PID: po.pid(), User: time.Second, System: 100 * time.Millisecond, End: time.Now()})
	waitUntil(t, "pack-objects released", func() bool { return inFlight(a, "pack-objects") == 0 })
	// upload-pack's kernel CPU includes its reaped pack-objects.
	a.ProcessExited(ProcessExit{PID: up.pid(), User: 1300 * time.Millisecond, System: 150 * time.Millisecond, End: time.Now()})
	waitUntil(t, "upload-pack released", func() bool { return inFlight(a, "upload-pack") == 0 })
	got := obs.snapshot()
	if len(got) != 2 {
		t.Fatalf("finished = %+v", got)
	}
	if got[0].subcmd != "pack-objects" || got[0].user != time.Second {
		t.Errorf("pack-objects = %+v", got[0])
	}
	if got[1].subcmd != "upload-pack" || got[1].user != 300*time.Millisecond || got[1].system != 50*time.Millisecond {
		t.Errorf("upload-pack = %+v, want its own CPU only (300ms user, 50ms system)", got[1])
	}
	po.end(t)
	up.end(t)
}

// startExecPeerUnder starts a pack-objects peer that the fake tracer says
// descends from root (its pid is known only after it starts, so the fake
// answers root for every new pid).
func startExecPeerUnder(t *testing.T, sock string, tr *fakeTracer, root int) *execPeer {
	t.Helper()
	tr.mu.Lock()
	tr.defaultRoot = root
	tr.mu.Unlock()
	return startExecPeer(t, sock, "pack-objects", true)
}

func TestExecModeNeedsTracerAndShim(t *testing.T) {
	tr := &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}
	a, sock := startExecAgent(t, tr, &recordingObserver{})
	// A client that cannot exec is supervised.
	p := startExecPeer(t, sock, "upload-pack", false)
	if p.mode != "supervised" {
		t.Fatalf("can_exec=false: told %q", p.mode)
	}
	p.end(t)
	waitUntil(t, "released", func() bool { return inFlight(a, "upload-pack") == 0 })
	// A tracer that cannot follow the process: supervised.
	tr.mu.Lock()
	tr.fail = errors.New("tracked map full")
	tr.mu.Unlock()
	p = startExecPeer(t, sock, "upload-pack", true)
	if p.mode != "supervised" {
		t.Fatalf("Track failed: told %q", p.mode)
	}
	p.end(t)
	waitUntil(t, "released", func() bool { return inFlight(a, "upload-pack") == 0 })
}

func TestGitExecutedCountsOnlyUnwrappedLimitedCommands(t *testing.T) {
	execs := []GitExec{
		{PID: 10, Argv: []string{"/usr/lib/git-core/git-pack-objects", "--stdout"}},   // counted
		{PID: 11, Argv: []string{"git", "-c", "a=b", "upload-pack", "/srv/a.git"}},    // counted
		{PID: 12, Root: 12, Argv: []string{"git", "pack-objects", "--stdout"}},        // admitted in place
		{PID: 13, Root: 9, Argv: []string{"git", "pack-objects", "--revs"}},           // child of an admitted git
		{PID: 14, Argv: []string{"git", "status"}},                                    // not limited
		{PID: 15, Argv: []string{"/usr/lib/git-core/git-receive-pack", "/srv/a.git"}}, // no rule matches it here
	}
	run := func(extra string) []string {
		obs := &recordingObserver{}
		cfg, err := policy.Parse("test.toml", []byte(execPolicy+extra))
		if err != nil {
			t.Fatal(err)
		}
		a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t), Observer: obs})
		for _, e := range execs {
			a.GitExecuted(e)
		}
		return obs.unwrapped
	}
	// unwrapped_scope = "all": every exec outside an admitted tree.
	if got := strings.Join(run("\n[ebpf]\nunwrapped_scope = \"all\"\n"), ","); got != "pack-objects,upload-pack" {
		t.Fatalf("unwrapped = %q, want pack-objects,upload-pack", got)
	}
	// The default, "servers": these pids descend from no Git server (they
	// do not even exist), so none is counted.
	if got := run(""); len(got) != 0 {
		t.Fatalf("unwrapped with the default scope = %q, want none", got)
	}
}

func startStateAgent(t *testing.T, dir string, tr ProcessTracer, obs Observer) (*Agent, string, context.CancelFunc, chan error) {
	t.Helper()
	cfg, err := policy.Parse("test.toml", []byte(execPolicy))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t), Observer: obs, Tracer: tr, StateDir: dir})
	adopted, stale, err := a.Recover()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recovered: %d adopted, %d stale", adopted, stale)
	sock, err := Listen(SocketOptions{Path: filepath.Join(t.TempDir(), "s.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	served := make(chan struct{})
	go func() { done <- a.Serve(ctx, sock); close(served) }()
	t.Cleanup(func() { cancel(); <-served; closeStateDir(a) })
	return a, sock.Path, cancel, done
}

func TestRestartAdoptsRunningCommands(t *testing.T) {
	// The fake tracer reports no exits: outcomes come after the window.
	defer func(w time.Duration) { lateExitWindow = w }(lateExitWindow)
	lateExitWindow = 200 * time.Millisecond
	dir := t.TempDir()
	tr := &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}
	a1, sock, stop1, done1 := startStateAgent(t, dir, tr, &recordingObserver{})
	ex := startExecPeer(t, sock, "upload-pack", true)   // exec mode
	sup := startExecPeer(t, sock, "upload-pack", false) // supervising
	waitUntil(t, "both running", func() bool { return inFlight(a1, "upload-pack") == 2 })
	// A record of a process that has ended, and garbage.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	st, _ := procfs.Default.StartTime(os.Getpid())
	writeRecord(t, dir, "00000000000000aa", leaseRecord{PID: gone.Process.Pid, Start: st, Limit: "upload-pack", Key: "global"})
	if err := os.WriteFile(filepath.Join(dir, "00000000000000bb"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}

	stop1() // graceful stop: the commands keep running, their records stay
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	obs := &recordingObserver{}
	a2, _, stop2, done2 := startStateAgent(t, dir, &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}, obs)
	defer func() { stop2(); <-done2 }()
	if n := inFlight(a2, "upload-pack"); n != 2 {
		t.Fatalf("after restart in flight = %d, want 2 (both commands still run)", n)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("state files after recovery: %d, want the 2 live ones", len(ents))
	}
	ex.end(t)
	waitUntil(t, "exec-mode command released", func() bool { return inFlight(a2, "upload-pack") == 1 })
	sup.end(t)
	waitUntil(t, "supervised command released", func() bool { return inFlight(a2, "upload-pack") == 0 })
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("state files left: %d", len(ents))
	}
	waitUntil(t, "both outcomes recorded", func() bool { return len(obs.snapshot()) == 2 })
}

func writeRecord(t *testing.T, dir, id string, rec leaseRecord) {
	t.Helper()
	b, err := json.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, id), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRestartKeepsNegotiationEnd adopts a command whose negotiation
// deadline passed while no agent ran: without the previous agent's
// negotiation marker the new agent stops it at once; with the marker (the
// negotiation had ended: the transfer was running) it leaves it alone,
// and the marker goes with the lease.
func TestRestartKeepsNegotiationEnd(t *testing.T) {
	// The fake tracer reports no exits: outcomes come after the window.
	defer func(w time.Duration) { lateExitWindow = w }(lateExitWindow)
	lateExitWindow = 200 * time.Millisecond
	for _, marked := range []bool{false, true} {
		t.Run(fmt.Sprintf("marked=%v", marked), func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Chmod(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			t.Cleanup(func() { cmd.Process.Kill(); <-exited })
			pid := cmd.Process.Pid
			st, err := procfs.Default.StartTime(pid)
			if err != nil {
				t.Fatal(err)
			}
			const id = "00000000000000c1"
			writeRecord(t, dir, id, leaseRecord{PID: pid, Start: st, Limit: "upload-pack", Key: "global",
				Command: "git-upload-pack", Subcommand: "upload-pack", Admitted: time.Now().Add(-10 * time.Second),
				Arrived: time.Now().Add(-11 * time.Second), AdmittedBoot: bootNow() - int64(10*time.Second),
				Deadlines: &recordDeadlines{NegotiationMS: 500, KillGraceMS: 200}})
			if marked {
				if err := os.WriteFile(filepath.Join(dir, id+negotiatedSuffix), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// A marker whose lease is gone is removed at start.
			if err := os.WriteFile(filepath.Join(dir, "00000000000000c2"+negotiatedSuffix), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			obs := &recordingObserver{}
			a, _, stop, done := startStateAgent(t, dir, &fakeTracer{tracked: map[int]bool{}, prev: map[int]int{}}, obs)
			defer func() { stop(); <-done }()
			// Before the test ends, the lease's outcome (unknown: no exit
			// event) is recorded, so nothing logs after it.
			defer waitUntil(t, "outcome recorded", func() bool { return len(obs.snapshot()) == 1 })
			if _, err := os.Stat(filepath.Join(dir, "00000000000000c2"+negotiatedSuffix)); !os.IsNotExist(err) {
				t.Errorf("orphan negotiation marker not removed at start: %v", err)
			}
			if !marked {
				select {
				case <-exited:
				case <-time.After(30 * time.Second):
					t.Fatal("the adopted command outlived its negotiation deadline")
				}
				return
			}
			a.timeouts.mu.Lock()
			pending := a.timeouts.pending[pid]
			a.timeouts.mu.Unlock()
			if pending != nil {
				t.Fatal("a negotiation that had ended is bounded again after the restart")
			}
			select {
			case <-exited:
				t.Fatal("the adopted transfer was stopped by the negotiation timeout")
			case <-time.After(time.Second): // 9.5 s past the deadline already
			}
			cmd.Process.Kill()
			<-exited
			waitUntil(t, "lease released", func() bool { return inFlight(a, "upload-pack") == 0 })
			waitUntil(t, "state and marker removed", func() bool {
				ents, _ := os.ReadDir(dir)
				return len(ents) == 0
			})
		})
	}
}
