// Command bench measures what sluice costs on the host it runs on:
//
//   - latency the shim adds to a git command, for a command no rule
//     matches (exec'd at once) and for a matched one (one admission round
//     trip, git supervised), each against the same command run directly,
//     interleaved in one run so machine noise hits both alike;
//   - admission round trips per second with many concurrent clients, over
//     the shim framing and over gRPC;
//   - the agent's RSS and open fds idle and with many open leases.
//
// Every latency is reported as p50/p95/p99/mean, and comparisons as a
// ratio and a difference against the baseline measured in the same run.
// `make bench` runs the full measurement; `make bench-smoke` a short one.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/process"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/internal/agenttest"
	istats "github.com/sluicehq/sluice/internal/stats"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	bin      string
	n        int
	clients  int
	duration time.Duration
	leases   int
	jsonOut  string
	reaction int
	modes    bool
	resident int
	oomRuns  int
}

func run() error {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory with sluiced and sluice-shim")
	flag.IntVar(&o.n, "n", 500, "runs of each command for the latency comparison")
	flag.IntVar(&o.clients, "clients", 64, "concurrent clients for the admission throughput")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "how long each throughput measurement runs")
	flag.IntVar(&o.leases, "leases", 1000, "open leases for the RSS measurement")
	flag.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	flag.IntVar(&o.reaction, "reaction", 0, "runs of the adaptive reaction-time comparison (needs root and cgroup v1 memory; 0 = skip; a Gitaly-style run takes up to 30 s)")
	flag.BoolVar(&o.modes, "modes", true, "compare the shim's supervising and exec-in-place modes (exec mode needs the eBPF tracer: root)")
	flag.IntVar(&o.resident, "resident", 200, "concurrent in-flight commands for the per-command memory comparison of the shim modes")
	flag.IntVar(&o.oomRuns, "reaction-oom", 0, "runs of the OOM reaction comparison, kernel notifications vs polling every 1 s, interleaved (needs root and cgroup v1 memory; 0 = skip)")
	flag.Parse()

	realGit, err := exec.LookPath("git")
	if err != nil {
		return errors.New("git not found on PATH")
	}
	dir, err := os.MkdirTemp("", "sluice-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@b", "GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@b"}
	repo := filepath.Join(dir, "repo")
	for _, args := range [][]string{{"init", "-q", repo}, {"-C", repo, "commit", "-q", "--allow-empty", "-m", "x"}} {
		if out, err := cmdEnv(env, realGit, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("git %v: %v\n%s", args, err, out)
		}
	}

	ag, err := startAgent(o, dir, realGit, env)
	if err != nil {
		return err
	}
	defer ag.stop()
	shimDir := filepath.Join(dir, "shimbin")
	os.MkdirAll(shimDir, 0o755)
	shim, _ := filepath.Abs(filepath.Join(o.bin, "sluice-shim"))
	for _, n := range []string{"git", "git-upload-pack"} {
		if err := os.Symlink(shim, filepath.Join(shimDir, n)); err != nil {
			return err
		}
	}
	shimEnv := append(append([]string{}, env...), "SLUICE_SOCKET="+ag.socket, "SLUICE_REAL_GIT="+realGit)

	results := map[string]any{}
	fmt.Printf("sluice benchmarks — %s, %d CPUs\n\n", time.Now().Format(time.RFC3339), numCPU())

	fmt.Printf("## Shim latency (%d interleaved runs each; wall time of fork+exec+wait)\n\n", o.n)
	fmt.Printf("%-44s %9s %9s %9s %9s\n", "command", "p50 ms", "p95 ms", "p99 ms", "mean ms")
	for _, c := range []struct {
		name        string
		direct      []string
		viaShim     []string
		budgetMsP50 float64
	}{
		{"unmatched: git rev-parse HEAD", []string{realGit, "rev-parse", "HEAD"}, []string{filepath.Join(shimDir, "git"), "rev-parse", "HEAD"}, 1.5},
		{"matched: git-upload-pack --advertise-refs", []string{realGit, "upload-pack", "--advertise-refs", repo}, []string{filepath.Join(shimDir, "git-upload-pack"), "--advertise-refs", repo}, 2.0},
	} {
		d, s, err := interleave(o.n, repo, env, shimEnv, c.direct, c.viaShim)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		ds, ss := summarize(d), summarize(s)
		printRow("  direct  "+c.name, ds)
		printRow("  via shim "+c.name, ss)
		fmt.Printf("  %-42s p50 +%.2f ms (x%.2f, budget +%.1f ms)  mean +%.2f ms (x%.2f)\n\n", "added by the shim:",
			ss.P50-ds.P50, ss.P50/ds.P50, c.budgetMsP50, ss.Mean-ds.Mean, ss.Mean/ds.Mean)
		results["latency/"+c.name] = map[string]any{"direct": ds, "shim": ss, "added_p50_ms": ss.P50 - ds.P50, "ratio_p50": ss.P50 / ds.P50}
	}

	fmt.Printf("## Admission round trips (%d concurrent clients, %v each; connect, admit, finish, close)\n\n", o.clients, o.duration)
	for _, proto := range []string{"shim framing", "gRPC"} {
		rate, lat, err := throughput(ag.socket, proto, o.clients, o.duration)
		if err != nil {
			return fmt.Errorf("%s throughput: %w", proto, err)
		}
		st := summarize(lat)
		fmt.Printf("  %-13s %8.0f admissions/s   per round trip: p50 %.3f ms  p95 %.3f ms  p99 %.3f ms  mean %.3f ms\n",
			proto, rate, st.P50, st.P95, st.P99, st.Mean)
		results["throughput/"+proto] = map[string]any{"per_second": rate, "latency": st}
	}
	fmt.Println()

	fmt.Printf("## Agent memory\n\n")
	idleRSS, idleFDs := procStats(ag.pid)
	fmt.Printf("  idle:                 RSS %6.1f MiB, %d fds\n", float64(idleRSS)/(1<<20), idleFDs)
	conns, err := openLeases(ag.socket, o.leases)
	if err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	leaseRSS, leaseFDs := procStats(ag.pid)
	fmt.Printf("  %5d open leases:    RSS %6.1f MiB, %d fds  (+%.1f KiB per lease)\n", len(conns), float64(leaseRSS)/(1<<20), leaseFDs,
		float64(leaseRSS-idleRSS)/1024/float64(len(conns)))
	for _, c := range conns {
		c.Close()
	}
	results["rss"] = map[string]any{"idle_bytes": idleRSS, "idle_fds": idleFDs, "leases": len(conns), "leases_bytes": leaseRSS, "leases_fds": leaseFDs}
	if o.modes {
		if err := compareModes(o, dir, realGit, env, repo, results); err != nil {
			return fmt.Errorf("shim modes: %w", err)
		}
	}
	if o.reaction > 0 {
		fmt.Printf("\n## Adaptive reaction time (%d runs each: memory pressure in place → limit backed off)\n\n", o.reaction)
		var base stats
		for _, mode := range []struct {
			name, sample string
			events       bool
		}{
			{"sluice (1s samples + kernel events)", "1s", true},
			{"sluice (1s samples, polling only)", "1s", false},
			{"Gitaly-style (check every 30s)", "30s", false},
		} {
			var ms []float64
			for i := 0; i < o.reaction; i++ {
				d, err := reactionRun(o, dir, realGit, env, mode.sample, mode.events, i)
				if err != nil {
					return fmt.Errorf("reaction %s run %d: %w", mode.name, i, err)
				}
				ms = append(ms, float64(d.Microseconds())/1000)
			}
			st := summarize(ms)
			if base.N == 0 {
				base = st
			}
			fmt.Printf("  %-32s p50 %8.0f ms  p95 %8.0f ms  p99 %8.0f ms  mean %8.0f ms  (x%.1f of sluice, mean)\n",
				mode.name, st.P50, st.P95, st.P99, st.Mean, st.Mean/base.Mean)
			results[fmt.Sprintf("reaction/%s/events=%v", mode.sample, mode.events)] = st
		}
	}
	if o.oomRuns > 0 {
		fmt.Printf("\n## OOM reaction (%d interleaved runs each: hog OOM-killed in a 64 MiB bucket → limit backed off)\n\n", o.oomRuns)
		fmt.Println("  From the bucket's oom_kill moving (read every 1 ms) to the backoff log line (1 ms resolution); the kernel")
		fmt.Println("  notifies just before it kills, so event-driven reactions can be slightly negative.")
		ms := map[bool][]float64{}
		for i := 0; i < o.oomRuns; i++ {
			for _, events := range []bool{true, false} {
				d, err := oomReactionRun(o, dir, realGit, env, events, i)
				if err != nil {
					return fmt.Errorf("OOM reaction (events %v) run %d: %w", events, i, err)
				}
				ms[events] = append(ms[events], float64(d.Microseconds())/1000)
			}
		}
		ev, poll := summarize(ms[true]), summarize(ms[false])
		for _, r := range []struct {
			name string
			st   stats
		}{{"kernel notifications (kernel_events)", ev}, {"polling only (sample_interval 1s)", poll}} {
			fmt.Printf("  %-38s p50 %7.1f ms  p95 %7.1f ms  p99 %7.1f ms  mean %7.1f ms\n", r.name, r.st.P50, r.st.P95, r.st.P99, r.st.Mean)
		}
		// The event-driven times sit around 0 (either sign), so the ratio is
		// taken on p99, the worst case an operator cares about.
		fmt.Printf("  events against polling (the baseline): p50 %+.1f ms, mean %+.1f ms; p99 x%.3f\n",
			ev.P50-poll.P50, ev.Mean-poll.Mean, ev.P99/poll.P99)
		results["reaction_oom/events"], results["reaction_oom/polling"] = ev, poll
	}
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(o.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func cmdEnv(env []string, name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Env = env
	return c
}

// agentProc is a sluiced the bench started.
type agentProc struct {
	*agenttest.Agent
	pid    int
	socket string
}

func startAgent(o options, dir, realGit string, env []string) (*agentProc, error) {
	return startAgentMode(o, dir, realGit, env, "main", true)
}

// startAgentMode starts a sluiced of its own (socket under dir/name) with
// the eBPF tracer on or off.
func startAgentMode(o options, dir, realGit string, env []string, name string, ebpf bool) (*agentProc, error) {
	socket := filepath.Join(dir, name, "run", "sluice.sock")
	cfg := fmt.Sprintf(`
[agent]
socket = %q
metrics_addr = "off"
[cgroups]
enabled = false
[ebpf]
enabled = %t
[git]
bin = %q
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = 10000
max_queue_size = 100
max_queue_wait = "10s"
`, socket, ebpf, realGit)
	return startBenchAgent(o, filepath.Join(dir, name), socket, cfg, env, []string{"-log-level", "error"}, os.Stderr, nil)
}

// startBenchAgent starts sluiced with config cfg in dir and returns once
// its socket answers (the bench runs it at -log-level error, whose output
// goes to tee; the ready line is not printed then).
func startBenchAgent(o options, dir, socket, cfg string, env, args []string, tee io.Writer, onLine func([]byte)) (*agentProc, error) {
	a := &agenttest.Agent{Bin: filepath.Join(o.bin, "sluiced"), Dir: dir, Socket: socket, Env: env, Args: args,
		Tee: tee, OnLine: onLine, Ready: agenttest.ReadySocket}
	if err := a.Start(cfg); err != nil {
		return nil, err
	}
	return &agentProc{Agent: a, pid: a.Pid(), socket: socket}, nil
}

// stop stops sluiced and says so when it did not exit cleanly.
func (a *agentProc) stop() {
	if err := a.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}

// interleave runs direct and viaShim n times each, alternating which goes
// first, and returns their wall times in ms.
func interleave(n int, dir string, env, shimEnv, direct, viaShim []string) (d, s []float64, err error) {
	once := func(argv []string, env []string) (float64, error) {
		c := exec.Command(argv[0], argv[1:]...)
		c.Dir, c.Env, c.Stdout, c.Stderr = dir, env, io.Discard, io.Discard
		t0 := time.Now()
		if err := c.Run(); err != nil {
			return 0, fmt.Errorf("%v: %w", argv, err)
		}
		return float64(time.Since(t0).Microseconds()) / 1000, nil
	}
	// Warm caches for both.
	for i := 0; i < 5; i++ {
		if _, err := once(direct, env); err != nil {
			return nil, nil, err
		}
		if _, err := once(viaShim, shimEnv); err != nil {
			return nil, nil, err
		}
	}
	for i := 0; i < n; i++ {
		first, second := direct, viaShim
		fe, se := env, shimEnv
		if i%2 == 1 {
			first, second, fe, se = viaShim, direct, shimEnv, env
		}
		a, err := once(first, fe)
		if err != nil {
			return nil, nil, err
		}
		b, err := once(second, se)
		if err != nil {
			return nil, nil, err
		}
		if i%2 == 1 {
			a, b = b, a
		}
		d, s = append(d, a), append(s, b)
	}
	return d, s, nil
}

// stats is a series' summary: internal/stats' nearest-rank percentiles.
type stats = istats.Summary[float64]

func summarize(v []float64) stats { return istats.Summarize(v) }

func printRow(name string, s stats) {
	fmt.Printf("%-44s %9.3f %9.3f %9.3f %9.3f\n", name, s.P50, s.P95, s.P99, s.Mean)
}

// throughput runs clients goroutines doing full admission round trips for d.
func throughput(socket, proto string, clients int, d time.Duration) (float64, []float64, error) {
	var cc *grpc.ClientConn
	if proto == "gRPC" {
		var err error
		cc, err = grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, nil, err
		}
		defer cc.Close()
	}
	var count atomic.Int64
	var mu sync.Mutex
	var lat []float64
	var firstErr error
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			for time.Now().Before(stop) {
				t0 := time.Now()
				var err error
				if cc != nil {
					err = grpcRoundTrip(cc)
				} else {
					err = framingRoundTrip(socket)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, float64(time.Since(t0).Microseconds())/1000)
				count.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(count.Load()) / time.Since(start).Seconds(), lat, firstErr
}

var benchReq = shimproto.AdmitRequest{Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/bench.git"), CorrelationID: "bench"}

func framingRoundTrip(socket string) error {
	c, err := shimproto.Dial(socket, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.Admit(&benchReq, time.Now().Add(10*time.Second), nil)
	if err != nil {
		return err
	}
	if !r.Admitted {
		return fmt.Errorf("rejected: %s", r.Message)
	}
	return c.Finish(&shimproto.Finished{})
}

func grpcRoundTrip(cc *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := admitpb.NewAdmissionClient(cc).Admit(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Admit{Admit: &admitpb.AdmitRequest{
		Command: "git", Subcommand: "upload-pack", Repo: []byte("/srv/bench.git"), CorrelationId: "bench"}}}); err != nil {
		return err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return err
		}
		if m.GetAdmitted() != nil {
			break
		}
		if r := m.GetRejected(); r != nil {
			return fmt.Errorf("rejected: %s", r.Message)
		}
	}
	if err := s.Send(&admitpb.ClientMsg{Msg: &admitpb.ClientMsg_Finished{Finished: &admitpb.Finished{}}}); err != nil {
		return err
	}
	s.CloseSend()
	_, err = s.Recv() // EOF once the server has finished the lease
	if err == io.EOF {
		return nil
	}
	return err
}

// openLeases opens n admitted leases, each on its own repository key.
func openLeases(socket string, n int) ([]*shimproto.Conn, error) {
	var out []*shimproto.Conn
	for i := 0; i < n; i++ {
		c, err := shimproto.Dial(socket, time.Second)
		if err != nil {
			return out, fmt.Errorf("lease %d: %w (raise `ulimit -n`?)", i, err)
		}
		req := benchReq
		req.Repo = []byte("/srv/lease-" + strconv.Itoa(i) + ".git")
		r, err := c.Admit(&req, time.Now().Add(10*time.Second), nil)
		if err != nil || !r.Admitted {
			c.Close()
			return out, fmt.Errorf("lease %d: %v %s", i, err, r.Message)
		}
		out = append(out, c)
	}
	return out, nil
}

// procStats returns pid's resident set size in bytes and its open fds.
func procStats(pid int) (int64, int) {
	p, err := process.NewProcess(int32(pid))
	if err != nil {
		return 0, 0
	}
	var rss int64
	if mi, err := p.MemoryInfo(); err == nil {
		rss = int64(mi.RSS)
	}
	fds, _ := p.NumFDs()
	return rss, int(fds)
}

func numCPU() int {
	n, _ := cpu.Counts(true)
	return n
}
