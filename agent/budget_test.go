package agent

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/agent/admitpb"
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
