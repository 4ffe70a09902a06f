package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/policy"
)

// TestBudgetAdmission: with the default policy a pack-objects takes its
// rule's slot and the pack class's slot together, a push takes the
// receive-pack class's, and releasing gives both back; status shows the
// three classes, how pack was derived, and the fair key.
func TestBudgetAdmission(t *testing.T) {
	cfg := policy.Default()
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t)})
	rule, lim := a.ruleFor("pack-objects")
	l := &Lease{Subcommand: "pack-objects", RemoteIP: "2001:db8::1", Repo: []byte("/srv/a.git")}
	l.Key = rule.KeyFor(policy.KeyInput{RemoteIP: l.RemoteIP})
	rel, _, err := a.acquire(context.Background(), rule, lim, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	pack := a.budget.class(policy.ClassPack).b
	if s := pack.Stats(); s.Running != 1 || lim.Stats().Running != 1 {
		t.Fatalf("pack budget %+v, rule %+v: want one slot each", s, lim.Stats())
	}
	rrule, rlim := a.ruleFor("receive-pack")
	push := &Lease{Subcommand: "receive-pack", RemoteIP: "192.0.2.1", Repo: []byte("/srv/a.git")}
	push.Key = rrule.KeyFor(policy.KeyInput{Repo: push.Repo})
	prel, _, err := a.acquire(context.Background(), rrule, rlim, push, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := a.budget.class(policy.ClassReceivePack).b.Stats(); s.Running != 1 {
		t.Fatalf("receive-pack class %+v", s)
	}
	st := a.Status()
	if len(st.Budgets) != 3 {
		t.Fatalf("status budgets %v", st.Budgets)
	}
	var p *admitpb.BudgetStatus
	for _, b := range st.Budgets {
		if b.Class == policy.ClassPack {
			p = b
		}
	}
	if p == nil || !p.Adaptive || p.InUse != 1 || p.FairKey != "remote_ip" || !strings.Contains(p.Derivation, "CPUs") || p.Cpus <= 0 {
		t.Fatalf("pack status %+v", p)
	}
	rel()
	prel()
	if s := pack.Stats(); s.Running != 0 || s.Keys != 0 || lim.Stats().Running != 0 {
		t.Fatalf("after release: budget %+v rule %+v", s, lim.Stats())
	}
	// The budget's hook: with [budget] enabled = false nothing is taken.
	off, err := policy.Parse("off.toml", []byte("[budget]\nenabled = false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if bc := a.budgetClassFor(off, rule, l); bc != nil {
		t.Fatalf("budget off, still class %s", bc.name)
	}
}

// TestRulesComposeWithBudget: a per-address cap and a per-repository cap
// on pack-objects and the host budget together. A request blocked by one
// cap holds nothing while it waits (it times out holding nothing), and a
// request the caps allow is admitted past it.
func TestRulesComposeWithBudget(t *testing.T) {
	cfg, err := policy.Parse("compose.toml", []byte(`
[[limit]]
name = "pack-per-address"
match = ["pack-objects"]
key = "remote_ip"
max_per_key = 2
max_queue_size = 10
max_queue_wait = "50ms"

[[limit]]
name = "pack-per-repo"
match = ["pack-objects"]
key = "repo"
max_per_key = 1
max_queue_size = 10
max_queue_wait = "10s"
`))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t)})
	req := func(ip, repo string) (func(), error) {
		rule, lim := a.ruleFor("pack-objects")
		l := &Lease{Subcommand: "pack-objects", RemoteIP: ip, Repo: []byte(repo)}
		l.Key = rule.KeyFor(policy.KeyInput{RemoteIP: ip, Repo: l.Repo})
		rel, _, err := a.acquire(context.Background(), rule, lim, l, nil)
		return rel, err
	}
	perIP, perRepo := a.limiter("pack-per-address"), a.limiter("pack-per-repo")
	first, err := req("192.0.2.1", "/srv/a.git")
	if err != nil {
		t.Fatal(err)
	}
	// Same repository, other address: the repository cap (1) is full; it
	// waits the shortest max_queue_wait of its rules (50ms) holding nothing.
	if _, err := req("192.0.2.2", "/srv/a.git"); err == nil {
		t.Fatal("admitted past the per-repository cap")
	}
	if perIP.Stats().Running != 1 || perRepo.Stats().Running != 1 || a.budget.class(policy.ClassPack).b.Stats().Running != 1 {
		t.Fatalf("a waiter that gave up left slots: address %+v repo %+v", perIP.Stats(), perRepo.Stats())
	}
	second, err := req("192.0.2.1", "/srv/b.git")
	if err != nil {
		t.Fatalf("same address, other repository: %v", err)
	}
	if perIP.Stats().Running != 2 || perRepo.Stats().Running != 2 {
		t.Fatalf("address %+v repo %+v", perIP.Stats(), perRepo.Stats())
	}
	first()
	second()
	for _, l := range []interface{ Stats() limiter.Stats }{perIP, perRepo} {
		if s := l.Stats(); s.Running != 0 || s.Keys != 0 || s.Queued != 0 {
			t.Fatalf("leaked: %+v", s)
		}
	}
}

// TestBudgetWatchesOwnCgroup: when the watched cgroup has no memory
// limit but the agent's own cgroup (where the Git server runs) has one,
// the budget watches that limit: a working set at 93 % of it halves the
// pack budget at the sample that sees it, and says whose limit.
func TestBudgetWatchesOwnCgroup(t *testing.T) {
	dir := t.TempDir()
	for name, v := range map[string]string{
		"memory.usage_in_bytes": fmt.Sprint(950 << 20), "memory.limit_in_bytes": fmt.Sprint(1 << 30),
		"memory.stat": "total_inactive_file 0\ntotal_rss 0\n", "memory.oom_control": "oom_kill 0\n",
		"cgroup.procs": "", "cpuacct.usage": "0", "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := New(Options{Policy: policy.Default(), Log: zaptest.NewLogger(t)})
	a.budget.own = &cgroup.OwnCgroup{Path: "/server", MemDir: dir, CPUDir: dir, CPUAcctDir: dir, PSIDir: dir, Limit: 1 << 30}
	if st, err := a.budget.own.Stats(); err != nil || st.MemoryLimit != 1<<30 {
		t.Fatalf("fixture: %+v %v", st, err)
	}
	pack := a.budget.class(policy.ClassPack)
	pack.b.SetLimit(pack.ctl.Limit())
	before := pack.ctl.Limit()
	ad := &a.Policy().Adaptive
	now := time.Now()
	budgetStepper{a}.StepBudget(now, nil, &cgroup.Stats{}, ad) // the first sample starts the epoch
	budgetStepper{a}.StepBudget(now.Add(time.Second), nil, &cgroup.Stats{}, ad)
	if got := pack.b.Stats().Limit; got != max(1, before/2) {
		t.Fatalf("pack budget %d after the own cgroup reached 93%%, want %d", got, max(1, before/2))
	}
	if why := pack.ctl.State().LastMove.Reason; !strings.Contains(why, "agent's cgroup /server") {
		t.Fatalf("reason %q does not name the cgroup", why)
	}
}

// TestGoodputReadsChildren: goodput counts what a pack-class lease's
// process and its children write (/proc/PID/io wchar): the shim in
// supervising mode is the peer, its git child does the writing.
func TestGoodputReadsChildren(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "dd if=/dev/zero of=/dev/null bs=64k 2>/dev/null; true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The whole group: killing sh alone left its dd running for good.
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	h := &hostBudget{io: map[string]map[int32]uint64{}}
	l := []Lease{{ID: "x", Subcommand: "pack-objects", State: StateRunning, Peer: PeerCred{PID: int32(cmd.Process.Pid)}}}
	var first uint64
	waitUntil(t, "the child seen writing", func() bool {
		if first == 0 {
			first = h.sampleGoodput(l, nil) + 1
			return false
		}
		return h.sampleGoodput(l, nil) > first
	})
	// A lease that ended is forgotten.
	h.sampleGoodput(nil, nil)
	if len(h.io) != 0 {
		t.Fatalf("io state kept for ended leases: %v", h.io)
	}

	// Exec mode: the lease's own process writes; it is read without the
	// process table.
	dd := exec.Command("dd", "if=/dev/zero", "of=/dev/null", "bs=64k")
	if err := dd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { dd.Process.Kill(); dd.Wait() }()
	inPlace := func(pid int32) bool { return int(pid) == dd.Process.Pid }
	l = []Lease{{ID: "y", Subcommand: "pack-objects", State: StateRunning, Peer: PeerCred{PID: int32(dd.Process.Pid)}}}
	first = 0
	waitUntil(t, "the exec'd process seen writing", func() bool {
		if first == 0 {
			first = h.sampleGoodput(l, inPlace) + 1
			return false
		}
		return h.sampleGoodput(l, inPlace) > first
	})
}

// TestBudgetWaitMessage: a request that waited out its queue while its
// rule's key had room is told it waited for the host budget.
func TestBudgetWaitMessage(t *testing.T) {
	cfg, err := policy.Parse("b.toml", []byte("[budget]\npack = 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t)})
	rule, lim := a.ruleFor("pack-objects")
	l := &Lease{Subcommand: "pack-objects", RemoteIP: "192.0.2.1"}
	l.Key = rule.KeyFor(policy.KeyInput{RemoteIP: l.RemoteIP})
	if got := a.budgetWaitMessage(l, rule, lim, "rule msg"); got != "rule msg" {
		t.Fatalf("budget not full: %q", got)
	}
	rel, _, err := a.acquire(context.Background(), rule, lim, &Lease{Subcommand: "pack-objects", RemoteIP: "192.0.2.2", Key: "192.0.2.2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	got := a.budgetWaitMessage(l, rule, lim, "rule msg")
	if !strings.Contains(got, "this server's pack budget (1 running for all clients, shared fairly by your address") || !strings.HasPrefix(got, "sluice: ") {
		t.Fatalf("message %q", got)
	}
}
