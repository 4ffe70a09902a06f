package agent

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/mem"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/adaptive"
	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// The host budget (issue 17) in the agent: one limiter.Budget per class
// (policy.BudgetClasses), in one limiter.Group with every rule's limiter,
// so that a request takes its budget slot and its rule slot together.
// The pack class's limit is adapted by an adaptive.BudgetController,
// stepped by the adaptive loop at every sample (StepBudget); the other
// two classes have limits derived from the host once.
//
// Derived limits of the fixed classes:
//   - upload-pack: ⌊50 % of memory / 8 MiB⌋ within [16, 4096]. An
//     upload-pack costs about 4 MiB and no CPU while it negotiates and
//     relays its pack-objects' output; the bound only keeps thousands of
//     them from adding up, and gives fair shares of the upload-pack rule's
//     per-repository slots across clients.
//   - receive-pack: max(8, 4 × CPUs). Pushes are few and must never wait
//     for a clone storm: their class shares nothing with pack or
//     upload-pack, so they are bounded only by themselves.
const (
	uploadPackEstimate = 8 << 20
	uploadPackMin      = 16
	uploadPackMax      = 4096
	receivePackMin     = 8
	receivePackPerCPU  = 4
)

type hostBudget struct {
	log   *zap.Logger
	group *limiter.Group
	cpus  float64
	// cpuWhy and memWhy say where the capacity was read.
	cpuWhy, memWhy string
	mem            uint64
	// own is the agent's own memory cgroup when its limit is the memory
	// the budget divides: the watched cgroup (sluice's parent) may have
	// no limit of its own while the cgroup sluiced and the server run in
	// has one, and that is the limit that OOM-kills.
	own *cgroup.OwnCgroup

	mu      sync.Mutex // guards the fields below
	classes map[string]*budgetClass
	// io is the last wchar seen per running pack-class lease and pid;
	// bytes is their sum of increases since start (goodput).
	io    map[string]map[int32]uint64
	bytes uint64
}

type budgetClass struct {
	name  string
	b     *limiter.Budget
	ctl   *adaptive.BudgetController // pack only
	fixed int                        // the policy's fixed limit, 0: derived
	why   string                     // how the limit was derived (non-pack)
}

// newHostBudget reads the host's capacity and builds the classes of cfg.
func newHostBudget(cfg *policy.Config, g *limiter.Group, log *zap.Logger) *hostBudget {
	h := &hostBudget{log: log, group: g, classes: map[string]*budgetClass{}, io: map[string]map[int32]uint64{}}
	h.cpus, h.cpuWhy = cgroup.AllowedCPUs(cfg.Cgroups.Mountpoint)
	if q := cfg.Cgroups.CPUQuotaUs; cfg.Cgroups.Enabled && q > 0 && float64(q)/100000 < h.cpus {
		h.cpus = float64(q) / 100000
		h.cpuWhy = fmt.Sprintf("[cgroups] cpu_quota_us = %d", q)
	}
	h.mem, h.memWhy, h.own = memoryAvailable(cfg)
	for _, name := range policy.BudgetClasses {
		h.classes[name] = &budgetClass{name: name, b: limiter.NewBudget(limiter.BudgetConfig{Name: name, Limit: 1}, g)}
	}
	h.configure(cfg)
	return h
}

// memoryAvailable is the memory the budget divides: sluice's parent
// cgroup's limit, else the agent's own memory cgroup's, else the host's.
func memoryAvailable(cfg *policy.Config) (uint64, string, *cgroup.OwnCgroup) {
	if cfg.Cgroups.Enabled && cfg.Cgroups.MemoryBytes > 0 {
		return uint64(cfg.Cgroups.MemoryBytes), "[cgroups] memory_bytes", nil
	}
	if own, err := cgroup.FindOwnCgroup(cfg.Cgroups.Mountpoint, ""); err == nil && own != nil {
		return own.Limit, "memory limit of the agent's cgroup " + own.Path, own
	}
	if v, err := mem.VirtualMemory(); err == nil {
		return v.Total, "host memory", nil
	}
	return 0, "unknown", nil
}

// configure applies cfg's fixed limits (at start and on reload): a
// changed [budget] pack starts the pack controller over.
func (h *hostBudget) configure(cfg *policy.Config) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := &cfg.Budget
	pack := h.classes[policy.ClassPack]
	if pack.ctl == nil || pack.fixed != b.Pack {
		pack.ctl = adaptive.NewBudgetController(h.cpus, h.mem, b.Pack)
		pack.fixed = b.Pack
		pack.b.SetLimit(pack.ctl.Limit())
	}
	up := h.classes[policy.ClassUploadPack]
	up.fixed = b.UploadPack
	if b.UploadPack > 0 {
		up.why = fmt.Sprintf("fixed by [budget] upload_pack = %d", b.UploadPack)
		up.b.SetLimit(b.UploadPack)
	} else {
		n := uploadPackMax
		if h.mem > 0 {
			n = min(max(int(h.mem/2/uploadPackEstimate), uploadPackMin), uploadPackMax)
		}
		up.why = fmt.Sprintf("%d = 50%% of %d MiB / 8 MiB per upload-pack, within [%d, %d]", n, h.mem>>20, uploadPackMin, uploadPackMax)
		up.b.SetLimit(n)
	}
	rp := h.classes[policy.ClassReceivePack]
	rp.fixed = b.ReceivePack
	if b.ReceivePack > 0 {
		rp.why = fmt.Sprintf("fixed by [budget] receive_pack = %d", b.ReceivePack)
		rp.b.SetLimit(b.ReceivePack)
	} else {
		n := max(receivePackMin, int(math.Ceil(receivePackPerCPU*h.cpus)))
		rp.why = fmt.Sprintf("%d = max(%d, %d × %.3g CPUs); pushes share no slot with clones", n, receivePackMin, receivePackPerCPU, h.cpus)
		rp.b.SetLimit(n)
	}
}

func (h *hostBudget) class(name string) *budgetClass {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.classes[name]
}

// budgetClassFor returns the budget class whose slot request l takes
// under rule, nil to admit it without a budget slot (the budget is off,
// no rule matched, or the subcommand is not budgeted).
//
// This is the hook for "admit without a budget slot": a request that
// costs the host nothing to speak of (e.g. a pack served from a pack
// cache hit) returns nil here and takes only its rule's slot.
func (a *Agent) budgetClassFor(pol *policy.Config, rule *policy.Limit, l *Lease) *budgetClass {
	if !pol.Budget.Enabled || rule == nil || a.budget == nil {
		return nil
	}
	name := policy.BudgetClassFor(l.Subcommand)
	if name == "" {
		return nil
	}
	return a.budget.class(name)
}

// acquire takes the slots request l needs: its rule's slot under l.Key,
// a slot of every further rule matching its subcommand, and its budget
// class's slot (fair-shared across [budget] fair_key): all of them, or
// none while it waits.
func (a *Agent) acquire(ctx context.Context, rule *policy.Limit, lim *limiter.Limiter, l *Lease, onQueued limiter.QueueFunc) (func(), time.Duration, error) {
	pol := a.Policy()
	in := policy.KeyInput{Repo: l.Repo, RemoteIP: l.RemoteIP, User: l.User}
	claims := []limiter.Claim{{Limiter: lim, Key: l.Key}}
	for _, r := range pol.LimitsFor(l.Subcommand) {
		if r.Name == rule.Name {
			continue
		}
		if extra := a.limiter(r.Name); extra != nil {
			claims = append(claims, limiter.Claim{Limiter: extra, Key: r.KeyFor(in)})
		}
	}
	bc := a.budgetClassFor(pol, rule, l)
	if bc == nil {
		if len(claims) == 1 {
			return lim.AcquireSince(ctx, l.Key, l.queuedSince, onQueued)
		}
		// Several rules, no budget: an unbounded budget takes them
		// together (first come first served).
		return a.rulesOnly.Acquire(ctx, limiter.Request{FairKey: "rules", Weight: 1, Claims: claims, LIFO: rule.Order() == policy.QueueLIFO, Since: l.queuedSince}, onQueued)
	}
	return bc.b.Acquire(ctx, limiter.Request{
		FairKey: pol.FairKeyFor(in),
		Weight:  pol.WeightFor(in),
		Claims:  claims,
		// Within a key, the primary rule's queue order.
		LIFO:  rule.Order() == policy.QueueLIFO,
		Since: l.queuedSince,
	}, onQueued)
}

// budgetWaitMessage names the host budget in the message of a request
// that waited out max_queue_wait while its rule's key had room and its
// budget class was full: the budget is what it waited for. Otherwise it
// returns msg.
func (a *Agent) budgetWaitMessage(l *Lease, rule *policy.Limit, lim *limiter.Limiter, msg string) string {
	pol := a.Policy()
	bc := a.budgetClassFor(pol, rule, l)
	if bc == nil || lim.KeyRunning(l.Key) >= lim.Stats().Limit {
		return msg
	}
	s := bc.b.Stats()
	if s.Running < s.Limit {
		return msg
	}
	return fmt.Sprintf("sluice: %s waited %s for a slot of this server's %s budget (%d running for all clients, shared fairly by %s; limit %q); try again later",
		l.Subcommand, rule.MaxQueueWait.Duration, bc.name, s.Running, describeKey(pol.Budget.FairKey), rule.Name)
}

// budgetFinished learns from a finished command of the pack class.
func (a *Agent) budgetFinished(l *Lease, fin *admitpb.Finished) {
	if a.budget == nil || fin == nil || policy.BudgetClassFor(l.Subcommand) != policy.ClassPack {
		return
	}
	if bc := a.budget.class(policy.ClassPack); bc != nil {
		bc.ctl.Finished(uint64(max(fin.MaxRssKib, 0))*1024, time.Duration(fin.RealUsec)*time.Microsecond)
	}
}

// adoptBudget counts a recovered command in its budget class and returns
// a release function that releases both it and release.
func (a *Agent) adoptBudget(l *Lease, release func()) func() {
	pol := a.Policy()
	bc := a.budgetClassFor(pol, pol.LimitFor(l.Subcommand), l)
	if bc == nil {
		return release
	}
	rel := bc.b.Adopt(pol.FairKeyFor(policy.KeyInput{Repo: l.Repo, RemoteIP: l.RemoteIP, User: l.User}))
	return func() {
		rel()
		if release != nil {
			release()
		}
	}
}

// budgetStepper steps the pack controller at every adaptive sample.
type budgetStepper struct{ a *Agent }

func (s budgetStepper) StepBudget(now time.Time, ps []adaptive.Pressure, st *cgroup.Stats, ad *policy.Adaptive) {
	h := s.a.budget
	bc := h.class(policy.ClassPack)
	bs := bc.b.Stats()
	sample := adaptive.BudgetSample{Running: bs.Running, Queued: bs.Queued, Bytes: h.sampleGoodput(s.a.leases.Snapshot(), s.a.execInPlace), Pressures: ps}
	if st != nil {
		sample.CPU = st.CPUUsage
		if st.MemoryLimit > 0 {
			ws := st.MemoryUsage - min(st.InactiveFile, st.MemoryUsage)
			sample.MemRatio = float64(ws) / float64(st.MemoryLimit)
		}
	}
	if sample.CPU == 0 {
		sample.CPU = hostCPU()
	}
	if h.own != nil && (st == nil || st.MemoryLimit == 0 || h.own.Limit < st.MemoryLimit) {
		// The limit that OOM-kills is the agent's own cgroup's: watch it
		// too, with the memory watcher's threshold.
		if ost, err := h.own.Stats(); err == nil && ost.MemoryLimit > 0 {
			ws := ost.MemoryUsage - min(ost.InactiveFile, ost.MemoryUsage)
			r := float64(ws) / float64(ost.MemoryLimit)
			sample.MemRatio = max(sample.MemRatio, r)
			if r >= ad.MemoryThreshold {
				sample.Pressures = append(sample.Pressures, adaptive.Pressure{Watcher: "memory",
					Detail: fmt.Sprintf("working set %d MiB = %.2f of the limit %d MiB of the agent's cgroup %s (threshold %.2f)",
						ws>>20, r, ost.MemoryLimit>>20, h.own.Path, ad.MemoryThreshold)})
			}
		}
	}
	old := bc.ctl.Limit()
	if n, moved := bc.ctl.Step(now, sample, ad.BackoffFactor, ad.Cooldown.Duration); moved {
		bc.b.SetLimit(n)
		why := bc.ctl.State().LastMove.Reason
		if n < old && len(ps) > 0 {
			h.log.Warn("host budget lowered", zap.String("class", bc.name), zap.Int("old", old), zap.Int("new", n), zap.String("reason", why))
		} else {
			h.log.Info("host budget moved", zap.String("class", bc.name), zap.Int("old", old), zap.Int("new", n), zap.String("reason", why))
		}
	}
}

// hostCPU is the host's busy CPU time, for a host watched without a
// cgroup.
func hostCPU() time.Duration {
	ts, err := cpu.Times(false)
	if err != nil || len(ts) == 0 {
		return 0
	}
	t := ts[0]
	busy := t.User + t.System + t.Nice + t.Irq + t.Softirq + t.Steal
	return time.Duration(busy * float64(time.Second))
}

// sampleGoodput adds what the running pack-class commands wrote since the
// last sample (/proc/PID/io wchar of each lease's process and its
// children: pack-objects writes the pack to its stdout) and returns the
// total since start. inPlace reports whether a pid runs git exec'd in
// place (exec mode): a pack-objects there has no child to look for, so
// the process table (every /proc/PID/stat: in a storm the costliest read
// of sluiced's after the cgroup walk) is read only when some lease may
// have children (supervising mode, upload-archive's writer).
func (h *hostBudget) sampleGoodput(leases []Lease, inPlace func(pid int32) bool) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := make(map[string]bool, len(leases))
	var procs *procfs.Table
	for i := range leases {
		l := &leases[i]
		if l.State != StateRunning || policy.BudgetClassFor(l.Subcommand) != policy.ClassPack || l.Peer.PID <= 0 {
			continue
		}
		seen[l.ID] = true
		last := h.io[l.ID]
		if last == nil {
			last = map[int32]uint64{}
			h.io[l.ID] = last
		}
		pids := []int32{l.Peer.PID}
		if l.Subcommand != "pack-objects" || inPlace == nil || !inPlace(l.Peer.PID) {
			if procs == nil {
				t := procfs.Default.ReadTable()
				procs = &t
			}
			pids = append(pids, descendants(procs, l.Peer.PID)...)
		}
		for _, pid := range pids {
			pio, err := procfs.Default.IO(int(pid))
			if err != nil {
				continue
			}
			w := pio.WChar
			if prev, ok := last[pid]; ok && w >= prev {
				h.bytes += w - prev
			} else if !ok {
				h.bytes += w
			}
			last[pid] = w
		}
	}
	for id := range h.io {
		if !seen[id] {
			delete(h.io, id)
		}
	}
	return h.bytes
}

// descendants returns pid's children and grandchildren (the shim's git in
// supervising mode; upload-archive's writer), at most 16.
func descendants(t *procfs.Table, pid int32) []int32 {
	var out []int32
	for _, c := range t.Children[int(pid)] {
		out = append(out, int32(c))
		for _, g := range t.Children[c] {
			out = append(out, int32(g))
		}
		if len(out) >= 16 {
			return out[:16]
		}
	}
	return out
}

// budgetStatus describes the budget for `sluice status`.
func (a *Agent) budgetStatus(pol *policy.Config) []*admitpb.BudgetStatus {
	h := a.budget
	if h == nil {
		return nil
	}
	var out []*admitpb.BudgetStatus
	for _, name := range policy.BudgetClasses {
		bc := h.class(name)
		s := bc.b.Stats()
		bs := &admitpb.BudgetStatus{
			Class: name, Enabled: pol.Budget.Enabled, Limit: int32(s.Limit), InUse: int64(s.Running), Queued: int64(s.Queued),
			Keys: int64(s.Keys), BackloggedKeys: int64(s.BackloggedKeys), Fairness: s.Fairness,
			AdmittedTotal: int64(s.Admitted), DroppedMaxSize: int64(s.DroppedSize), DroppedMaxTime: int64(s.DroppedTime),
			FairKey: pol.Budget.FairKey, Cpus: h.cpus, CpusSource: h.cpuWhy, MemoryBytes: h.mem, MemorySource: h.memWhy,
			Derivation: bc.why,
		}
		if bc.ctl != nil {
			st := bc.ctl.State()
			bs.Adaptive = !st.Fixed
			bs.Derivation = st.Derivation
			bs.Start, bs.Ceiling = int32(st.Start), int32(st.Ceiling)
			bs.EstimateRssBytes = st.EstimateRSS
			bs.ServiceTimeUsec = st.ServiceTime.Microseconds()
			bs.GoodputBytesPerSec = st.Goodput
			bs.CpuUse = st.CPUUse
			bs.CoresPerCommand = st.CoresPerCommand
			bs.EpochUsec = st.Epoch.Microseconds()
			if !st.LastMove.At.IsZero() {
				bs.LastMoveUnixUsec = st.LastMove.At.UnixMicro()
				bs.LastMoveReason = fmt.Sprintf("%d -> %d: %s", st.LastMove.From, st.LastMove.To, st.LastMove.Reason)
			}
		}
		out = append(out, bs)
	}
	return out
}

// BudgetStat is one budget class's numbers for the exporter.
type BudgetStat struct {
	Class                    string
	Limit, InUse, Queued     int
	Keys, BackloggedKeys     int
	Fairness                 float64
	GoodputBytesPerSecond    float64
	Admitted                 uint64
	DroppedSize, DroppedTime uint64
}

// Budgets returns every budget class's numbers, in status order.
func (a *Agent) Budgets() []BudgetStat {
	if a.budget == nil {
		return nil
	}
	var out []BudgetStat
	for _, name := range policy.BudgetClasses {
		bc := a.budget.class(name)
		s := bc.b.Stats()
		st := BudgetStat{Class: name, Limit: s.Limit, InUse: s.Running, Queued: s.Queued, Keys: s.Keys,
			BackloggedKeys: s.BackloggedKeys, Fairness: s.Fairness, Admitted: s.Admitted, DroppedSize: s.DroppedSize, DroppedTime: s.DroppedTime}
		if bc.ctl != nil {
			st.GoodputBytesPerSecond = bc.ctl.State().Goodput
		}
		out = append(out, st)
	}
	return out
}

// budgetChanges lists what a reload changes in [budget].
func budgetChanges(old, cur *policy.Budget) []string {
	var out []string
	if old.Enabled != cur.Enabled {
		out = append(out, fmt.Sprintf("budget enabled %v -> %v", old.Enabled, cur.Enabled))
	}
	if old.FairKey != cur.FairKey {
		out = append(out, fmt.Sprintf("budget fair_key %s -> %s", old.FairKey, cur.FairKey))
	}
	for _, f := range []struct {
		name     string
		old, cur int
	}{{"pack", old.Pack, cur.Pack}, {"upload_pack", old.UploadPack, cur.UploadPack}, {"receive_pack", old.ReceivePack, cur.ReceivePack}, {"default_weight", old.DefaultWeight, cur.DefaultWeight}} {
		if f.old != f.cur {
			out = append(out, fmt.Sprintf("budget %s %d -> %d (0: derived from the host)", f.name, f.old, f.cur))
		}
	}
	return out
}
