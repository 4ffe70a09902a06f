package adaptive

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// The budget controller's constants (the control law is on
// [BudgetController]; docs/host-budget.md derives them).
const (
	// BudgetPerCPU is k in the starting point min(k × CPUs, memory share
	// / estimate): a clone's pack-objects alternates between CPU (delta
	// reuse, compression of what is not reused) and waiting on its client,
	// so one per CPU leaves CPUs idle while two keep them busy.
	BudgetPerCPU = 2
	// BudgetMemShare is the share of the memory available that the
	// starting point lets the class's estimated commands fill.
	BudgetMemShare = 0.7
	// BudgetPriorRSS is the per-command memory estimate before any command
	// of the class has finished: a pack-objects of a mid-size repository.
	BudgetPriorRSS = 256 << 20
	// BudgetMaxPerCPU bounds the adapted limit: 8 × CPUs.
	BudgetMaxPerCPU = 8
	// BudgetMinEpoch and BudgetMaxEpoch bound the epoch, the period over
	// which goodput is measured before a decision; within them it is
	// BudgetEpochServices mean service times, so that each epoch sees
	// commands finish and start.
	BudgetMinEpoch      = 5 * time.Second
	BudgetMaxEpoch      = 30 * time.Second
	BudgetEpochServices = 2
	// BudgetGain is δ: an increase is kept only if goodput rose by more
	// than δ over the level before it; a decrease is kept if goodput
	// stayed within δ of the best level seen.
	BudgetGain = 0.05
	// BudgetWarmEpochs is how many backlogged epochs the controller only
	// measures before its first probe, at start and whenever demand
	// returns after a lull: the ramp of a storm's start is not a level.
	BudgetWarmEpochs = 2
	// BudgetHoldEpochs is how many epochs the limit stays after a probe
	// was undone (or a backoff) before the next probe.
	BudgetHoldEpochs = 4
	// BudgetBestDecay forgets the best goodput seen by this factor per
	// holding epoch, so a workload that changed is not compared with an
	// old one for long.
	BudgetBestDecay = 0.97
	// BudgetCPUBusy is the CPU use (of the CPUs allowed) from which the
	// CPU counts as saturated. Then a command's CPU rate is compared with
	// the best rate a command got recently (c_best: the highest per-epoch
	// rate, forgotten by BudgetCPUWantDecay per epoch; half a core until
	// measured): below BudgetCPUHold of it increases are held back, below
	// BudgetCPUCut of it the host is oversubscribed and the limit drops
	// by one per epoch.
	BudgetCPUBusy      = 0.9
	BudgetCPUWantDecay = 0.95
	BudgetCPUHold      = 0.9
	BudgetCPUCut       = 0.5
	// budgetCPUWantPrior is the CPU rate of one command before one was
	// measured on a free CPU: the fallback halves it for the hold (half a
	// core) and quarters it for the cut.
	budgetCPUWantPrior = 0.5 / BudgetCPUHold
	// BudgetMemHold bounds increases by memory: no probe up when the
	// epoch's highest working set plus one more command (the estimate)
	// would pass this share of the memory limit. Peak memory must stay
	// under 85 %; the memory watcher halves at 90 %.
	BudgetMemHold = 0.85
)

// BudgetSample is what the budget controller sees at one sample.
type BudgetSample struct {
	// Running and Queued are the class's commands now.
	Running, Queued int
	// Bytes counts the bytes written by the class's commands since start
	// (goodput; monotone).
	Bytes uint64
	// CPU is the CPU time used by the watched cgroup since start; 0 when
	// not known (then the CPU rules do not apply).
	CPU time.Duration
	// MemRatio is the watched cgroup's working set over its memory limit
	// (or the host's used memory over its total); 0 when not known.
	MemRatio float64
	// Pressures are the watchers' pressures of this sample (HoldOnly ones
	// are ignored here: the CPU rules below replace them).
	Pressures []Pressure
}

// BudgetMove is one change of the budget's limit, for status and logs.
type BudgetMove struct {
	At       time.Time
	From, To int
	Reason   string
}

// BudgetController adapts the limit of one budget class (pack) to what
// the host can do. Its law, per sample s (every [adaptive]
// sample_interval, or at once on a kernel memory notification):
//
//  1. Pressure (the memory, oom and psi_memory watchers; the agent adds
//     its own cgroup's working set at memory_threshold):
//     L ← max(1, ⌊β·L⌋), β = [adaptive] backoff_factor (0.5), once per
//     cooldown; then hold BudgetHoldEpochs epochs and forget the goodput
//     levels measured (the host changed). This is the fast path: a memory
//     hog lowers the budget at the sample that sees it. CPU signals
//     (cpu_throttle, psi_cpu, the increase_max_psi_cpu gate) are
//     saturation, not emergencies: they only hold increases (below).
//  2. Otherwise samples accumulate into an epoch of E = clamp(2 × mean
//     service time, 5 s, 30 s). At its end, with goodput G (bytes/s
//     written by the class's commands), CPU use u (of the CPUs allowed),
//     c = cores per running command and c_best = the highest c of recent
//     epochs (decaying ×0.95 per epoch; 0.56 until measured):
//     - if the class was not backlogged (queued in fewer than half the
//     samples) or no goodput was measured, nothing is learned: a probe
//     in flight is undone and the next backlog starts with a warm-up;
//     - if a probe (±1) is in flight: an up-probe is kept when
//     G ≥ (1+δ)·G_base; a down-probe is kept when G ≥ (1−δ)·G_best.
//     Kept: probe again in the same direction (if that way is open).
//     Else: undo, hold BudgetHoldEpochs, next probe the other way;
//     - if u ≥ 0.9 and c < 0.5·c_best (admitted commands each get less
//     than half the CPU one got recently: oversubscribed): L ← L − 1;
//     - if the working set passed 0.85 of the memory limit: L ← L − 1;
//     - in the warm-up (the first BudgetWarmEpochs backlogged epochs, at
//     start and after a lull): G_base = G_best = G, nothing moves;
//     - else G_base ← mean(G_base, G), G_best ← max(G_base,
//     0.97·G_best); after the hold, probe +1 — not at the ceiling
//     (8 × CPUs), not when u ≥ 0.9 and c < 0.9·c_best, not when the CPU
//     watchers saw saturation in half the samples, not when one more
//     command at the estimate would take the working set past 0.85 —
//     else −1 (never below 1).
//
// So an increase that does not raise goodput by δ is undone, a decrease
// that costs less than δ of the best goodput is kept, and at a constant
// storm the limit sits at the knee of the goodput curve (the smallest
// limit within δ of the best), probing one step either side once every
// BudgetHoldEpochs+1 epochs: the oscillation band is ±1.
type BudgetController struct {
	mu sync.Mutex
	// Capacity and what was derived from it.
	cpus       float64
	mem        uint64
	fixed      bool
	limit      int
	start      int
	ceiling    int
	derivation string
	// Learned from finished commands.
	estRSS  float64 // bytes, EWMA of max RSS
	service float64 // seconds, EWMA of real time
	learned int

	// The epoch in progress.
	epochStart time.Time
	bytes0     uint64
	cpu0       time.Duration
	samples    int
	backlogged int
	// cpuSatSamples counts samples with a CPU saturation signal.
	cpuSatSamples int
	runningSum    int
	memHigh       bool
	memPeak       float64
	lastBackoff   time.Time

	// The climb.
	probing   bool
	probeDir  int
	probeFrom int
	nextDir   int
	hold      int
	warm      int
	haveBase  bool
	gBase     float64
	gBest     float64
	lastG     float64
	lastU     float64
	lastC     float64
	// cpuWant is c_best: the highest CPU rate of one command in recent
	// epochs (cores), decaying; 0 until measured.
	cpuWant float64

	moves []BudgetMove // the last few, newest last
}

// NewBudgetController derives the starting point from the host: cpus
// CPUs allowed, mem bytes of memory available; fixed > 0 pins the limit
// instead (policy [budget] pack), and the controller then never moves it.
func NewBudgetController(cpus float64, mem uint64, fixed int) *BudgetController {
	c := &BudgetController{cpus: max(cpus, 0.1), mem: mem, estRSS: BudgetPriorRSS, nextDir: 1, warm: BudgetWarmEpochs}
	c.derive()
	if fixed > 0 {
		c.fixed = true
		c.limit = fixed
		c.derivation = fmt.Sprintf("fixed by [budget] pack = %d", fixed)
	} else {
		c.limit = c.start
	}
	return c
}

// derive computes the starting point and ceiling from capacity and the
// per-command estimate.
func (c *BudgetController) derive() {
	byCPU := int(math.Ceil(BudgetPerCPU * c.cpus))
	c.ceiling = max(int(math.Ceil(BudgetMaxPerCPU*c.cpus)), 1)
	c.start = byCPU
	what := fmt.Sprintf("%d × %.3g CPUs = %d", BudgetPerCPU, c.cpus, byCPU)
	if c.mem > 0 {
		byMem := int(BudgetMemShare * float64(c.mem) / c.estRSS)
		what += fmt.Sprintf("; %.0f%% of %s / %s per command = %d", 100*BudgetMemShare, mibF(float64(c.mem)), mibF(c.estRSS), byMem)
		c.start = min(c.start, byMem)
	}
	c.start = min(max(c.start, 1), c.ceiling)
	c.derivation = fmt.Sprintf("start %d = min(%s); ceiling %d = %d × CPUs", c.start, what, c.ceiling, BudgetMaxPerCPU)
}

func mibF(b float64) string { return fmt.Sprintf("%.0f MiB", b/(1<<20)) }

// Limit returns the limit now.
func (c *BudgetController) Limit() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.limit
}

// Finished learns from a finished command of the class: its max RSS
// (the per-command memory estimate) and its real time (the epoch).
func (c *BudgetController) Finished(maxRSS uint64, real time.Duration) {
	if real <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	const a = 0.2
	if c.learned == 0 {
		c.service = real.Seconds()
		if maxRSS > 0 {
			c.estRSS = float64(maxRSS)
		}
	} else {
		c.service += a * (real.Seconds() - c.service)
		if maxRSS > 0 {
			c.estRSS += a * (float64(maxRSS) - c.estRSS)
		}
	}
	c.learned++
	if !c.fixed {
		lim := c.limit
		c.derive()
		c.limit = lim
	}
}

// epochLen is E = clamp(2 × mean service time, 5 s, 30 s).
func (c *BudgetController) epochLen() time.Duration {
	e := time.Duration(BudgetEpochServices * c.service * float64(time.Second))
	return min(max(e, BudgetMinEpoch), BudgetMaxEpoch)
}

// Step applies one sample at now with [adaptive] backoff factor beta and
// cooldown, and returns the limit and whether it moved.
func (c *BudgetController) Step(now time.Time, s BudgetSample, beta float64, cooldown time.Duration) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fixed {
		return c.limit, false
	}
	if c.epochStart.IsZero() {
		c.resetEpochLocked(now, s)
		return c.limit, false
	}
	var hurt []Pressure
	cpuSat := false
	for _, p := range s.Pressures {
		switch {
		case p.HoldOnly || p.Watcher == "cpu_throttle" || p.Watcher == "psi_cpu":
			cpuSat = true
		default:
			hurt = append(hurt, p)
		}
	}
	if len(hurt) > 0 {
		if !c.lastBackoff.IsZero() && now.Sub(c.lastBackoff) < cooldown {
			return c.limit, false
		}
		c.lastBackoff = now
		next := max(1, int(math.Floor(float64(c.limit)*beta)))
		moved := c.moveLocked(now, next, describePressures(hurt))
		c.probing, c.haveBase, c.gBest, c.hold, c.nextDir = false, false, 0, BudgetHoldEpochs, 1
		c.resetEpochLocked(now, s)
		return c.limit, moved
	}
	c.samples++
	if s.Queued > 0 {
		c.backlogged++
	}
	if cpuSat {
		c.cpuSatSamples++
	}
	c.runningSum += s.Running
	if c.mem > 0 && s.MemRatio+c.estRSS/float64(c.mem) > BudgetMemHold {
		c.memHigh = true
	}
	c.memPeak = max(c.memPeak, s.MemRatio)
	dt := now.Sub(c.epochStart)
	if dt < c.epochLen() {
		return c.limit, false
	}
	g := float64(s.Bytes-min(c.bytes0, s.Bytes)) / dt.Seconds()
	cpuRate, haveCPU := 0.0, s.CPU > 0 && c.cpu0 > 0
	if haveCPU {
		cpuRate = (s.CPU - min(c.cpu0, s.CPU)).Seconds() / dt.Seconds()
	}
	avgRun := float64(c.runningSum) / float64(max(c.samples, 1))
	u := cpuRate / c.cpus
	perCmd := cpuRate / max(avgRun, 1)
	backlogged := 2*c.backlogged >= c.samples
	saturated := c.cpuSatSamples > 0 && 2*c.cpuSatSamples >= c.samples
	memHigh, memPeak := c.memHigh, c.memPeak
	c.lastG, c.lastU, c.lastC = g, u, perCmd
	c.resetEpochLocked(now, s)

	if haveCPU && avgRun >= 1 {
		c.cpuWant = max(BudgetCPUWantDecay*c.cpuWant, perCmd)
	}
	want := c.cpuWant
	if want == 0 {
		want = budgetCPUWantPrior
	}
	cpuFull := saturated || haveCPU && u >= BudgetCPUBusy && perCmd < BudgetCPUHold*want
	cpuOver := haveCPU && u >= BudgetCPUBusy && perCmd < BudgetCPUCut*want
	stats := fmt.Sprintf("goodput %s/s, CPU %.0f%% of %.3g, %.2f cores per command", mibF(g), 100*u, c.cpus, perCmd)
	if !backlogged || g <= 0 {
		// Nothing to learn: demand is below the limit, or nothing was
		// written (no goodput signal): hold, and undo a probe in flight.
		// The next backlog starts with a warm-up.
		c.warm = BudgetWarmEpochs
		if c.probing {
			c.probing = false
			return c.limit, c.moveLocked(now, c.probeFrom, "probe undone: no demand above the limit or no goodput measured ("+stats+")")
		}
		return c.limit, false
	}
	if c.probing {
		c.probing = false
		keep := false
		if c.probeDir > 0 {
			keep = g >= (1+BudgetGain)*c.gBase
		} else {
			keep = g >= (1-BudgetGain)*c.gBest
		}
		if keep {
			c.gBase = g
			c.gBest = max(c.gBest, g)
			return c.limit, c.probeLocked(now, c.probeDir, cpuFull, memHigh, fmt.Sprintf("probe to %d kept (%s)", c.limit, stats))
		}
		c.hold = BudgetHoldEpochs
		c.nextDir = -c.probeDir
		return c.limit, c.moveLocked(now, c.probeFrom, fmt.Sprintf("probe to %d undone: %s vs %s/s before", c.limit, stats, mibF(c.gBase)))
	}
	if cpuOver && c.limit > 1 {
		c.hold, c.haveBase = BudgetHoldEpochs, false
		return c.limit, c.moveLocked(now, c.limit-1, "CPU oversubscribed: "+stats)
	}
	if memPeak > BudgetMemHold && c.limit > 1 {
		c.hold, c.haveBase = BudgetHoldEpochs, false
		return c.limit, c.moveLocked(now, c.limit-1, fmt.Sprintf("working set reached %.0f%% of the memory limit (over %.0f%%): %s", 100*memPeak, 100*BudgetMemHold, stats))
	}
	if c.warm > 0 {
		// Warm-up: a storm's first epochs see commands that all started
		// together (counting objects, writing nothing, then writing at
		// once), so their goodput is a ramp, not a level; a probe
		// measured against it would be kept for the ramp's sake.
		c.warm--
		c.gBase, c.haveBase = g, true
		c.gBest = g
		return c.limit, false
	}
	if c.haveBase {
		c.gBase = (c.gBase + g) / 2
	} else {
		c.gBase, c.haveBase = g, true
	}
	c.gBest = max(c.gBase, BudgetBestDecay*c.gBest)
	if c.hold > 0 {
		c.hold--
		return c.limit, false
	}
	return c.limit, c.probeLocked(now, c.nextDir, cpuFull, memHigh, stats)
}

// probeLocked starts a probe one step in dir (the other way when dir is
// barred), or holds when neither way is open.
func (c *BudgetController) probeLocked(now time.Time, dir int, cpuFull, memHigh bool, why string) bool {
	upBarred := c.limit >= c.ceiling || cpuFull || memHigh
	downBarred := c.limit <= 1
	if dir > 0 && upBarred {
		dir = -1
	}
	if dir < 0 && downBarred {
		dir = 1
		if upBarred {
			c.hold = BudgetHoldEpochs
			return false
		}
	}
	c.probing, c.probeDir, c.probeFrom = true, dir, c.limit
	reason := "probe up: " + why
	if dir < 0 {
		reason = "probe down: " + why
	}
	return c.moveLocked(now, c.limit+dir, reason)
}

func (c *BudgetController) moveLocked(now time.Time, to int, reason string) bool {
	to = min(max(to, 1), max(c.ceiling, c.limit))
	if to == c.limit {
		return false
	}
	c.moves = append(c.moves, BudgetMove{At: now, From: c.limit, To: to, Reason: reason})
	if len(c.moves) > 16 {
		c.moves = c.moves[1:]
	}
	c.limit = to
	return true
}

func (c *BudgetController) resetEpochLocked(now time.Time, s BudgetSample) {
	c.epochStart, c.bytes0, c.cpu0 = now, s.Bytes, s.CPU
	c.samples, c.backlogged, c.runningSum, c.memHigh, c.memPeak, c.cpuSatSamples = 0, 0, 0, false, 0, 0
}

// BudgetState is the controller's state for status.
type BudgetState struct {
	Limit, Start, Ceiling int
	Fixed                 bool
	CPUs                  float64
	Memory                uint64
	EstimateRSS           uint64
	ServiceTime           time.Duration
	Learned               int
	Derivation            string
	// Goodput, CPU use and cores per command of the last epoch.
	Goodput, CPUUse, CoresPerCommand float64
	Epoch                            time.Duration
	LastMove                         BudgetMove
}

// State returns the controller's state.
func (c *BudgetController) State() BudgetState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := BudgetState{Limit: c.limit, Start: c.start, Ceiling: c.ceiling, Fixed: c.fixed, CPUs: c.cpus, Memory: c.mem,
		EstimateRSS: uint64(c.estRSS), ServiceTime: time.Duration(c.service * float64(time.Second)), Learned: c.learned,
		Derivation: c.derivation, Goodput: c.lastG, CPUUse: c.lastU, CoresPerCommand: c.lastC, Epoch: c.epochLen()}
	if n := len(c.moves); n > 0 {
		st.LastMove = c.moves[n-1]
	}
	return st
}
