package agent

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/adaptive"
	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// Options configure an Agent.
type Options struct {
	// Policy is the configuration in force; required.
	Policy *policy.Config
	// Log receives the agent's logs; nil discards them.
	Log *zap.Logger
	// Observer receives metrics events; nil discards them.
	Observer Observer
	// Version is reported by the admin API.
	Version string
	// ConfigPath is the policy file Reload re-reads; "" means the agent
	// runs on the embedded default (Reload then looks for
	// policy.DefaultPath).
	ConfigPath string
	// OnReload is called after a reload applied cfg (to rewrite shim.conf,
	// update cgroup limits and metric labels); the notes it returns are
	// reported with the changes. Nil: nothing to do.
	OnReload func(cfg *policy.Config) (notes []string)
	// Describe, when set, adds what only the caller knows (cgroup and eBPF
	// state) to every Status answer.
	Describe func(*admitpb.StatusResponse)
	// Placer puts admitted processes into cgroup buckets; nil means no
	// placement (cgroups disabled or unavailable).
	Placer Placer
	// Tracer follows admitted processes to their exit in the kernel; with
	// one, shims exec git in place (see ProcessTracer). Nil: supervising
	// mode only.
	Tracer ProcessTracer
	// StateDir keeps a file per running lease so that a restarted agent
	// can adopt the commands still running (see recovery.go); "" keeps
	// no state.
	StateDir string
	// PackCache serves pack cache connections (agent/packcache); nil: no
	// pack cache, shims that ask run pack-objects uncached.
	PackCache PackCache
	// Cgroups is sluice's hierarchy (cgroup.Setup): the Placer when
	// Placer is nil, reported by Status, reconfigured by a reload, removed
	// by Run when empty. Nil: no sluice cgroups.
	Cgroups cgroup.Manager
	// CgroupState is Status's cgroup state without Cgroups ("disabled",
	// "unavailable: …"); TracerState is its eBPF state ("running",
	// "disabled", "unavailable: …"). "" reports nothing.
	CgroupState, TracerState string
}

// Placer puts an admitted process into its repository's cgroup bucket
// before the real git starts, so git and all its children run there.
type Placer interface {
	// Bucket maps a repository path to a bucket index (stable).
	Bucket(repo []byte) int
	// BucketPath names bucket i for logs and status.
	BucketPath(i int) string
	// Place moves pid into bucket i.
	Place(pid, bucket int) error
}

// Agent is the admission service. Create it with New, then call Serve.
type Agent struct {
	log     *zap.Logger
	obs     Observer
	version string
	placer  Placer
	tracer  ProcessTracer
	started time.Time
	// stateDir holds running leases' state files ("" for none).
	stateDir    string
	stateFD     int // stateDir, opened and checked by Recover; -1 before
	stateErrors atomic.Uint64
	stateLogged atomic.Int64 // unix ns of the last state error logged
	stateMu     sync.Mutex   // guards stateProblem
	// stateProblem says why the state directory is not in use.
	stateProblem string
	calib        *adaptive.Controller
	packCache    PackCache
	// cgroups, cgroupState and tracerState are Options'.
	cgroups                  cgroup.Manager
	cgroupState, tracerState string
	// shimConf is shim.conf beside the socket, set by Start ("" until
	// then: nothing writes it); madeRunDir says Start created the
	// socket's directory.
	shimConf   string
	madeRunDir bool

	describe   func(*admitpb.StatusResponse)
	socket     string // set by Serve
	configPath string
	onReload   func(*policy.Config) []string
	reloadMu   sync.Mutex // serialises Reload
	leases     *LeaseTable
	timeouts   *timekeeper

	// stopping is cancelled when shutdown begins: waiters are rejected
	// as unavailable and new requests are refused.
	stopping context.Context
	stop     context.CancelFunc
	// placementFailures counts admitted processes that could not be put
	// into their bucket.
	placementFailures atomic.Uint64
	// admitting counts requests inside admit, so shutdown can wait for
	// their replies to be sent.
	admitting atomic.Int64
	// conns counts connections against [agent] max_connections.
	conns connCounter
	// acl caches [agent] admit_users and admit_groups, resolved.
	acl aclCache

	servers    *serverTable
	execMu     sync.Mutex
	execLeases map[int]*execHold // by pid; guarded by execMu
	lateExits  map[int]*lateExit // released leases awaiting their exit event, by pid; guarded by execMu

	// group links the rules' limiters and the budget's classes, so a
	// request takes its rule slot and budget slot together (budget.go).
	group  *limiter.Group
	budget *hostBudget
	// rulesOnly composes the slots of several rules matching one
	// subcommand when the budget does not apply: it never runs out.
	rulesOnly *limiter.Budget

	mu       sync.RWMutex // guards the fields below
	policy   *policy.Config
	limiters map[string]*limiter.Limiter // by rule name
}

// New returns an agent enforcing opts.Policy.
func New(opts Options) *Agent {
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	obs := opts.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{
		log:         log.Named("agent"),
		obs:         obs,
		version:     opts.Version,
		placer:      opts.Placer,
		tracer:      opts.Tracer,
		stateDir:    opts.StateDir,
		stateFD:     -1,
		packCache:   opts.PackCache,
		cgroups:     opts.Cgroups,
		cgroupState: opts.CgroupState,
		tracerState: opts.TracerState,
		execLeases:  make(map[int]*execHold),
		lateExits:   make(map[int]*lateExit),
		servers:     newServerTable(procfs.Default),
		configPath:  opts.ConfigPath,
		describe:    opts.Describe,
		onReload:    opts.OnReload,
		started:     time.Now(),
		leases:      NewLeaseTable(),
		stopping:    ctx,
		stop:        cancel,
		policy:      opts.Policy,
		limiters:    make(map[string]*limiter.Limiter),
		group:       limiter.NewGroup(),
	}
	if a.placer == nil && opts.Cgroups != nil {
		a.placer = opts.Cgroups
	}
	fdBudget() // read the open-file limit now, before anything can change it
	a.budget = newHostBudget(opts.Policy, a.group, a.log.Named("budget"))
	a.rulesOnly = limiter.NewBudget(limiter.BudgetConfig{Name: "rules", Limit: math.MaxInt32}, a.group)
	a.calib = adaptive.NewController(adaptive.Options{Limits: adaptiveLimits{a}, Log: a.log, OnBackoff: obs.Backoff, Budget: budgetStepper{a}})
	a.timeouts = newTimekeeper(a.log.Named("timeouts"), obs, realProcOps())
	a.timeouts.negotiated = a.markNegotiated
	for i := range opts.Policy.Limits {
		r := &opts.Policy.Limits[i]
		a.limiters[r.Name] = limiter.New(limiterConfig(r), limiter.WithGroup(a.group))
	}
	return a
}

// Policy returns the configuration in force.
func (a *Agent) Policy() *policy.Config {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.policy
}

// ruleFor returns the rule matching subcommand and its limiter, or nils.
func (a *Agent) ruleFor(subcommand string) (*policy.Limit, *limiter.Limiter) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	r := a.policy.LimitFor(subcommand)
	if r == nil {
		return nil, nil
	}
	return r, a.limiters[r.Name]
}

// limiter returns rule name's limiter, nil when the rule is gone.
func (a *Agent) limiter(name string) *limiter.Limiter {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.limiters[name]
}

// adaptiveLimits is the adaptive controller's view of the agent: the
// policy in force and each rule's limiter.
type adaptiveLimits struct{ a *Agent }

func (l adaptiveLimits) Policy() *policy.Config { return l.a.Policy() }

func (l adaptiveLimits) Limiter(rule string) adaptive.Adjustable {
	if lim := l.a.limiter(rule); lim != nil {
		return lim
	}
	return nil // not a typed nil: the controller checks for none
}

// RunAdaptive adapts the limits of adaptive rules to the pressures src
// reports until ctx ends (see adaptive.Controller.Run).
func (a *Agent) RunAdaptive(ctx context.Context, src adaptive.Source) { a.calib.Run(ctx, src) }

// Limiters returns the stats of every rule's limiter in policy order.
func (a *Agent) Limiters() []limiter.Stats {
	_, stats := a.limitsSnapshot()
	return stats
}

// limitsSnapshot returns the policy in force and its limiters' stats (in
// policy order), read together so a concurrent reload cannot pair a rule
// with another rule's numbers.
func (a *Agent) limitsSnapshot() (*policy.Config, []limiter.Stats) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]limiter.Stats, 0, len(a.policy.Limits))
	for _, r := range a.policy.Limits {
		out = append(out, a.limiters[r.Name].Stats())
	}
	return a.policy, out
}

// Leases returns a snapshot of the lease table, oldest first.
func (a *Agent) Leases() []Lease { return a.leases.Snapshot() }

// PlacementFailures returns how many admitted processes could not be put
// into their cgroup bucket since start.
func (a *Agent) PlacementFailures() uint64 { return a.placementFailures.Load() }

// socketPath is where Serve listens ("" before Serve).
func (a *Agent) socketPath() string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.socket
}
