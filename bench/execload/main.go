// Command execload measures what the eBPF tracer costs unrelated work and
// how quickly it reports exits (run as root):
//
//   - an exec-heavy loop that has nothing to do with git (fork+exec of
//     /bin/true from a few parallel workers), timed per exec, with no
//     tracer, with the tracer loaded (a few pids tracked, none of them the
//     loop), and with the loop itself inside a tracked tree (every exit
//     reported), interleaved in rounds so machine noise hits all alike;
//   - for tracked git processes, the delay from wait4 returning to the
//     Exit event being read, and from the kernel's exit tracepoint to it.
//
// Every distribution is reported as p50/p95/p99/mean; the loop variants
// also as a ratio to the no-tracer baseline of the same run.
//
//	go run ./bench/execload            # N=3000 execs per variant, 6 rounds
//	go run ./bench/execload -smoke     # tiny, for CI
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	cebpf "github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/ebpf"
	"github.com/sluicehq/sluice/internal/stats"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "execload:", err)
		os.Exit(1)
	}
}

type options struct {
	n, rounds, workers, gitRuns, sleepers int
	smoke                                 bool
}

// variant is one way of running the exec loop.
type variant struct {
	name string
	// setup prepares the variant before a round's loop and returns what
	// undoes it; nil for the baseline.
	setup func() (func(), error)
	durs  []time.Duration
}

func run() error {
	var o options
	flag.IntVar(&o.n, "n", 3000, "execs of /bin/true per variant, over all rounds")
	flag.IntVar(&o.rounds, "rounds", 6, "rounds; each runs every variant once, in a rotating order")
	flag.IntVar(&o.workers, "workers", 4, "parallel exec workers")
	flag.IntVar(&o.gitRuns, "git", 200, "tracked git processes for the exit-delay measurement")
	flag.IntVar(&o.sleepers, "tracked", 4, "idle processes tracked while the tracer variant runs")
	flag.BoolVar(&o.smoke, "smoke", false, "tiny run for CI: N=60, 2 rounds, 10 git runs")
	flag.Parse()
	if o.smoke {
		o.n, o.rounds, o.gitRuns = 60, 2, 10
	}
	if o.n < o.rounds || o.rounds < 1 || o.workers < 1 {
		return errors.New("need -n >= -rounds >= 1 and -workers >= 1")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		return fmt.Errorf("git not found: %w", err)
	}
	bins, err := ebpf.GitBinaries(git)
	if err != nil {
		return err
	}
	// Probe once so a host without eBPF fails (or, in smoke mode, skips)
	// with the reason before any measuring.
	probe, err := ebpf.Open(ebpf.Options{GitBinaries: bins})
	if err != nil {
		if o.smoke && errors.Is(err, ebpf.ErrUnavailable) {
			fmt.Println("execload: SKIP:", err)
			return nil
		}
		return err
	}
	probe.Close()

	sleepers, err := startSleepers(o.sleepers)
	defer stopSleepers(sleepers)
	if err != nil {
		return err
	}

	var tr *ebpf.Tracer
	var stopRun func()
	openTracer := func() error {
		t, err := ebpf.Open(ebpf.Options{GitBinaries: bins})
		if err != nil {
			return err
		}
		for _, s := range sleepers {
			if _, err := t.Track(s.Process.Pid); err != nil {
				t.Close()
				return err
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); t.Run(ctx, discard{}) }()
		tr, stopRun = t, func() { cancel(); <-done }
		return nil
	}
	var closeTracer func()
	var currentVariant string
	// The kernel's own accounting of the programs' run time: exact cost
	// per invocation, immune to the scheduling noise the loop timings see.
	statsOn, err := cebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		fmt.Println("execload: BPF run-time stats unavailable:", err)
	} else {
		defer statsOn.Close()
	}
	progStats := make(map[string]map[string]ebpf.ProgramStat) // variant → program → sum
	closeTracer = func() {
		if st, err := tr.ProgramStats(); err == nil {
			for _, p := range st {
				m := progStats[currentVariant]
				if m == nil {
					m = make(map[string]ebpf.ProgramStat)
					progStats[currentVariant] = m
				}
				sum := m[p.Name]
				sum.Name = p.Name
				sum.RunCount += p.RunCount
				sum.RunTime += p.RunTime
				m[p.Name] = sum
			}
		}
		stopRun()
		tr.Close()
		tr = nil
	}
	variants := []*variant{
		{name: "no tracer"},
		{name: "tracer loaded", setup: func() (func(), error) {
			if err := openTracer(); err != nil {
				return nil, err
			}
			return closeTracer, nil
		}},
		{name: "tracer, loop tracked", setup: func() (func(), error) {
			if err := openTracer(); err != nil {
				return nil, err
			}
			if _, err := tr.Track(os.Getpid()); err != nil {
				closeTracer()
				return nil, err
			}
			return closeTracer, nil
		}},
	}

	per := o.n / o.rounds
	fmt.Printf("exec loop: %d × /bin/true per variant (%d rounds of %d), %d workers, %d idle tracked processes\n",
		per*o.rounds, o.rounds, per, o.workers, len(sleepers))
	for r := 0; r < o.rounds; r++ {
		for i := range variants {
			v := variants[(i+r)%len(variants)]
			currentVariant = v.name
			undo := func() {}
			if v.setup != nil {
				if undo, err = v.setup(); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
			}
			d, err := execLoop(per, o.workers)
			undo()
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			v.durs = append(v.durs, d...)
		}
	}
	base := summarize(variants[0].durs)
	fmt.Printf("\n%-22s %10s %10s %10s %10s %12s %10s\n", "variant", "p50", "p95", "p99", "mean", "mean ratio", "p50 ratio")
	for _, v := range variants {
		s := summarize(v.durs)
		fmt.Printf("%-22s %10v %10v %10v %10v %12.3f %10.3f\n", v.name, s.p50, s.p95, s.p99, s.mean,
			float64(s.mean)/float64(base.mean), float64(s.p50)/float64(base.p50))
	}

	if len(progStats) > 0 {
		fmt.Printf("\nBPF program cost (kernel run-time stats, summed over the rounds):\n")
		fmt.Printf("%-22s %-8s %10s %12s\n", "variant", "program", "runs", "ns per run")
		for _, v := range variants[1:] {
			for _, name := range []string{"on_exec", "on_fork", "on_exit"} {
				p := progStats[v.name][name]
				per := 0.0
				if p.RunCount > 0 {
					per = float64(p.RunTime.Nanoseconds()) / float64(p.RunCount)
				}
				fmt.Printf("%-22s %-8s %10d %12.0f\n", v.name, name, p.RunCount, per)
			}
		}
	}

	return exitDelay(bins, git, o.gitRuns)
}

// execLoop runs n execs of /bin/true on workers goroutines and returns the
// duration of each (fork, exec, exit, wait).
func execLoop(n, workers int) ([]time.Duration, error) {
	durs := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				start := time.Now()
				if err := exec.Command("/bin/true").Run(); err != nil {
					errs <- err
					return
				}
				durs[i] = time.Since(start)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return durs, <-errs
}

// exitDelay runs tracked git processes one at a time and reports when
// their Exit event is read relative to wait4 returning (negative: before,
// as the tracepoint fires before the parent is notified) and to the
// kernel's exit tracepoint.
func exitDelay(bins []string, git string, runs int) error {
	t, err := ebpf.Open(ebpf.Options{GitBinaries: bins})
	if err != nil {
		return err
	}
	defer t.Close()
	h := &arrivals{seen: make(map[int]arrival), notify: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); t.Run(ctx, h) }()
	defer func() { cancel(); <-done }()

	var afterWait, afterExit []time.Duration
	early := 0
	for i := 0; i < runs; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		// The shell waits until the pid is tracked, then becomes git
		// (exec in place, as the shim does).
		cmd := exec.Command("/bin/sh", "-c", `read _ <&3; exec 3<&-; exec "$0" rev-parse --is-inside-git-dir`, git)
		cmd.ExtraFiles = []*os.File{r}
		if err := cmd.Start(); err != nil {
			return err
		}
		r.Close()
		if _, err := t.Track(cmd.Process.Pid); err != nil {
			return err
		}
		w.Write([]byte("go\n"))
		w.Close()
		cmd.Wait() // exit status irrelevant (not in a repository)
		waited := time.Now()
		a, ok := h.wait(cmd.Process.Pid, 5*time.Second)
		if !ok {
			return fmt.Errorf("no Exit event for pid %d within 5s", cmd.Process.Pid)
		}
		d := a.read.Sub(waited)
		if d < 0 {
			early++
		}
		afterWait = append(afterWait, d)
		afterExit = append(afterExit, a.read.Sub(a.end))
	}
	fmt.Printf("\nExit event delay for %d tracked git processes (%d of them read before wait4 returned: negative):\n", runs, early)
	fmt.Printf("%-28s %10s %10s %10s %10s\n", "", "p50", "p95", "p99", "mean")
	for _, row := range []struct {
		name string
		d    []time.Duration
	}{{"event read − wait4 return", afterWait}, {"exit tracepoint → event read", afterExit}} {
		s := summarize(row.d)
		fmt.Printf("%-28s %10v %10v %10v %10v\n", row.name, s.p50, s.p95, s.p99, s.mean)
	}
	st := t.Stats()
	fmt.Printf("tracer stats: %d events read, %d lost, %d still tracked\n", st.EventsRead, st.EventsLost, st.Tracked)
	return nil
}

// arrival is when an Exit event was read, and the exit time it carries.
type arrival struct{ read, end time.Time }

// arrivals is a Handler that notes when each Exit arrives.
type arrivals struct {
	mu     sync.Mutex // guards seen
	seen   map[int]arrival
	notify chan struct{}
}

func (a *arrivals) Exec(ebpf.Exec) {}

func (a *arrivals) Exit(e ebpf.Exit) {
	now := time.Now()
	a.mu.Lock()
	a.seen[e.PID] = arrival{read: now, end: e.End}
	a.mu.Unlock()
	select {
	case a.notify <- struct{}{}:
	default:
	}
}

// wait returns the arrival for pid, waiting at most timeout.
func (a *arrivals) wait(pid int, timeout time.Duration) (arrival, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		v, ok := a.seen[pid]
		delete(a.seen, pid)
		a.mu.Unlock()
		if ok {
			return v, true
		}
		select {
		case <-a.notify:
		case <-deadline.C:
			return arrival{}, false
		}
	}
}

type discard struct{}

func (discard) Exec(ebpf.Exec) {}
func (discard) Exit(ebpf.Exit) {}

func startSleepers(n int) ([]*exec.Cmd, error) {
	var cmds []*exec.Cmd
	for i := 0; i < n; i++ {
		c := exec.Command("/bin/sleep", "3600")
		if err := c.Start(); err != nil {
			return cmds, err
		}
		cmds = append(cmds, c)
	}
	return cmds, nil
}

func stopSleepers(cmds []*exec.Cmd) {
	for _, c := range cmds {
		c.Process.Kill()
		c.Wait()
	}
}

type summary struct{ p50, p95, p99, mean time.Duration }

func summarize(d []time.Duration) summary {
	s := stats.SummarizeDurations(d)
	return summary{s.P50, s.P95, s.P99, s.Mean}
}
