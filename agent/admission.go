package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/policy"
)

// Bounds on what an admission request may carry.
const (
	maxRepoBytes   = shimproto.MaxRepoBytes
	maxNameBytes   = shimproto.MaxNameBytes
	maxUserBytes   = shimproto.MaxUserBytes
	maxCorrIDBytes = shimproto.MaxCorrelationIDBytes
)

// Drop reasons, the `reason` label of sluice_requests_dropped_total.
const (
	DropMaxSize     = "max_size"
	DropMaxTime     = "max_time"
	DropUnavailable = "unavailable"
)

// Command outcomes, the `outcome` label of sluice_commands_total.
const (
	OutcomeOK       = "ok"
	OutcomeError    = "error"
	OutcomeSignaled = "signaled"
	OutcomeRejected = "rejected"
	// OutcomeUnknown: an exec-mode command whose exit the tracer never
	// reported (execmode.go); its CPU is not known either.
	OutcomeUnknown = "unknown"
)

// Observer receives what the agent measures. The exporter implements it;
// nil methods are never called on a nil Observer (the agent substitutes a
// no-op).
type Observer interface {
	CommandFinished(cmd, subcmd, outcome string, user, system, real time.Duration, maxRSSBytes int64)
	CommandRejected(cmd, subcmd string)
	Acquired(limit string, waited time.Duration)
	Dropped(limit, reason string)
	Backoff(watcher string)
	// Unwrapped counts an exec of a limited git subcommand that did not go
	// through sluice (seen by the tracer).
	Unwrapped(subcmd string)
	// Timeout counts a command stopped by a timeout; kind is
	// KindUploadPackNegotiation, KindUploadArchiveNegotiation or
	// KindMaxRuntime.
	Timeout(limit, kind string)
}

type nopObserver struct{}

func (nopObserver) CommandFinished(string, string, string, time.Duration, time.Duration, time.Duration, int64) {
}
func (nopObserver) CommandRejected(string, string) {}
func (nopObserver) Acquired(string, time.Duration) {}
func (nopObserver) Dropped(string, string)         {}
func (nopObserver) Backoff(string)                 {}
func (nopObserver) Unwrapped(string)               {}
func (nopObserver) Timeout(string, string)         {}

const msgUnavailable = "sluice: the admission service is shutting down; try again later"

// grant is what admission hands an admitted Lease — its rule and budget
// slots (release), cgroup bucket, exec-mode hold and deadlines — released
// together at finish.
type grant struct {
	lease     *Lease
	release   func() // nil when no rule matched
	waited    time.Duration
	bucket    int        // cgroup bucket index; -1 without placement
	deadlines *deadlines // timeouts armed while it runs; nil when none
	// exec is set when the process runs in exec mode (execmode.go).
	exec *execHold
	// admitted is when the lease started running; admittedBoot the same
	// on CLOCK_BOOTTIME (ns), for the state file.
	admitted     time.Time
	admittedBoot int64
	// saved is true when the lease has a state file (recovery.go).
	saved bool
}

// errUnavailable is returned by admit while the agent shuts down.
var errUnavailable = errors.New("agent shutting down")

// admit runs one admission request through validation, rule matching and
// the rule's limiter. send delivers Queued, Admitted and Rejected messages
// to the caller, always from this goroutine. It returns the admission, or
// nil when the request was rejected or the caller went away (a reply has
// then been sent where one could be).
func (a *Agent) admit(ctx context.Context, peer PeerCred, req *admitpb.AdmitRequest, send func(*admitpb.ServerMsg) error) *grant {
	a.admitting.Add(1)
	defer a.admitting.Add(-1)
	if a.stopping.Err() != nil {
		_ = send(rejected(admitpb.RejectReason_REJECT_REASON_UNAVAILABLE, "", msgUnavailable))
		return nil
	}
	// Who asks is checked before anything the request says is looked at.
	// req.WorkerPid is never read: the agent acts only on peer.PID.
	if m := a.authorizeAdmit(peer); m != nil {
		_ = send(m)
		return nil
	}
	if err := validateRequest(req); err != nil {
		a.log.Warn("invalid admission request", zap.Int32("pid", peer.PID), zap.Uint32("uid", peer.UID), zap.Error(err))
		a.obs.CommandRejected(cmdLabel, "invalid")
		_ = send(rejected(admitpb.RejectReason_REJECT_REASON_INVALID, "", "sluice: invalid admission request: "+err.Error()))
		return nil
	}
	a.servers.noteRequest(int(peer.PID), a.Policy().EBPF.ServerComms, time.Now())
	// A pack-objects arriving ends the negotiation of the upload-pack it
	// runs under, even if it now waits in a queue.
	a.timeouts.noteStart(int(peer.PID), req.Subcommand, "admission")
	rule, lim := a.ruleFor(req.Subcommand)
	l := &Lease{
		CorrelationID: req.CorrelationId,
		Command:       req.Command,
		Subcommand:    req.Subcommand,
		Repo:          req.Repo,
		RemoteIP:      req.RemoteIp,
		User:          req.User,
		Peer:          peer,
		Arrived:       time.Now(),
	}
	// Everything the caller wrote that a log line or a message may show is
	// cleaned here, once (sanitize.go); the key below uses the raw request.
	cleanLease(l)
	adm := &grant{lease: l, bucket: -1}
	if a.placer != nil {
		adm.bucket = a.placer.Bucket(req.Repo)
		l.Bucket = a.placer.BucketPath(adm.bucket)
	}
	if rule != nil {
		l.Limit = rule.Name
		l.Key = rule.KeyFor(policy.KeyInput{Repo: req.Repo, RemoteIP: req.RemoteIp, User: req.User})
		l.queuedSince = a.requeuedSince(req.QueuedSinceUnixNano, rule, l.Arrived)
	}
	a.leases.Add(l)

	if lim != nil {
		actx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(a.stopping, cancel)
		release, waited, err := a.acquire(actx, rule, lim, l, func(pos, n int) {
			_ = send(&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Queued{Queued: &admitpb.Queued{
				Limit: rule.Name, Position: int32(pos), QueueLength: int32(n),
			}}})
		})
		stop()
		cancel()
		if err != nil {
			if a.stopping.Err() != nil && ctx.Err() == nil {
				err = errUnavailable
			}
			a.leases.Remove(l)
			a.reject(l, rule, lim, err, waited, send)
			return nil
		}
		if a.stopping.Err() != nil {
			// Admitted as shutdown began (a slot freed by it): the caller
			// fails over like every other waiter.
			release()
			a.leases.Remove(l)
			a.reject(l, rule, lim, errUnavailable, waited, send)
			return nil
		}
		adm.release = release
		adm.waited = waited
		a.obs.Acquired(rule.Name, waited)
	}
	if a.placer != nil && !a.place(adm, peer) {
		a.finish(adm, nil)
		return nil
	}
	if a.tracer != nil && req.CanExec {
		a.startExec(adm, peer)
	}
	adm.admitted, adm.admittedBoot = time.Now(), bootNow()
	a.leases.MarkRunning(l, adm.admitted)
	// Armed before the caller hears Admitted, so a pack-objects the
	// command starts can never arrive before its negotiation is watched;
	// and before the state file is written, which records the deadlines.
	adm.deadlines = a.timeouts.arm(l, rule, a.Policy())
	a.saveLease(adm, peer)
	if err := send(&admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Admitted{Admitted: &admitpb.Admitted{
		LeaseId: l.ID, Limit: l.Limit, QueuedUsec: adm.waited.Microseconds(), Exec: adm.exec != nil,
	}}}); err != nil {
		// The caller is gone: it will never run git under this lease.
		a.finish(adm, nil)
		return nil
	}
	return adm
}

// place puts the admitted caller into its repository's bucket before it
// is told it may run git, so git and every child start there. The pid is
// the peer's (SO_PEERCRED), and the caller's pidfd is checked just before
// the move, so a caller that already exited is not placed (nor, through pid
// reuse, a stranger in its place). A placement failure is logged and
// counted but does not refuse the command: protection degrades, the Git
// service does not. It returns false when the caller is gone.
func (a *Agent) place(adm *grant, peer PeerCred) bool {
	l := adm.lease
	if !peer.alive() {
		return false
	}
	if err := a.placer.Place(int(peer.PID), adm.bucket); err != nil {
		if !peer.alive() {
			return false
		}
		a.placementFailures.Add(1)
		a.log.Warn("cgroup placement failed; the command runs outside its bucket",
			append(a.leaseFields(l), zap.Error(err))...)
	}
	return true
}

// reject logs and counts a request the limiter refused and tells the caller.
func (a *Agent) reject(l *Lease, rule *policy.Limit, lim *limiter.Limiter, err error, waited time.Duration, send func(*admitpb.ServerMsg) error) {
	fields := append(a.leaseFields(l), zap.Duration("queue_wait", waited))
	var reason admitpb.RejectReason
	var drop, msg string
	who := describeKey(rule.Key)
	limit := lim.Stats().Limit
	// The retry hint is the rule's max_queue_wait in whole seconds (at
	// least 1): a client that comes back after it finds the queue it met
	// turned over at least once.
	retry := int64((rule.MaxQueueWait.Duration + time.Second - 1) / time.Second)
	if retry < 1 {
		retry = 1
	}
	switch {
	case errors.Is(err, limiter.ErrQueueFull):
		reason, drop = admitpb.RejectReason_REJECT_REASON_MAX_SIZE, DropMaxSize
		queue := fmt.Sprintf("the queue of %d is full", rule.MaxQueueSize)
		if rule.MaxQueueSize == 0 {
			queue = "this rule does not queue" // max_queue_size = 0
		}
		msg = fmt.Sprintf("sluice: too many %s requests for %s: %d running and %s (limit %q); try again in %ds",
			l.Subcommand, who, limit, queue, rule.Name, retry)
	case errors.Is(err, limiter.ErrQueueTimeout):
		reason, drop = admitpb.RejectReason_REJECT_REASON_MAX_TIME, DropMaxTime
		msg = fmt.Sprintf("sluice: %s waited %s for a slot for %s (%d running, limit %q); try again in %ds",
			l.Subcommand, rule.MaxQueueWait.Duration, who, limit, rule.Name, retry)
		msg = a.budgetWaitMessage(l, rule, lim, msg)
	case errors.Is(err, errUnavailable):
		reason, drop = admitpb.RejectReason_REJECT_REASON_UNAVAILABLE, DropUnavailable
		msg = msgUnavailable
	default:
		// The caller went away while queued: nothing to send, not a drop.
		a.log.Info("waiter left the queue", append(fields, zap.Error(err))...)
		return
	}
	a.obs.Dropped(rule.Name, drop)
	a.obs.CommandRejected(cmdLabel, subcmdLabel(l))
	a.log.Warn("rejected", append(fields, zap.String("reason", drop))...)
	_ = send(rejected(reason, rule.Name, msg))
}

// finish releases adm's slot and records how its command ended; fin is nil
// when the caller went away without reporting (killed shim).
func (a *Agent) finish(adm *grant, fin *admitpb.Finished) {
	a.release(adm)
	if adm.exec != nil {
		a.untrack(adm)
	}
	a.record(adm, fin, false)
}

// release ends adm's lease: timers, slot, exec lease, state file, table.
func (a *Agent) release(adm *grant) {
	adm.deadlines.disarm()
	if adm.release != nil {
		adm.release()
	}
	if adm.exec != nil {
		a.endExec(adm)
	}
	a.dropLease(adm)
	a.leases.Remove(adm.lease)
}

// record counts and logs how adm's command ended; late is true when the
// report came after the slot was released (execmode.go).
func (a *Agent) record(adm *grant, fin *admitpb.Finished, late bool) {
	l := adm.lease
	fields := append(a.leaseFields(l), zap.Duration("queue_wait", adm.waited))
	if fin == nil {
		if adm.exec != nil {
			// Without a tracer report nothing says how it ended.
			a.obs.CommandFinished(cmdLabel, subcmdLabel(l), OutcomeUnknown, 0, 0, time.Since(l.Arrived)-adm.waited, 0)
			a.log.Warn("lease released without an exit report; outcome unknown", fields...)
			return
		}
		// A supervising shim that exits without its report was killed.
		a.obs.CommandFinished(cmdLabel, subcmdLabel(l), OutcomeSignaled, 0, 0, time.Since(l.Arrived)-adm.waited, 0)
		a.log.Warn("lease released without a report: the shim exited or was killed", fields...)
		return
	}
	outcome := OutcomeOK
	switch {
	case fin.Signal != 0:
		outcome = OutcomeSignaled
	case fin.ExitCode != 0:
		outcome = OutcomeError
	}
	user := time.Duration(fin.UserUsec) * time.Microsecond
	sys := time.Duration(fin.SystemUsec) * time.Microsecond
	real := time.Duration(fin.RealUsec) * time.Microsecond
	a.obs.CommandFinished(cmdLabel, subcmdLabel(l), outcome, user, sys, real, fin.MaxRssKib*1024)
	a.budgetFinished(l, fin)
	a.log.Info("command finished", append(fields,
		zap.Duration("cpu_user", user), zap.Duration("cpu_system", sys),
		zap.Int64("max_rss_kib", fin.MaxRssKib), zap.Duration("real", real),
		zap.Int32("exit_code", fin.ExitCode), zap.Int32("signal", fin.Signal),
		zap.String("outcome", outcome), zap.Bool("exec_mode", adm.exec != nil), zap.Bool("late_exit_report", late))...)
}

func (a *Agent) leaseFields(l *Lease) []zap.Field {
	return []zap.Field{
		zap.String("correlation_id", l.CorrelationID),
		zap.String("subcmd", l.Subcommand),
		zap.ByteString("repo", l.Repo),
		zap.String("remote_ip", l.RemoteIP),
		zap.String("user", l.User),
		zap.String("limit", l.Limit),
		zap.Int32("pid", l.Peer.PID),
		zap.Uint32("uid", l.Peer.UID),
		zap.String("bucket", l.Bucket),
	}
}

func rejected(reason admitpb.RejectReason, limit, msg string) *admitpb.ServerMsg {
	return &admitpb.ServerMsg{Msg: &admitpb.ServerMsg_Rejected{Rejected: &admitpb.Rejected{
		Reason: reason, Message: msg, Limit: limit,
	}}}
}

// describeKey names a rule's key the way a git user understands it.
func describeKey(key string) string {
	var parts []string
	for _, p := range strings.Split(key, "+") {
		switch p {
		case "repo":
			parts = append(parts, "this repository")
		case "remote_ip":
			parts = append(parts, "your address")
		case "user":
			parts = append(parts, "your user")
		case "global":
			parts = append(parts, "this server")
		}
	}
	if len(parts) == 0 {
		return "this server"
	}
	return strings.Join(parts, " and ")
}

// validateRequest checks what a request carries before any of it is used.
func validateRequest(r *admitpb.AdmitRequest) error {
	if !isName(r.Subcommand) {
		return fmt.Errorf("subcommand %q: want 1-%d characters of a-z, 0-9 and -", r.Subcommand, maxNameBytes)
	}
	if len(r.Command) > maxNameBytes || strings.ContainsAny(r.Command, "/\x00") {
		return fmt.Errorf("command %q: want a program name without '/'", cleanText(r.Command, maxShownCommand))
	}
	if n := len(r.Repo); n > maxRepoBytes {
		return fmt.Errorf("repo path is %d bytes, more than %d", n, maxRepoBytes)
	}
	if len(r.Repo) > 0 {
		repo := string(r.Repo)
		switch {
		case strings.IndexByte(repo, 0) >= 0:
			return fmt.Errorf("repo path %q contains a NUL byte", repo)
		case repo[0] != '/':
			return fmt.Errorf("repo path %q is not absolute", repo)
		case filepath.Clean(repo) != repo:
			return fmt.Errorf("repo path %q is not clean (want %q: no '..', '.', '//' or trailing '/')", repo, filepath.Clean(repo))
		}
	}
	if r.RemoteIp != "" {
		if _, err := netip.ParseAddr(r.RemoteIp); err != nil {
			return fmt.Errorf("remote_ip %q is not an IP address", r.RemoteIp)
		}
	}
	if len(r.User) > maxUserBytes || strings.IndexByte(r.User, 0) >= 0 {
		return fmt.Errorf("user %q: want at most %d bytes without NUL", cleanText(r.User, maxShownUser), maxUserBytes)
	}
	// Control characters in the correlation id and the user are escaped
	// for display (cleanLease), not refused: an odd environment must not
	// turn into a refused git command.
	if len(r.CorrelationId) > maxCorrIDBytes {
		return fmt.Errorf("correlation_id is %d bytes, more than %d", len(r.CorrelationId), maxCorrIDBytes)
	}
	return nil
}

func isName(s string) bool {
	if s == "" || len(s) > maxNameBytes {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// cmdLabel is the `cmd` label of command metrics: every command sluice
// admits is git, whatever name the shim was run under.
const cmdLabel = "git"

// subcmdLabel is the `subcmd` label of l's metrics: the subcommand when a
// rule matched it, else "other", so callers cannot grow label cardinality
// by inventing subcommand names.
func subcmdLabel(l *Lease) string {
	if l.Limit == "" {
		return "other"
	}
	return l.Subcommand
}
