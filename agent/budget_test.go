package agent

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/limiter"
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
