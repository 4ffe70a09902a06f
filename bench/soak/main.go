// Command soak is sluice's admission soak test: it starts a real sluiced,
// drives it with many concurrent shim-protocol clients (and real shims)
// for a bounded time while killing clients at random — mid-queue,
// mid-lease, before any answer, and SIGKILL of real shim processes — and
// then checks that the agent is back where it started: in-flight and queued
// gauges exactly zero (from /metrics and `sluice status`), and goroutines
// (/debug/pprof/goroutine), open fds (/proc/PID/fd) and RSS compared with a
// baseline taken after a warm-up. It exits 1 when a gauge stays above zero
// or goroutines/fds exceed the baseline by more than a small fixed slack.
//
// Two more modes measure the resource bounds:
//
//	-conns N   hold N concurrent connections (each admitted or queued),
//	           report the agent's RSS, fds and goroutines while held and
//	           after; connections beyond [agent] max_connections are
//	           counted as refused.
//	-restart-every D
//	           real shims (running a fake git that counts how many of
//	           itself run at once) behind a limit of 1 while the agent is
//	           restarted (SIGTERM, new sluiced) every D: checks that at most
//	           one ran at any time (no command without a lease while another
//	           waits), none ran without a lease, and the gauges end at 0;
//	           reports SIGTERM-to-ready times (restart.go).
//	-keys N    admit N requests, each for a different repository (distinct
//	           limiter keys), and report RSS and sluice_limiter_keys.
//
// Run it with `make soak` (5 minutes) or `make soak-smoke` (a few seconds).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/internal/agenttest"
	"github.com/sluicehq/sluice/internal/stats"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

type options struct {
	bin          string
	duration     time.Duration
	clients      int
	repos        int
	killPct      int
	shims        int
	smoke        bool
	conns        int
	keys         int
	maxConns     int
	goSlack      int
	fdSlack      int
	jsonOut      string
	holdLease    time.Duration
	heapProfile  string
	keepFDLimit  bool
	restartEvery time.Duration
}

// raiseFDLimit raises this process's RLIMIT_NOFILE (soft and hard) to at
// least n, best effort.
func raiseFDLimit(n uint64) {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil || rl.Max >= n {
		return
	}
	rl.Cur, rl.Max = n, n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Printf("could not raise the open-file limit to %d: %v\n", n, err)
	}
}

func run() error {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory with sluiced, sluice-shim and sluice")
	flag.DurationVar(&o.duration, "duration", 2*time.Minute, "how long the load runs (bounded: at most 1h)")
	flag.IntVar(&o.clients, "clients", 64, "concurrent protocol clients")
	flag.IntVar(&o.repos, "repos", 32, "distinct repositories the clients ask for (keys)")
	flag.IntVar(&o.killPct, "kill", 10, "percent of protocol requests killed (closed) at a random point")
	flag.IntVar(&o.shims, "shims", 4, "concurrent real sluice-shim processes, a fifth of them SIGKILLed at a random moment")
	flag.BoolVar(&o.smoke, "smoke", false, "smoke mode: 4 s of load, 16 clients, 2 shims (CI)")
	flag.IntVar(&o.conns, "conns", 0, "instead of the soak: hold this many concurrent connections and measure the agent")
	flag.IntVar(&o.keys, "keys", 0, "instead of the soak: admit this many distinct repository keys and measure the agent")
	flag.IntVar(&o.maxConns, "max-connections", 0, "[agent] max_connections for the agent (0: the policy default)")
	flag.IntVar(&o.goSlack, "goroutine-slack", 5, "goroutines the agent may have above its baseline afterwards")
	flag.IntVar(&o.fdSlack, "fd-slack", 2, "open fds the agent may have above its baseline afterwards")
	flag.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	flag.BoolVar(&o.keepFDLimit, "keep-fd-limit", false, "with -conns: do not raise the open-file limit sluiced inherits")
	flag.StringVar(&o.heapProfile, "heap-profile", "", "save the agent's heap profile (after GC) to this file at the end")
	flag.DurationVar(&o.holdLease, "hold", 2*time.Millisecond, "longest a protocol client holds a lease")
	flag.DurationVar(&o.restartEvery, "restart-every", 0, "instead of the soak: run real shims behind a limit of 1 and restart the agent (SIGTERM, new sluiced) this often (restart.go)")
	flag.Parse()
	if o.smoke {
		o.duration, o.clients, o.shims = 4*time.Second, 16, 2
	}
	o.duration = min(o.duration, time.Hour)
	for _, n := range []string{"sluiced", "sluice-shim", "sluice"} {
		if _, err := os.Stat(filepath.Join(o.bin, n)); err != nil {
			return fmt.Errorf("%v; run make build (or pass -bin)", err)
		}
	}
	if o.conns > 0 && !o.keepFDLimit {
		// Both ends need a descriptor per connection, the agent two (the
		// socket and a pidfd of the peer): raise the limit sluiced
		// inherits, as LimitNOFILE does under systemd. Needs root beyond
		// the hard limit; otherwise the agent caps max_connections and says
		// so.
		raiseFDLimit(uint64(2*o.conns + 1024))
	}
	if o.restartEvery > 0 {
		activePolicy = restartPolicy
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("sluice-soak-%d-", os.Getpid()))
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ag, err := startAgent(o, dir)
	if err != nil {
		return err
	}
	defer func() { // the restart mode replaces ag
		if err := ag.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
		}
	}()
	var res any
	switch {
	case o.restartEvery > 0:
		res, err = restartSoak(o, &ag, dir)
	case o.conns > 0:
		res, err = holdConns(o, ag)
	case o.keys > 0:
		res, err = distinctKeys(o, ag)
	default:
		res, err = soak(o, ag, dir)
	}
	if o.heapProfile != "" {
		if resp, herr := http.Get(ag.metrics + "/debug/pprof/heap?gc=1"); herr == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			os.WriteFile(o.heapProfile, b, 0o644)
		}
	}
	if res != nil && o.jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if werr := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// agentProc is the sluiced under test.
type agentProc struct {
	*agenttest.Agent
	socket  string
	metrics string // http://host:port
	cli     string
}

const policy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = 4
max_queue_size = 20
max_queue_wait = "2s"

[[limit]]
name = "receive-pack"
match = ["receive-pack"]
key = "repo"
queue_order = "lifo"
max_per_key = 2
max_queue_size = 10
max_queue_wait = "1s"

[cgroups]
enabled = false

[ebpf]
enabled = false
`

func startAgent(o options, dir string) (*agentProc, error) {
	socket := filepath.Join(dir, "run", "sluice.sock")
	agentCfg := fmt.Sprintf("[agent]\nsocket = %q\nmetrics_addr = \"127.0.0.1:0\"\npprof = true\nfail_mode = \"open\"\n", socket) // pprof: the leak check reads heap and goroutine profiles
	if o.maxConns > 0 {
		agentCfg += fmt.Sprintf("max_connections = %d\n", o.maxConns)
	}
	// At -log-level error (every admission logged would slow the agent
	// down) the ready lines are not printed: wait for the socket, then find
	// the metrics port from the process's listening socket.
	ag := &agenttest.Agent{Bin: filepath.Join(o.bin, "sluiced"), Dir: dir, Socket: socket, Args: []string{"-log-level", "error"},
		LogFile: filepath.Join(dir, "sluiced.log"), Ready: agenttest.ReadySocket, FindMetrics: true}
	if err := ag.Start(agentCfg + activePolicy); err != nil {
		return nil, err
	}
	return &agentProc{Agent: ag, socket: socket, metrics: ag.Metrics, cli: filepath.Join(o.bin, "sluice")}, nil
}

// stop stops sluiced (SIGTERM) and returns an error when it did not exit
// cleanly.
func (a *agentProc) stop() error {
	return a.Stop()
}

// usage is the agent's resource use at one instant.
type usage struct {
	Goroutines int   `json:"goroutines"`
	FDs        int   `json:"fds"`
	RSSKiB     int64 `json:"rss_kib"`
	// HeapInuse is go_memstats_heap_inuse_bytes: what the Go heap holds,
	// unlike RSS, which keeps freed memory until the runtime returns it.
	HeapInuse int64 `json:"heap_inuse_bytes"`
}

func (u usage) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, RSS %.1f MiB, heap in use %.1f MiB", u.Goroutines, u.FDs, float64(u.RSSKiB)/1024, float64(u.HeapInuse)/(1<<20))
}

// row formats u as table cells.
func (u usage) row() string {
	return fmt.Sprintf("%d | %d | %.1f | %.1f", u.Goroutines, u.FDs, float64(u.RSSKiB)/1024, float64(u.HeapInuse)/(1<<20))
}

// usageGC is usage after a garbage collection in the agent (the pprof heap
// endpoint with gc=1 runs one), so the heap figure is live memory only.
func (a *agentProc) usageGC() (usage, error) {
	resp, err := http.Get(a.metrics + "/debug/pprof/heap?gc=1")
	if err != nil {
		return usage{}, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return a.usage()
}

func (a *agentProc) usage() (usage, error) {
	var u usage
	pid := a.Pid()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return u, err
	}
	u.FDs = len(ents)
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			u.RSSKiB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	if m, err := a.scrapeAll(); err == nil {
		u.HeapInuse = int64(m["go_memstats_heap_inuse_bytes"])
	}
	resp, err := http.Get(a.metrics + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return u, err
	}
	defer resp.Body.Close()
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	// "goroutine profile: total N"
	_, n, ok := strings.Cut(strings.TrimSpace(first), "total ")
	if !ok {
		return u, fmt.Errorf("goroutine profile: unexpected first line %q", first)
	}
	u.Goroutines, err = strconv.Atoi(n)
	return u, err
}

// scrape returns sluice_* series → value.
func (a *agentProc) scrape() (map[string]float64, error) {
	m, err := a.scrapeAll()
	for k := range m {
		if !strings.HasPrefix(k, "sluice_") {
			delete(m, k)
		}
	}
	return m, err
}

// scrapeAll returns every series → value.
func (a *agentProc) scrapeAll() (map[string]float64, error) {
	return a.Scrape()
}

// sumPrefix adds the series whose name starts with prefix.
func sumPrefix(m map[string]float64, prefix string) float64 {
	var s float64
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			s += v
		}
	}
	return s
}

// statusGauges sums in_flight and queued over every rule from
// `sluice status --json`.
func (a *agentProc) statusGauges() (inFlight, queued int64, err error) {
	cmd := exec.Command(a.cli, "status", "--json", "--socket", a.socket)
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("sluice status: %v", err)
	}
	var st struct {
		Limits []struct {
			InFlight int64 `json:"in_flight"`
			Queued   int64 `json:"queued"`
		} `json:"limits"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, 0, fmt.Errorf("sluice status --json: %v", err)
	}
	for _, l := range st.Limits {
		inFlight += l.InFlight
		queued += l.Queued
	}
	return inFlight, queued, nil
}

// waitIdle waits until /metrics and `sluice status` both say nothing is in
// flight or queued, and the agent holds no connection; it returns the
// last readings when that does not happen within d.
func (a *agentProc) waitIdle(d time.Duration) (idle bool, detail string) {
	deadline := time.Now().Add(d)
	for {
		m, err := a.scrape()
		f, q, serr := a.statusGauges()
		if err == nil && serr == nil {
			inProg := sumPrefix(m, "sluice_concurrency_limiting_in_progress")
			queued := sumPrefix(m, "sluice_concurrency_limiting_queued")
			keys := sumPrefix(m, "sluice_limiter_keys")
			conns := m["sluice_connections"]
			detail = fmt.Sprintf("/metrics in_progress %g queued %g limiter_keys %g connections %g; status in_flight %d queued %d", inProg, queued, keys, conns, f, q)
			// The status call itself is one connection, gone by now.
			if inProg == 0 && queued == 0 && keys == 0 && conns == 0 && f == 0 && q == 0 {
				return true, detail
			}
		} else {
			detail = fmt.Sprintf("scrape: %v; status: %v", err, serr)
		}
		if time.Now().After(deadline) {
			return false, detail
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill points: where a protocol client gives up.
const (
	killNone      = iota
	killBeforeAns // close right after sending the request
	killQueued    // close on the first Queued message
	killLeased    // close after Admitted, without Finished
)

// client runs protocol requests until stop; it counts what happened.
type counters struct {
	requests, admitted, rejected, unavailable, errors atomic.Int64
	killedBefore, killedQueued, killedLeased          atomic.Int64
	leases, maxLeases                                 atomic.Int64
	shimRuns, shimKilled, shimOK, shimOther           atomic.Int64
}

func (c *counters) lease(delta int64) {
	n := c.leases.Add(delta)
	for {
		m := c.maxLeases.Load()
		if n <= m || c.maxLeases.CompareAndSwap(m, n) {
			return
		}
	}
}

// oneRequest speaks the shim protocol over a plain net.Conn so it can close
// at any point.
func oneRequest(sock string, repo []byte, kill int, hold time.Duration, c *counters) {
	c.requests.Add(1)
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		c.errors.Add(1)
		return
	}
	defer conn.Close()
	b := append([]byte(shimproto.Magic), 0, 0, 0, 0)
	b = shimproto.AppendAdmit(b, &shimproto.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: repo, CorrelationID: "soak"})
	n := len(b) - len(shimproto.Magic) - 4
	b[len(shimproto.Magic)], b[len(shimproto.Magic)+1], b[len(shimproto.Magic)+2], b[len(shimproto.Magic)+3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	if _, err := conn.Write(b); err != nil {
		c.errors.Add(1)
		return
	}
	if kill == killBeforeAns {
		c.killedBefore.Add(1)
		return
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var buf []byte
	for {
		f, err := shimproto.ReadFrame(conn, buf)
		if err != nil {
			c.errors.Add(1)
			return
		}
		m, err := shimproto.DecodeServerMsg(f)
		if err != nil {
			c.errors.Add(1)
			return
		}
		switch m.Kind {
		case shimproto.ServerQueued:
			if kill == killQueued {
				c.killedQueued.Add(1)
				return
			}
			continue
		case shimproto.ServerRejected:
			if m.Reply.Reason == shimproto.ReasonUnavailable {
				c.unavailable.Add(1)
			} else {
				c.rejected.Add(1)
			}
			return
		case shimproto.ServerAdmitted:
			c.admitted.Add(1)
			c.lease(1)
			if hold > 0 {
				time.Sleep(rand.N(hold))
			}
			if kill == killLeased || kill == killQueued {
				// killQueued that was admitted at once: drop the lease instead.
				c.killedLeased.Add(1)
				c.lease(-1)
				return
			}
			fin := shimproto.AppendFrame(nil, shimproto.AppendFinished(nil, &shimproto.Finished{UserUsec: 1, RealUsec: 1}))
			conn.Write(fin)
			c.lease(-1)
			return
		default:
			continue
		}
	}
}

// runShim runs the real shim as git-upload-pack in front of a fake git
// that sleeps, and SIGKILLs a fifth of them at a random moment (queued,
// or supervising git).
func runShim(shimLink, fakeGit, sock, dir string, repo string, c *counters) {
	c.shimRuns.Add(1)
	cmd := exec.Command(shimLink, repo)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "SLUICE_SOCKET=" + sock, "SLUICE_REAL_GIT=" + fakeGit,
		"SLUICE_SHIM_LOG=" + filepath.Join(dir, "shim.log")}
	if err := cmd.Start(); err != nil {
		c.shimOther.Add(1)
		return
	}
	kill := rand.N(5) == 0
	if kill {
		time.AfterFunc(rand.N(30*time.Millisecond), func() { cmd.Process.Signal(syscall.SIGKILL) })
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		c.shimOK.Add(1)
	case errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
		c.shimKilled.Add(1)
	default:
		c.shimOther.Add(1) // exit 75: rejected (queue full / waited too long)
	}
}

// soakResult is what the soak reports.
type soakResult struct {
	Duration        string  `json:"duration"`
	Clients         int     `json:"clients"`
	Shims           int     `json:"shims"`
	Requests        int64   `json:"requests"`
	Admitted        int64   `json:"admitted"`
	AdmittedPerSec  float64 `json:"admitted_per_sec"`
	RequestsPerSec  float64 `json:"requests_per_sec"`
	Rejected        int64   `json:"rejected"`
	Unavailable     int64   `json:"unavailable"`
	ClientErrors    int64   `json:"client_errors"`
	KilledBefore    int64   `json:"killed_before_answer"`
	KilledQueued    int64   `json:"killed_queued"`
	KilledLeased    int64   `json:"killed_leased"`
	MaxLeases       int64   `json:"max_concurrent_leases_client_side"`
	ShimRuns        int64   `json:"shim_runs"`
	ShimSIGKILLed   int64   `json:"shim_sigkilled"`
	ShimOK          int64   `json:"shim_ok"`
	ShimOther       int64   `json:"shim_other_exit"`
	Before          usage   `json:"before"`
	Peak            usage   `json:"peak"`
	After           usage   `json:"after"`
	GaugesZero      bool    `json:"gauges_zero"`
	GaugesDetail    string  `json:"gauges_detail"`
	AgentRestarted  bool    `json:"agent_exited"`
	LeakFree        bool    `json:"leak_free"`
	LatencyP50Milli float64 `json:"admit_latency_p50_ms"`
	LatencyP95Milli float64 `json:"admit_latency_p95_ms"`
	LatencyP99Milli float64 `json:"admit_latency_p99_ms"`
	LatencyMeanMs   float64 `json:"admit_latency_mean_ms"`
}

func soak(o options, a *agentProc, dir string) (*soakResult, error) {
	shimLink := filepath.Join(dir, "git-upload-pack")
	if err := os.Symlink(mustAbs(filepath.Join(o.bin, "sluice-shim")), shimLink); err != nil {
		return nil, err
	}
	fakeGit := filepath.Join(dir, "fake-git")
	if err := os.WriteFile(fakeGit, []byte("#!/bin/sh\nsleep 0.02\n"), 0o755); err != nil {
		return nil, err
	}
	repos := make([][]byte, o.repos)
	for i := range repos {
		repos[i] = []byte(fmt.Sprintf("/srv/soak/r%d.git", i))
	}
	// Warm up (the runtime grows its pools once), settle, then baseline.
	var warm counters
	for i := range 200 {
		oneRequest(a.socket, repos[i%len(repos)], killNone, 0, &warm)
	}
	if ok, detail := a.waitIdle(10 * time.Second); !ok {
		return nil, fmt.Errorf("not idle after warm-up: %s", detail)
	}
	time.Sleep(500 * time.Millisecond)
	before, err := a.usageGC()
	if err != nil {
		return nil, err
	}
	fmt.Printf("baseline: %s\n", before)

	var c counters
	stop := make(chan struct{})
	var wg sync.WaitGroup
	lat := make([][]time.Duration, o.clients)
	for i := range o.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				kill := killNone
				if rand.N(100) < o.killPct {
					kill = 1 + rand.N(3)
				}
				t0 := time.Now()
				oneRequest(a.socket, pickRepo(repos), kill, o.holdLease, &c)
				if kill == killNone && n%16 == 0 && len(lat[i]) < 100000 {
					lat[i] = append(lat[i], time.Since(t0))
				}
			}
		}()
	}
	for range o.shims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				runShim(shimLink, fakeGit, a.socket, dir, string(pickRepo(repos)), &c)
			}
		}()
	}
	peak := before
	start := time.Now()
	tick := time.NewTicker(time.Second)
	end := time.After(o.duration)
loop:
	for {
		select {
		case <-end:
			break loop
		case <-a.Done():
			break loop
		case <-tick.C:
			if u, err := a.usage(); err == nil {
				peak.Goroutines = max(peak.Goroutines, u.Goroutines)
				peak.FDs = max(peak.FDs, u.FDs)
				peak.RSSKiB = max(peak.RSSKiB, u.RSSKiB)
				peak.HeapInuse = max(peak.HeapInuse, u.HeapInuse)
			}
			fmt.Printf("%4.0fs  admitted %d (%.0f/s)  rejected %d  killed %d/%d/%d  shims %d (SIGKILL %d)  leases now %d\n",
				time.Since(start).Seconds(), c.admitted.Load(), float64(c.admitted.Load())/time.Since(start).Seconds(),
				c.rejected.Load(), c.killedBefore.Load(), c.killedQueued.Load(), c.killedLeased.Load(),
				c.shimRuns.Load(), c.shimKilled.Load(), c.leases.Load())
		}
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	res := &soakResult{
		Duration: elapsed.Round(time.Millisecond).String(), Clients: o.clients, Shims: o.shims,
		Requests: c.requests.Load(), Admitted: c.admitted.Load(),
		AdmittedPerSec: float64(c.admitted.Load()) / elapsed.Seconds(), RequestsPerSec: float64(c.requests.Load()) / elapsed.Seconds(),
		Rejected: c.rejected.Load(), Unavailable: c.unavailable.Load(), ClientErrors: c.errors.Load(),
		KilledBefore: c.killedBefore.Load(), KilledQueued: c.killedQueued.Load(), KilledLeased: c.killedLeased.Load(),
		MaxLeases: c.maxLeases.Load(), ShimRuns: c.shimRuns.Load(), ShimSIGKILLed: c.shimKilled.Load(),
		ShimOK: c.shimOK.Load(), ShimOther: c.shimOther.Load(), Before: before, Peak: peak,
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	res.LatencyP50Milli, res.LatencyP95Milli, res.LatencyP99Milli, res.LatencyMeanMs = percentiles(all)
	select {
	case <-a.Done():
		res.AgentRestarted = true
		return res, errors.New("sluiced exited during the soak")
	default:
	}
	res.GaugesZero, res.GaugesDetail = a.waitIdle(15 * time.Second)
	time.Sleep(500 * time.Millisecond) // let finished goroutines exit
	var after usage
	// Goroutines of closed connections finish asynchronously: allow a few
	// seconds for the count to come down, never a timing assertion.
	for range 50 {
		if after, err = a.usageGC(); err != nil {
			return res, err
		}
		if after.Goroutines <= before.Goroutines+o.goSlack && after.FDs <= before.FDs+o.fdSlack {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.After = after
	res.LeakFree = after.Goroutines <= before.Goroutines+o.goSlack && after.FDs <= before.FDs+o.fdSlack
	printSoak(res)
	switch {
	case !res.GaugesZero:
		return res, fmt.Errorf("gauges did not return to zero: %s", res.GaugesDetail)
	case !res.LeakFree:
		return res, fmt.Errorf("leak: before %s; after %s (slack %d goroutines, %d fds)", before, after, o.goSlack, o.fdSlack)
	case res.Admitted == 0:
		return res, errors.New("nothing was admitted")
	}
	return res, nil
}

func printSoak(r *soakResult) {
	fmt.Printf(`
| soak | value |
|---|---|
| duration | %s |
| clients (protocol) / real shims | %d / %d |
| requests, admitted | %d, %d |
| admissions/s (requests/s) | %.0f (%.0f) |
| max concurrent leases (client side) | %d |
| rejected (queue full / waited) | %d |
| unavailable | %d |
| client errors | %d |
| killed: before answer / queued / holding lease | %d / %d / %d |
| real shims run / SIGKILLed / ok / other exit | %d / %d / %d / %d |
| request round trip incl. hold, p50 / p95 / p99 / mean (ms) | %.2f / %.2f / %.2f / %.2f |
| agent before | %s |
| agent peak | %s |
| agent after | %s |
| gauges zero afterwards | %v (%s) |
| leak-free | %v |
`, r.Duration, r.Clients, r.Shims, r.Requests, r.Admitted, r.AdmittedPerSec, r.RequestsPerSec, r.MaxLeases,
		r.Rejected, r.Unavailable, r.ClientErrors, r.KilledBefore, r.KilledQueued, r.KilledLeased,
		r.ShimRuns, r.ShimSIGKILLed, r.ShimOK, r.ShimOther,
		r.LatencyP50Milli, r.LatencyP95Milli, r.LatencyP99Milli, r.LatencyMeanMs,
		r.Before, r.Peak, r.After, r.GaugesZero, r.GaugesDetail, r.LeakFree)
}

func percentiles(d []time.Duration) (p50, p95, p99, mean float64) {
	s := stats.SummarizeDurations(d)
	ms := func(x time.Duration) float64 { return float64(x) / 1e6 }
	return ms(s.P50), ms(s.P95), ms(s.P99), ms(s.Mean)
}

// pickRepo sends half the requests to one hot repository, so its queue
// fills (and waiters are killed mid-queue), and spreads the rest.
func pickRepo(repos [][]byte) []byte {
	if rand.N(2) == 0 {
		return repos[0]
	}
	return repos[rand.N(len(repos))]
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

// connsResult is what -conns reports.
type connsResult struct {
	Connections int   `json:"connections"`
	Admitted    int64 `json:"admitted"`
	Queued      int64 `json:"queued_or_waiting"`
	Refused     int64 `json:"refused_unavailable"`
	Errors      int64 `json:"errors"`
	Before      usage `json:"before"`
	Held        usage `json:"held"`
	After       usage `json:"after"`
	RejectedTot float64
}

// holdConns opens o.conns connections at once, each asking for a distinct
// repository (so each can be admitted), holds them, measures, and closes.
func holdConns(o options, a *agentProc) (*connsResult, error) {
	before, err := a.usageGC()
	if err != nil {
		return nil, err
	}
	res := &connsResult{Connections: o.conns, Before: before}
	conns := make([]net.Conn, o.conns)
	var wg sync.WaitGroup
	var mu sync.Mutex
	sem := make(chan struct{}, 256) // connect 256 at a time: the listen backlog is finite
	for i := range o.conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("unix", a.socket, 5*time.Second)
			if err != nil {
				mu.Lock()
				res.Errors++
				mu.Unlock()
				return
			}
			b := append([]byte(shimproto.Magic), 0, 0, 0, 0)
			b = shimproto.AppendAdmit(b, &shimproto.AdmitRequest{Command: "git-upload-pack", Subcommand: "upload-pack", Repo: []byte(fmt.Sprintf("/srv/conns/r%d.git", i))})
			n := len(b) - len(shimproto.Magic) - 4
			b[len(shimproto.Magic)], b[len(shimproto.Magic)+1], b[len(shimproto.Magic)+2], b[len(shimproto.Magic)+3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
			c.Write(b)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			f, err := shimproto.ReadFrame(c, nil)
			var m shimproto.ServerMsg
			if err == nil {
				m, err = shimproto.DecodeServerMsg(f)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				res.Errors++
				c.Close()
			case m.Kind == shimproto.ServerAdmitted:
				res.Admitted++
				conns[i] = c
			case m.Kind == shimproto.ServerRejected: // over max_connections: MAX_SIZE (exit 75 in the shim)
				res.Refused++
				c.Close()
			default:
				res.Queued++
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	time.Sleep(time.Second)
	if res.Held, err = a.usageGC(); err != nil {
		return res, err
	}
	m, _ := a.scrape()
	res.RejectedTot = m[`sluice_connections_rejected_total{reason="max_connections"}`] + m[`sluice_connections_rejected_total{reason="per_uid"}`]
	fmt.Printf("holding %d connections (admitted %d, other %d, refused %d, errors %d; sluice_connections %g, sluice_connections_rejected_total %g)\n",
		o.conns, res.Admitted, res.Queued, res.Refused, res.Errors, m["sluice_connections"], res.RejectedTot)
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	ok, detail := a.waitIdle(30 * time.Second)
	time.Sleep(time.Second)
	res.After, _ = a.usageGC()
	fmt.Printf("\n| %d connections | goroutines | fds | RSS MiB | Go heap in use MiB |\n|---|---|---|---|---|\n| before | %s |\n| held | %s |\n| after close | %s |\n",
		o.conns, before.row(), res.Held.row(), res.After.row())
	if !ok {
		return res, fmt.Errorf("not idle after closing: %s", detail)
	}
	return res, nil
}

// keysResult is what -keys reports.
type keysResult struct {
	Keys        int     `json:"keys"`
	Seconds     float64 `json:"seconds"`
	PerSec      float64 `json:"admissions_per_sec"`
	MaxKeysSeen float64 `json:"max_limiter_keys_seen"`
	Before      usage   `json:"before"`
	Peak        usage   `json:"peak"`
	After       usage   `json:"after"`
}

// distinctKeys admits o.keys requests, each for its own repository, from
// o.clients clients, and watches the agent's RSS and sluice_limiter_keys.
func distinctKeys(o options, a *agentProc) (*keysResult, error) {
	before, err := a.usageGC()
	if err != nil {
		return nil, err
	}
	res := &keysResult{Keys: o.keys, Before: before, Peak: before}
	var next atomic.Int64
	var c counters
	var wg sync.WaitGroup
	start := time.Now()
	for range o.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(o.keys) {
					return
				}
				oneRequest(a.socket, []byte(fmt.Sprintf("/srv/keys/%d/r%d.git", i%1000, i)), killNone, 0, &c)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			u, err := a.usage()
			if err == nil {
				res.Peak.Goroutines = max(res.Peak.Goroutines, u.Goroutines)
				res.Peak.FDs = max(res.Peak.FDs, u.FDs)
				res.Peak.RSSKiB = max(res.Peak.RSSKiB, u.RSSKiB)
				res.Peak.HeapInuse = max(res.Peak.HeapInuse, u.HeapInuse)
			}
			m, _ := a.scrape()
			k := sumPrefix(m, "sluice_limiter_keys")
			res.MaxKeysSeen = max(res.MaxKeysSeen, k)
			fmt.Printf("%4.0fs  %d/%d admitted  limiter keys now %g  %s\n", time.Since(start).Seconds(), c.admitted.Load(), o.keys, k, u)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.PerSec = float64(c.admitted.Load()) / res.Seconds
	ok, detail := a.waitIdle(15 * time.Second)
	time.Sleep(time.Second)
	res.After, _ = a.usageGC()
	fmt.Printf("\n| %d distinct keys | goroutines | fds | RSS MiB | Go heap in use MiB |\n|---|---|---|---|---|\n| before | %s |\n| peak | %s |\n| after | %s |\n\nadmitted %d in %.0f s (%.0f/s), errors %d, rejected %d; max sluice_limiter_keys seen %g\n",
		o.keys, before.row(), res.Peak.row(), res.After.row(), c.admitted.Load(), res.Seconds, res.PerSec, c.errors.Load(), c.rejected.Load(), res.MaxKeysSeen)
	if !ok {
		return res, fmt.Errorf("not idle afterwards: %s", detail)
	}
	return res, nil
}
