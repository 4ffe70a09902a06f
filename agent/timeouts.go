package agent

// timeouts.go enforces [timeouts] and per-rule max_runtime on running leases.
//
// # What is bounded
//
// A lease that starts running arms up to two timers: its rule's max_runtime
// (any command) and, for upload-pack and upload-archive, the negotiation
// timeout (Gitaly's semantics: only the negotiation phase is bounded, never
// the transfer). Both act on the lease's peer — the process the agent knows
// by SO_PEERCRED and a pidfd: the shim in supervising mode, git itself in
// exec-in-place mode — and on its process tree, never on the shim's
// connection, so the same code serves both modes.
//
// # The end of negotiation
//
// Negotiation ends when the server starts producing what the client asked
// for: upload-pack runs `git pack-objects`; upload-archive's
// `git upload-archive--writer` child writes its first bytes. (git starts
// that writer at once and the writer itself reads the client's arguments,
// so its start proves nothing: only its first write does, seen as wchar > 0
// in /proc/PID/io.) Three sources report the end:
//
//  1. A pack-objects admission (through uploadpack.packObjectsHook, or the
//     shim found on PATH when upload-pack runs `git pack-objects`) whose
//     peer descends from the lease's peer (ppid walk, bounded depth). This
//     is the common case for upload-pack and costs nothing while no lease
//     negotiates.
//  2. A scan of the lease's descendants (/proc, bounded) every
//     timeout/10 (between 100 ms and 1 s) while the timer is pending, and
//     once more at expiry: servers without the hook and without a
//     pack-objects rule, and upload-archive always.
//  3. NoteGitExec, called by the eBPF exec tracer (pack-objects only: the
//     exec of the archive writer is not the end).
//
// Once seen, the negotiation timer is cancelled for good: the transfer is
// never bounded, however slow the client reads.
//
// Why this is right for each protocol:
//
//   - v0/v1: upload-pack advertises refs, then reads want/have rounds until
//     the client's "done" (or a clone's want + flush + done), then runs
//     pack-objects exactly once and exits. pack-objects starting is exactly
//     Gitaly's "request complete" point. A client that sends nothing after
//     the advertisement never gets there and is cut off; ls-remote (a
//     flush right after the advertisement) exits before the timer matters.
//   - v2 (GIT_PROTOCOL=version=2): one upload-pack serves several commands
//     (ls-refs, object-info, fetch) in one process. ls-refs and fetch
//     negotiation rounds all count as negotiation until a fetch command
//     reaches its packfile section, which is when pack-objects starts; so a
//     client that runs ls-refs and stalls is cut off, and a fetch whose pack
//     transfers slowly is not. After the first pack the process is never
//     bounded by the negotiation timeout again (a git client closes the
//     connection after its fetch; max_runtime bounds the rest).
//   - Stateless RPC (smart HTTP, v0 and v2): every request is its own
//     upload-pack process, each bounded on its own; the last one runs
//     pack-objects.
//   - upload-archive has one protocol: argument pkt-lines up to a flush,
//     then the archive; the writer's first write follows the flush.
//
// # On expiry
//
// One line "sluice: <subcommand> exceeded <name> = <value>; …" is written to
// the peer's stderr (pidfd_getfd of its fd 2, written through that very
// descriptor only if it is open for writing, without blocking: stderr.go;
// best effort — over git:// the server keeps stderr), a log line with the
// correlation id, sluice_timeouts_total{limit,kind}, SIGTERM to the peer
// and its descendants (the supervising shim also forwards it to git), and
// after [timeouts] kill_grace SIGKILL to whatever is left of that tree.
// Every signal goes through a pidfd: the peer's own (taken when its
// connection was accepted) and pidfds of its descendants proven to
// descend from it while its pidfd was alive (pinDescendants). Once the
// peer is gone nothing new is pinned, and nothing is ever signalled by
// pid number, so a process that reuses a pid is never touched. At most
// one timeout acts on a lease.
//
// # Reload
//
// Every key is reloadable: a lease's timers are armed with the values in
// force when it was admitted; a reload applies to leases admitted after it.

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// Timeout kinds, the `kind` label of sluice_timeouts_total.
const (
	KindUploadPackNegotiation    = "upload_pack_negotiation"
	KindUploadArchiveNegotiation = "upload_archive_negotiation"
	KindMaxRuntime               = "max_runtime"
)

// Scan interval bounds while a negotiation timer is pending.
const (
	minScanInterval = 100 * time.Millisecond
	maxScanInterval = time.Second
)

// negotiation describes how a subcommand's negotiation phase is bounded.
type negotiation struct {
	kind   string        // metric kind, also the [timeouts] key
	limit  time.Duration // 0: not bounded
	marker string        // the git subcommand whose start ends it
	// wrote: the marker process must also have written output (its
	// start alone does not end the negotiation).
	wrote bool
}

// negotiationOf returns the negotiation bound of subcommand under t; limit
// is 0 for a subcommand without one or a disabled timeout.
func negotiationOf(subcommand string, t *policy.Timeouts) negotiation {
	switch subcommand {
	case "upload-pack":
		return negotiation{KindUploadPackNegotiation, t.UploadPackNegotiation.Duration, "pack-objects", false}
	case "upload-archive":
		return negotiation{KindUploadArchiveNegotiation, t.UploadArchiveNegotiation.Duration, "upload-archive--writer", true}
	}
	return negotiation{}
}

// endsNegotiation reports whether the start of git subcommand sub alone
// ends some negotiation.
func endsNegotiation(sub string) bool {
	return sub == "pack-objects"
}

// scanInterval is how often a negotiation bounded by limit is checked.
func scanInterval(limit time.Duration) time.Duration {
	return min(max(limit/10, minScanInterval), maxScanInterval)
}

// treeView answers whether a process tree runs a git subcommand.
type treeView interface {
	// findGit reports whether a descendant of root runs git subcommand
	// sub and, with wrote, has written output.
	findGit(root int, sub string, wrote bool) bool
}

// procOps are the timekeeper's effects on processes, replaced in tests.
type procOps struct {
	// snapshot reads the process tree.
	snapshot func() (treeView, error)
	// tell writes msg (one line) to the peer's stderr.
	tell func(w *deadlines, msg string) error
	// term sends SIGTERM to the peer and its descendants.
	term func(w *deadlines) error
	// kill sends SIGKILL to the peer and its descendants, and to those
	// term saw; it returns how many were still there.
	kill func(w *deadlines) (int, error)
}

// timekeeper holds the deadlines of every running lease.
type timekeeper struct {
	log *zap.Logger
	obs Observer
	ops procOps
	// negotiated, when set, is told that lease l's negotiation is over
	// (recovery.go keeps that across a restart). Set before the first arm.
	negotiated func(l *Lease)

	mu       sync.Mutex         // guards the fields below
	pending  map[int]*deadlines // leases whose negotiation is bounded and not over, by peer pid
	scanning bool               // the scan loop runs
	scanErr  bool               // a snapshot error was logged
}

// deadlines is the timers (negotiation, max_runtime) of one running lease.
type deadlines struct {
	w     *timekeeper
	lease *Lease
	pid   int
	neg   negotiation
	run   time.Duration // max_runtime; 0: none
	grace time.Duration
	limit string // metric label

	mu      sync.Mutex // guards the fields below
	pidfd   int        // our own duplicate of the peer's pidfd; -1: none
	pinned  []int      // pidfds of the peer's descendants when term ran
	negT    *time.Timer
	runT    *time.Timer
	killT   *time.Timer
	negOver bool // negotiation ended (or was never bounded)
	fired   bool // a timeout acted
	killed  bool // the SIGKILL sweep ran
	done    bool // disarmed: the lease ended
}

func newTimekeeper(log *zap.Logger, obs Observer, ops procOps) *timekeeper {
	return &timekeeper{log: log, obs: obs, ops: ops, pending: map[int]*deadlines{}}
}

// realProcOps act on real processes through pidfds and /proc.
func realProcOps() procOps {
	return procOps{
		snapshot: func() (treeView, error) { return takeSnapshot(procfs.Default) },
		tell:     tellStderr,
		term:     termTree,
		kill:     killTree,
	}
}

// arm starts the timers of lease l, admitted under rule (nil: no rule)
// with cfg in force. It returns nil when nothing is bounded.
func (wr *timekeeper) arm(l *Lease, rule *policy.Limit, cfg *policy.Config) *deadlines {
	var run time.Duration
	if rule != nil {
		run = rule.MaxRuntime.Duration
	}
	return wr.armAt(l, negotiationOf(l.Subcommand, &cfg.Timeouts), run, cfg.Timeouts.KillGrace.Duration,
		time.Now(), dupPidfd(l.Peer))
}

// armAt starts the timers of lease l as if it had been armed at since
// (a lease adopted after a restart keeps the deadlines it was admitted
// with: recovery.go); a deadline already past fires at once. pidfd is the
// watch's own pidfd of the peer (-1: none), closed with the watch; it is
// closed here when nothing is bounded.
func (wr *timekeeper) armAt(l *Lease, neg negotiation, run, grace time.Duration, since time.Time, pidfd int) *deadlines {
	limit := l.Limit
	if limit == "" {
		limit = "none"
	}
	if neg.limit <= 0 && run <= 0 {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return nil
	}
	w := &deadlines{w: wr, lease: l, pid: int(l.Peer.PID), neg: neg, run: run,
		grace: grace, limit: limit, pidfd: pidfd, negOver: neg.limit <= 0}
	if w.grace <= 0 {
		w.grace = 5 * time.Second
	}
	elapsed := time.Since(since)
	w.mu.Lock()
	defer w.mu.Unlock()
	if run > 0 {
		w.runT = time.AfterFunc(run-elapsed, func() { w.expire(KindMaxRuntime, run) })
	}
	if !w.negOver {
		w.negT = time.AfterFunc(neg.limit-elapsed, w.negotiationExpired)
		wr.addPending(w)
	}
	return w
}

// dupPidfd returns a pidfd of the peer owned by the caller: a duplicate of
// the connection's (which closes with it); -1 when the connection has
// none. It never opens one by pid now: by the time a lease runs, the pid
// may name another process.
func dupPidfd(p PeerCred) int {
	if p.pidfd >= 0 {
		if fd, err := unix.FcntlInt(uintptr(p.pidfd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			return fd
		}
	}
	return -1
}

// addPending registers w for negotiation-end detection and starts the scan
// loop if it is not running.
func (wr *timekeeper) addPending(w *deadlines) {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	wr.pending[w.pid] = w
	if !wr.scanning {
		wr.scanning = true
		go wr.scanLoop()
	}
}

func (wr *timekeeper) removePending(w *deadlines) {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	if wr.pending[w.pid] == w {
		delete(wr.pending, w.pid)
	}
}

// scanLoop looks for the end of every pending negotiation, one process
// snapshot per round, until none is pending.
func (wr *timekeeper) scanLoop() {
	for {
		wr.mu.Lock()
		iv := maxScanInterval
		for _, w := range wr.pending {
			iv = min(iv, scanInterval(w.neg.limit))
		}
		wr.mu.Unlock()
		time.Sleep(iv)

		wr.mu.Lock()
		if len(wr.pending) == 0 {
			wr.scanning = false
			wr.mu.Unlock()
			return
		}
		ws := make([]*deadlines, 0, len(wr.pending))
		for _, w := range wr.pending {
			ws = append(ws, w)
		}
		wr.mu.Unlock()
		snap := wr.snapshot()
		if snap == nil {
			continue
		}
		for _, w := range ws {
			if snap.findGit(w.pid, w.neg.marker, w.neg.wrote) {
				w.endNegotiation("process scan")
			}
		}
	}
}

// snapshot takes a process snapshot, logging the first failure only.
func (wr *timekeeper) snapshot() treeView {
	s, err := wr.ops.snapshot()
	if err != nil {
		wr.mu.Lock()
		first := !wr.scanErr
		wr.scanErr = true
		wr.mu.Unlock()
		if first {
			wr.log.Warn("cannot read the process tree; negotiation ends are seen only through pack-objects admissions and the exec tracer", zap.Error(err))
		}
		return nil
	}
	return s
}

// noteStart records that a process running git subcommand sub started
// with the given pid: if it descends from the peer of a lease whose
// negotiation it ends, that negotiation is over. how names the source for
// the debug log.
func (wr *timekeeper) noteStart(pid int, sub, how string) {
	if !endsNegotiation(sub) {
		return
	}
	wr.mu.Lock()
	n := len(wr.pending)
	wr.mu.Unlock()
	if n == 0 {
		return
	}
	ancestors(procfs.Default, pid, func(pp int) bool {
		return wr.noteRoot(pp, sub, how)
	})
}

// noteRoot ends the negotiation of the lease whose peer is root when sub
// is its marker; it reports whether it did.
func (wr *timekeeper) noteRoot(root int, sub, how string) bool {
	wr.mu.Lock()
	w := wr.pending[root]
	wr.mu.Unlock()
	if w == nil || w.neg.marker != sub || w.neg.wrote {
		return false
	}
	w.endNegotiation(how)
	return true
}

// endNegotiation cancels the negotiation timer for good.
func (w *deadlines) endNegotiation(how string) {
	w.mu.Lock()
	if w.negOver || w.done {
		w.mu.Unlock()
		return
	}
	w.negOver = true
	if w.negT != nil {
		w.negT.Stop()
	}
	w.mu.Unlock()
	w.w.removePending(w)
	if w.w.negotiated != nil {
		w.w.negotiated(w.lease)
	}
	w.w.log.Debug("negotiation over", zap.String("correlation_id", w.lease.CorrelationID),
		zap.String("subcmd", w.lease.Subcommand), zap.String("seen_by", how))
}

// negotiationExpired runs when the negotiation timer fires: one last look
// at the process tree (the pack may have started since the last scan),
// then the timeout acts.
func (w *deadlines) negotiationExpired() {
	if snap := w.w.snapshot(); snap != nil && snap.findGit(w.pid, w.neg.marker, w.neg.wrote) {
		w.endNegotiation("process scan at expiry")
		return
	}
	w.mu.Lock()
	over := w.negOver
	w.mu.Unlock()
	if !over {
		w.expire(w.neg.kind, w.neg.limit)
	}
}

// expire stops the lease's command because timeout kind (of value d) fired.
func (w *deadlines) expire(kind string, d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.fired || (kind != KindMaxRuntime && w.negOver) {
		return
	}
	w.fired = true
	w.negOver = true
	for _, t := range []*time.Timer{w.negT, w.runT} {
		if t != nil {
			t.Stop()
		}
	}
	w.w.removePending(w) // lock order: deadlines.mu, then timekeeper.mu
	l := w.lease
	w.w.obs.Timeout(w.limit, kind)
	msg := timeoutMessage(l, kind, w.limit, d)
	fields := []zap.Field{
		zap.String("correlation_id", l.CorrelationID), zap.String("subcmd", l.Subcommand),
		zap.ByteString("repo", l.Repo), zap.String("remote_ip", l.RemoteIP), zap.String("user", l.User),
		zap.String("limit", l.Limit), zap.Int("pid", w.pid),
		zap.String("kind", kind), zap.Duration("timeout", d), zap.Duration("kill_grace", w.grace),
	}
	if err := w.w.ops.tell(w, msg); err != nil {
		fields = append(fields, zap.NamedError("stderr_error", err))
	}
	if err := w.w.ops.term(w); err != nil {
		fields = append(fields, zap.NamedError("sigterm_error", err))
	}
	w.w.log.Warn("timeout: command stopped", fields...)
	w.killT = time.AfterFunc(w.grace, w.killNow)
}

// killNow runs kill_grace after a timeout acted: SIGKILL to whatever is
// left of the command's process tree — the peer if it still runs, its
// descendants, and the descendants pinned at SIGTERM time (which outlive
// the peer: an upload-archive's writer blocked on the client's socket
// would otherwise hold the connection). It runs even when the lease has
// ended meanwhile; pidfds make sure only those processes are signalled.
func (w *deadlines) killNow() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.killed {
		return
	}
	w.killed = true
	n, err := w.w.ops.kill(w)
	w.closeFDsLocked()
	if n > 0 || err != nil {
		w.w.log.Warn("timeout: command still running after kill_grace; sent SIGKILL to it and its descendants",
			zap.String("correlation_id", w.lease.CorrelationID), zap.Int("pid", w.pid),
			zap.Duration("kill_grace", w.grace), zap.Int("processes", n), zap.Error(err))
	}
}

// disarm stops the lease's timers; it ended. After a timeout acted, the
// SIGKILL sweep still runs at the end of the grace period.
func (w *deadlines) disarm() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.done = true
	for _, t := range []*time.Timer{w.negT, w.runT} {
		if t != nil {
			t.Stop()
		}
	}
	if !w.fired || w.killed {
		w.closeFDsLocked()
	}
	w.mu.Unlock()
	w.w.removePending(w)
}

// closeFDsLocked closes the pidfds the watch holds.
func (w *deadlines) closeFDsLocked() {
	if w.pidfd >= 0 {
		unix.Close(w.pidfd)
		w.pidfd = -1
	}
	for _, fd := range w.pinned {
		unix.Close(fd)
	}
	w.pinned = nil
}

// timeoutMessage is the line the git client gets.
func timeoutMessage(l *Lease, kind, limit string, d time.Duration) string {
	var b strings.Builder
	b.WriteString("sluice: ")
	b.WriteString(l.Subcommand)
	b.WriteString(" exceeded ")
	b.WriteString(kind)
	b.WriteString(" = ")
	b.WriteString(formatDuration(d))
	switch kind {
	case KindMaxRuntime:
		b.WriteString(" of limit " + strconv.Quote(limit) + "; the server stopped it")
	default:
		b.WriteString("; the client's request was not complete in time, so the server stopped it")
	}
	if l.CorrelationID != "" {
		b.WriteString(" (correlation id " + l.CorrelationID + ")")
	}
	b.WriteString("\n")
	return b.String()
}

// formatDuration writes d as a policy would: "10m", "1h", "1.5s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// errNoPidfd is returned when a timeout would signal a peer the agent
// holds no pidfd of: it never signals by pid number.
var errNoPidfd = errors.New("no pidfd of the peer process: not signalled (the agent never signals by pid number)")

// signal sends sig to the peer through its pidfd. Called with w.mu held.
func (w *deadlines) signal(sig unix.Signal) error {
	if w.pidfd < 0 {
		return errNoPidfd
	}
	return unix.PidfdSendSignal(w.pidfd, sig, nil, 0)
}

// pinDescendants returns pidfds of the descendants of the process root
// whose pidfd is rootfd, and only of those: nothing while that process is
// gone (its pid may name a stranger now). The tree comes from a /proc
// snapshot, which knows pids only, so each pidfd is proven to be the
// right process by induction, parents first: a process d is pinned when,
// after pidfd_open(d), /proc says d's parent is p and p's pidfd (already
// proven) still refers to a live (or zombie, not yet reaped) process —
// then p's pid could not have been reused when d's parent was read, so d
// was p's child when its pidfd was taken.
func pinDescendants(rootfd, root int) []int {
	if rootfd < 0 || !pidfdAlive(rootfd) {
		return nil
	}
	s, err := takeSnapshot(procfs.Default)
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for pp, kids := range s.Children {
		for _, k := range kids {
			parent[k] = pp
		}
	}
	proven := map[int]int{root: rootfd}
	var fds []int
	for _, d := range s.descendants(root) { // breadth first: parents before children
		pfd, ok := proven[parent[d]]
		if !ok {
			continue
		}
		fd, err := unix.PidfdOpen(d, 0)
		if err != nil {
			continue
		}
		if pp, err := procfs.Default.PPID(d); err != nil || pp != parent[d] || !pidfdAlive(pfd) {
			unix.Close(fd)
			continue
		}
		proven[d] = fd
		fds = append(fds, fd)
	}
	return fds
}

// pidfdAlive reports whether the process of pidfd fd has not been reaped.
func pidfdAlive(fd int) bool {
	return unix.PidfdSendSignal(fd, 0, nil, 0) == nil
}

// termTree sends SIGTERM to the peer and its descendants, and keeps the
// descendants pinned for the SIGKILL sweep (once the peer exits they are
// reparented and no longer found under it). Everything goes through
// pidfds: when the peer is gone, nothing is pinned and nothing signalled by
// number. Called with w.mu held.
func termTree(w *deadlines) error {
	if len(w.pinned) == 0 {
		w.pinned = pinDescendants(w.pidfd, w.pid)
	}
	err := w.signal(unix.SIGTERM)
	for _, fd := range w.pinned {
		_ = unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0)
	}
	return err
}

// killTree sends SIGKILL to the peer, its descendants now and those pinned
// by termTree, and returns how many were still there. Descendants are
// pinned before the peer is killed (killing it reparents them). Called
// with w.mu held.
func killTree(w *deadlines) (int, error) {
	fds := pinDescendants(w.pidfd, w.pid)
	n := 0
	var err error
	if w.alive() {
		if err = w.signal(unix.SIGKILL); err == nil {
			n++
		}
	}
	for _, fd := range append(fds, w.pinned...) {
		if unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil {
			n++
		}
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	return n, err
}

// alive reports whether the peer still runs: only a pidfd can say so
// about that very process. Called with w.mu held.
func (w *deadlines) alive() bool {
	return w.pidfd >= 0 && pidfdAlive(w.pidfd)
}

// NoteGitExec tells the agent that a git process running subcommand was
// exec'd in the process tree of the lease whose peer pid is rootPID (the
// eBPF exec tracer calls it). A pack-objects under an upload-pack ends that
// lease's negotiation timeout. (An upload-archive's writer starts at once
// and reads the client's arguments itself, so its exec ends nothing: the
// process scan watches for its first write instead.)
func (a *Agent) NoteGitExec(rootPID int, subcommand string) {
	a.timeouts.noteRoot(rootPID, subcommand, "exec tracer")
}

// timeoutChanges describes what a reload changes in timeouts and queue
// feedback. Every one of these keys is reloadable: leases admitted after the
// reload use the new values, running ones keep the timers they were armed
// with, and the shim reads queue_feedback_after from the rewritten
// shim.conf on its next run.
func timeoutChanges(old, cfg *policy.Config) []string {
	var out []string
	d := func(key string, a, b policy.Duration) {
		if a != b {
			out = append(out, key+" "+formatDuration(a.Duration)+" -> "+formatDuration(b.Duration)+" (for commands admitted from now on)")
		}
	}
	d("upload_pack_negotiation", old.Timeouts.UploadPackNegotiation, cfg.Timeouts.UploadPackNegotiation)
	d("upload_archive_negotiation", old.Timeouts.UploadArchiveNegotiation, cfg.Timeouts.UploadArchiveNegotiation)
	d("kill_grace", old.Timeouts.KillGrace, cfg.Timeouts.KillGrace)
	d("queue_feedback_after", old.Agent.QueueFeedbackAfter, cfg.Agent.QueueFeedbackAfter)
	if old.Agent.RestartGrace != cfg.Agent.RestartGrace {
		out = append(out, "restart_grace "+formatDuration(old.Agent.RestartGrace.Duration)+" -> "+formatDuration(cfg.Agent.RestartGrace.Duration)+" (shims read it from shim.conf on their next run)")
	}
	for _, r := range cfg.Limits {
		for _, o := range old.Limits {
			if o.Name == r.Name {
				d(r.Name+": max_runtime", o.MaxRuntime, r.MaxRuntime)
			}
		}
	}
	return out
}
