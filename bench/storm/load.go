package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shirou/gopsutil/v3/process"

	"github.com/sluicehq/sluice/internal/agenttest"
)

// outcome of one client operation, as the client saw it.
type outcome string

const (
	ok       outcome = "ok"
	rejected outcome = "rejected" // the client saw a `sluice:` line
	hungUp   outcome = "hung_up"  // the server went away: an OOM kill, a git:// or HTTP rejection, a crash
	timedOut outcome = "timeout"  // the per-operation timeout (-op-timeout)
	cutOff   outcome = "cut_off"  // still running when the storm window closed: unfinished, not failed
	failed   outcome = "other"    // anything else
)

type op struct {
	Client  int    // client index (-1: the probe; pushers follow the clients)
	Addr    string // its source address
	Kind    opKind
	Repo    string        `json:",omitempty"`
	Start   time.Duration // since the storm started
	Seconds float64
	Outcome outcome
	Bytes   int64  `json:",omitempty"` // pack bytes received (clones and fetches)
	Stderr  string `json:",omitempty"`
}

// hangUpSigns are what git prints when the other end died or dropped it.
var hangUpSigns = []string{"hung up", "unexpected disconnect", "early EOF", "RPC failed", "Connection reset",
	"index-pack failed", "protocol error", "broken pipe", "Broken pipe", "unexpected end of file", "the remote end",
	"Could not read from remote repository", "Empty reply from server", "returned error: 5"}

// runGit runs git with a timeout in its own process group (so clone's
// children go too) and classifies the result. hard cancels it early
// without counting a timeout.
func runGit(hard context.Context, env []string, dir string, timeout time.Duration, args ...string) (time.Duration, outcome, string) {
	return runGitIn(nil, hard, env, dir, timeout, args...)
}

// runGitIn is runGit with git started inside the given v1 cgroups (their
// directories; through a shell that joins them and execs git, so the pid
// is git's).
func runGitIn(cgroups []string, hard context.Context, env []string, dir string, timeout time.Duration, args ...string) (time.Duration, outcome, string) {
	ctx, cancel := context.WithTimeout(hard, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", args...)
	if len(cgroups) > 0 {
		script := ""
		for i := range cgroups {
			script += fmt.Sprintf(`echo $$ > "$%d/cgroup.procs" && `, i+1)
		}
		script += fmt.Sprintf(`shift %d && exec git "$@"`, len(cgroups))
		cmd = exec.CommandContext(ctx, "/bin/sh", append(append([]string{"-c", script, "sh"}, cgroups...), args...)...)
	}
	cmd.Env, cmd.Dir = env, dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	msg := strings.TrimSpace(stderr.String())
	if len(msg) > 400 {
		msg = msg[len(msg)-400:]
	}
	switch {
	case err == nil:
		return d, ok, ""
	case hard.Err() != nil:
		return d, cutOff, msg
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return d, timedOut, msg
	case strings.Contains(msg, "sluice:"):
		return d, rejected, msg
	}
	for _, s := range hangUpSigns {
		if strings.Contains(msg, s) {
			return d, hungUp, msg
		}
	}
	return d, failed, msg
}

// endpoint is how a client of a given address reaches a repository.
type endpoint struct {
	url func(repo, addr string) string
	env func(addr string) []string // added to the client's environment
}

// loadSpec is one storm: who runs what, until when.
type loadSpec struct {
	sc         scenario
	clients    int
	addrs      []string // client i uses addrs[i % len(addrs)]
	pushAddrs  []string // pusher j uses pushAddrs[j]
	maxOps     int      // per client
	opTimeout  time.Duration
	t0, stopAt time.Time
	hardStop   time.Time // stopAt + drain
	seed       uint64
	// discard: clones, shallow clones and fetches over git:// use the
	// discarding client (rawfetch.go) instead of git.
	discard bool
}

const (
	pushInterval = 2 * time.Second
	maxPushes    = 100
)

// storm runs the scenario's clients and pushers until stopAt (no new
// operation starts after it); operations still running at hardStop are
// cut off and counted as unfinished.
func storm(ctx context.Context, l loadSpec, ep endpoint, rs *repoSet, tmp string, env []string) []op {
	hard, cancel := context.WithDeadline(ctx, l.hardStop)
	defer cancel()
	var mu sync.Mutex
	var ops []op
	add := func(o op) {
		mu.Lock()
		ops = append(ops, o)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for i := 0; i < l.clients; i++ {
		addr := l.addrs[i%len(l.addrs)]
		cenv := append(append([]string{}, env...), ep.env(addr)...)
		rng := rand.New(rand.NewPCG(l.seed, uint64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < l.maxOps && time.Now().Before(l.stopAt) && ctx.Err() == nil; n++ {
				kind, repo := l.sc.pick(rng)
				u := ep.url(repo, addr)
				var o op
				if l.discard && strings.HasPrefix(u, "git://") && kind != kLsRemote {
					o = rawClientOp(hard, l.t0, kind, repo, u, addr, rs, l.opTimeout)
				} else {
					o = clientOp(hard, l.t0, kind, repo, u, rs, cenv, tmp, l.opTimeout)
				}
				o.Client, o.Addr = i, addr
				add(o)
			}
		}()
	}
	for j := 0; j < l.sc.Pushers && j < len(l.pushAddrs); j++ {
		addr := l.pushAddrs[j]
		cenv := append(append([]string{}, env...), ep.env(addr)...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			pusher(hard, l, l.clients+j, addr, ep.url("push", addr), rs, cenv, tmp, add)
		}()
	}
	wg.Wait()
	return ops
}

// clientOp runs one operation in a fresh directory, removed afterwards.
func clientOp(hard context.Context, t0 time.Time, kind opKind, repo, url string, rs *repoSet, env []string, tmp string, timeout time.Duration) op {
	o := op{Kind: kind, Repo: repo, Start: time.Since(t0)}
	dir, err := os.MkdirTemp(tmp, string(kind)+"-")
	if err != nil {
		o.Outcome, o.Stderr = failed, err.Error()
		return o
	}
	defer os.RemoveAll(dir)
	var d time.Duration
	var msg string
	switch kind {
	case kClone:
		d, o.Outcome, msg = runGit(hard, env, "", timeout, "clone", "-q", "--bare", url, dir)
	case kShallow:
		d, o.Outcome, msg = runGit(hard, env, "", timeout, "clone", "-q", "--bare", "--depth", "1", url, dir)
	case kLsRemote:
		d, o.Outcome, msg = runGit(hard, env, "", timeout, "ls-remote", url)
	case kFetch:
		if err := initBorrowing(env, dir, rs.template[repo], rs.oldTip[repo]); err != nil {
			o.Outcome, o.Stderr = failed, err.Error()
			return o
		}
		d, o.Outcome, msg = runGit(hard, env, dir, timeout, "fetch", "-q", url, "+refs/heads/main:refs/heads/main")
	default:
		panic("clientOp: " + string(kind))
	}
	o.Seconds, o.Stderr = d.Seconds(), msg
	if o.Outcome == ok && kind != kLsRemote {
		o.Bytes = packBytes(dir)
	}
	return o
}

// rawClientOp is clientOp for a discarding client (rawfetch.go): no
// local repository; a fetch sends the old tip it would have as its have.
func rawClientOp(hard context.Context, t0 time.Time, kind opKind, repo, url, addr string, rs *repoSet, timeout time.Duration) op {
	o := op{Kind: kind, Repo: repo, Start: time.Since(t0)}
	var haves []string
	depth := 0
	switch kind {
	case kShallow:
		depth = 1
	case kFetch:
		haves = []string{rs.oldTip[repo]}
	}
	d, oc, msg, n := rawOp(hard, timeout, url, addr, haves, depth)
	o.Seconds, o.Outcome, o.Stderr = d.Seconds(), oc, msg
	if oc == ok {
		o.Bytes = n
	}
	return o
}

// packBytes sums the pack files an operation received.
func packBytes(dir string) int64 {
	m, _ := filepath.Glob(filepath.Join(dir, "objects", "pack", "*.pack"))
	var n int64
	for _, f := range m {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// pusher pushes a new commit (one new 4 KiB file on top of its previous
// push) to refs/heads/push-<id> every pushInterval until the storm ends.
// Its local repository borrows push.git's original objects, so each push
// sends just the new commit, tree and blob.
func pusher(hard context.Context, l loadSpec, id int, addr, url string, rs *repoSet, env []string, tmp string, add func(op)) {
	dir := filepath.Join(tmp, fmt.Sprintf("pusher-%d", id))
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	if err := initBorrowing(env, dir, rs.pushSrc, rs.pushTip); err != nil {
		add(op{Client: id, Addr: addr, Kind: kPush, Outcome: failed, Stderr: err.Error()})
		return
	}
	parent := rs.pushTip
	rng := rand.New(rand.NewPCG(l.seed, uint64(1000+id)))
	for n := 0; n < maxPushes && time.Now().Before(l.stopAt) && hard.Err() == nil; n++ {
		start := time.Since(l.t0)
		commit, err := makeCommit(env, dir, parent, fmt.Sprintf("push-%d-%d.txt", id, n), randomText(rng, 4096))
		if err != nil {
			add(op{Client: id, Addr: addr, Kind: kPush, Start: start, Outcome: failed, Stderr: err.Error()})
			return
		}
		d, oc, msg := runGit(hard, env, dir, l.opTimeout, "push", "-q", url, fmt.Sprintf("+%s:refs/heads/push-%d", commit, id))
		add(op{Client: id, Addr: addr, Kind: kPush, Repo: "push", Start: start, Seconds: d.Seconds(), Outcome: oc, Stderr: msg})
		if oc == ok {
			parent = commit
		}
		select {
		case <-hard.Done():
			return
		case <-time.After(pushInterval):
		}
	}
}

// makeCommit writes a blob, a one-file tree and a commit on parent.
func makeCommit(env []string, dir, parent, name string, content []byte) (string, error) {
	run := func(stdin []byte, args ...string) (string, error) {
		c := gitCmd(env, dir, args...)
		c.Stdin = bytes.NewReader(stdin)
		out, err := c.Output()
		if err != nil {
			return "", fmt.Errorf("git %s: %w", args[0], err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	blob, err := run(content, "hash-object", "-w", "--stdin")
	if err != nil {
		return "", err
	}
	tree, err := run([]byte("100644 blob "+blob+"\t"+name+"\n"), "mktree")
	if err != nil {
		return "", err
	}
	return run(nil, "-c", "user.name=storm", "-c", "user.email=storm@example.com", "commit-tree", tree, "-p", parent, "-m", name)
}

// probe runs `git ls-remote url` once per second from 127.0.0.1 until
// ctx ends: what another user of the server sees.
//
// cgroups (may be empty) are where its git runs: a cpu cgroup of its own
// with the largest cpu.shares, so what it measures is the server, not
// its queue for the CPU the 48 clients saturate.
func probe(ctx context.Context, cgroups []string, url string, env []string, t0 time.Time) []op {
	var ops []op
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		start := time.Since(t0)
		d, oc, msg := runGitIn(cgroups, ctx, env, "", 10*time.Second, "ls-remote", url)
		if oc != cutOff {
			ops = append(ops, op{Client: -1, Addr: "127.0.0.1", Kind: kLsRemote, Repo: "probe", Start: start, Seconds: d.Seconds(), Outcome: oc, Stderr: msg})
		}
		select {
		case <-ctx.Done():
			return ops
		case <-tick.C:
		}
	}
}

// sample is one 500 ms reading of the server and the agent.
type sample struct {
	T        float64            // seconds since the mode started
	MemBytes int64              // server cgroup usage
	Limit    map[string]float64 `json:",omitempty"` // sluice_concurrency_limiting_current_limit by rule
	InFlight map[string]float64 `json:",omitempty"`
	Queued   map[string]float64 `json:",omitempty"`
	AgentRSS int64              `json:",omitempty"`
	Load1    float64            // the machine's 1-minute load average (shared machine)
}

// sampler reads the server cgroup and scrapes the agent every 500 ms.
func sampler(ctx context.Context, cg *serverCgroup, ag *agent, t0 time.Time) []sample {
	var out []sample
	var p *process.Process
	if ag != nil {
		p, _ = process.NewProcess(int32(ag.pid))
	}
	client := &http.Client{Timeout: 400 * time.Millisecond}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		s := sample{T: time.Since(t0).Seconds(), Load1: loadAvg1()}
		if cg != nil {
			s.MemBytes = cg.usage()
		}
		if ag != nil {
			if m, err := scrape(client, ag.metrics); err == nil {
				s.Limit = m["sluice_concurrency_limiting_current_limit"]
				s.InFlight = m["sluice_concurrency_limiting_in_progress"]
				s.Queued = m["sluice_concurrency_limiting_queued"]
			}
			if p != nil {
				if mi, err := p.MemoryInfo(); err == nil {
					s.AgentRSS = int64(mi.RSS)
				}
			}
		}
		out = append(out, s)
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
	}
}

// scrape reads a Prometheus text exposition and returns, for each metric
// name, its values summed by the `limit` label (or under "" without one).
func scrape(c *http.Client, url string) (map[string]map[string]float64, error) {
	r, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	out := map[string]map[string]float64{}
	err = eachSample(r.Body, func(name, labels string, v float64) {
		key := labelValue(labels, "limit")
		if out[name] == nil {
			out[name] = map[string]float64{}
		}
		out[name][key] += v
	})
	return out, err
}

// eachSample calls fn for every sample of a Prometheus text exposition
// (agenttest.ParseMetrics): the metric name, its labels ("{…}" or "") and
// its value.
func eachSample(r io.Reader, fn func(name, labels string, v float64)) error {
	m, err := agenttest.ParseMetrics(r)
	for series, v := range m {
		name, labels := series, ""
		if i := strings.IndexByte(series, '{'); i >= 0 {
			name, labels = series[:i], series[i:]
		}
		fn(name, labels, v)
	}
	return err
}

// counter sums a metric over the series whose labels contain every given
// name="value" pair.
func counter(c *http.Client, url, name string, match ...string) float64 {
	r, err := c.Get(url)
	if err != nil {
		return 0
	}
	defer r.Body.Close()
	var sum float64
	eachSample(r.Body, func(n, labels string, v float64) {
		if n != name {
			return
		}
		for _, m := range match {
			if !strings.Contains(labels, m) {
				return
			}
		}
		sum += v
	})
	return sum
}

func labelValue(labels, name string) string {
	i := strings.Index(labels, name+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(name)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return ""
}
