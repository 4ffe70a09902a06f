package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/internal/procfs"
)

// Surviving a restart.
//
// A running lease is a git process that must keep counting against its
// limit even when the agent that admitted it is gone: after a crash, an
// upgrade or `systemctl restart sluiced`, a new agent that starts with
// empty counters would admit a second storm on top of the first. So every
// running lease is also a small file in the state directory (a tmpfs under
// the socket's directory, kept across restarts by the unit's
// RuntimeDirectoryPreserve): its pid and the pid's start time (which
// together name one process for good, unlike a pid alone), its rule and
// key. The file is written before the command is told to run and removed
// when the lease ends; a graceful shutdown leaves the files of commands
// still running. A new agent reads them before it accepts a connection and
// adopts each process still alive: it takes its slot again (even above a
// limit lowered meanwhile), holds it by a pidfd, and releases it when the
// process exits. Nothing is counted twice: the old agent is gone, and a
// supervising shim of the old agent cannot reach the new one with its
// report.

// leaseRecord is the state file of one running lease.
type leaseRecord struct {
	PID int `json:"pid"`
	// Start is the process's start time in clock ticks since boot
	// (/proc/PID/stat field 22).
	Start         uint64    `json:"start"`
	UID           uint32    `json:"uid"`
	Limit         string    `json:"limit"`
	Key           string    `json:"key"`
	Command       string    `json:"command"`
	Subcommand    string    `json:"subcmd"`
	Repo          []byte    `json:"repo"`
	RemoteIP      string    `json:"remote_ip,omitempty"`
	User          string    `json:"user,omitempty"`
	CorrelationID string    `json:"correlation_id"`
	Bucket        string    `json:"bucket,omitempty"`
	Admitted      time.Time `json:"admitted"`
	Arrived       time.Time `json:"arrived"`
	// AdmittedBoot is Admitted on CLOCK_BOOTTIME (ns), which no clock
	// change moves: the adopting agent measures elapsed time with it.
	// 0 in records written before it was recorded (Admitted is used).
	AdmittedBoot int64 `json:"admitted_boot_ns,omitempty"`
	// Deadlines are the timeouts the lease was armed with; nil in records
	// written before they were recorded (the adopting agent then uses the
	// values its own policy gives the lease's rule and subcommand).
	Deadlines *recordDeadlines `json:"deadlines,omitempty"`

	// negotiated: the lease's negotiation ended before the restart (its
	// marker file, below, was there); not part of the record.
	negotiated bool
}

// negotiatedSuffix names the marker file ID+negotiatedSuffix, created
// (empty) when the negotiation of lease ID ends: the adopting agent then
// leaves the transfer alone instead of bounding it by the negotiation
// timeout again. A marker, not a rewrite of the record: one openat(2)
// with O_EXCL, and the record itself is never replaced (writeAtomic).
const negotiatedSuffix = ".negotiated"

// recordDeadlines are a lease's timeouts (timeouts.go), in milliseconds;
// 0 is "not bounded".
type recordDeadlines struct {
	NegotiationMS int64 `json:"negotiation_ms"`
	MaxRuntimeMS  int64 `json:"max_runtime_ms"`
	KillGraceMS   int64 `json:"kill_grace_ms"`
}

// bootNow is CLOCK_BOOTTIME in ns (0 when unreadable).
func bootNow() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return ts.Nano()
}

// deadlinesOf records what w was armed with (nil w: nothing bounded).
func deadlinesOf(w *deadlines) *recordDeadlines {
	d := &recordDeadlines{}
	if w != nil {
		d.NegotiationMS = w.neg.limit.Milliseconds() // fixed at arming
		d.MaxRuntimeMS = w.run.Milliseconds()
		d.KillGraceMS = w.grace.Milliseconds()
	}
	return d
}

// maxLeaseRecord bounds what Recover reads of one state file.
const maxLeaseRecord = 16 << 10

// saveLease writes adm's state file. A failure is logged and counted, and
// the command runs anyway: only a restart would forget it.
func (a *Agent) saveLease(adm *grant, peer PeerCred) {
	if a.stateDir == "" {
		return
	}
	l := adm.lease
	start, err := procfs.Default.StartTime(int(peer.PID))
	if err == nil {
		rec := leaseRecord{
			PID: int(peer.PID), Start: start, UID: peer.UID, Limit: l.Limit, Key: l.Key,
			Command: l.Command, Subcommand: l.Subcommand, Repo: l.Repo, RemoteIP: l.RemoteIP, User: l.User,
			CorrelationID: l.CorrelationID, Bucket: l.Bucket, Admitted: adm.admitted, Arrived: l.Arrived,
			AdmittedBoot: adm.admittedBoot, Deadlines: deadlinesOf(adm.deadlines),
		}
		var b []byte
		if b, err = json.Marshal(&rec); err == nil {
			if a.stateFD < 0 {
				err = errors.New("the state directory is not in use: " + a.StateProblem())
			} else {
				// Relative to the checked directory, never through a symlink
				// and never over an existing file; all or nothing.
				err = writeAtomic(a.stateFD, l.ID, b)
			}
		}
	}
	if err != nil {
		n := a.stateErrors.Add(1)
		// Every failure is counted; the log says so for the first and then
		// at most every 10s (a full disk fails every lease).
		now := time.Now().UnixNano()
		if last := a.stateLogged.Load(); n > 1 && now-last < int64(10*time.Second) || !a.stateLogged.CompareAndSwap(last, now) {
			return
		}
		a.log.Error("cannot save the lease state; a restart of the agent would forget this command",
			append(a.leaseFields(l), zap.String("state_dir", a.stateDir), zap.Uint64("state_errors_total", n), zap.Error(err))...)
		return
	}
	adm.saved = true
}

// dropLease removes adm's state file (and its negotiation marker).
func (a *Agent) dropLease(adm *grant) {
	if a.stateFD < 0 {
		return
	}
	_ = unix.Unlinkat(a.stateFD, adm.lease.ID+negotiatedSuffix, 0)
	if !adm.saved {
		return
	}
	if err := unix.Unlinkat(a.stateFD, adm.lease.ID, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		a.log.Warn("cannot remove a lease state file", append(a.leaseFields(adm.lease), zap.Error(err))...)
	}
}

// markNegotiated records that lease l's negotiation is over (the
// timekeeper calls it once per lease). A failure only means that a
// restart would bound the transfer by the negotiation timeout again
// (rearm's process scan still sees a running pack-objects): logged at
// debug level, not counted as a lost lease.
func (a *Agent) markNegotiated(l *Lease) {
	if a.stateFD < 0 || !isLeaseID(l.ID) {
		return
	}
	fd, err := unix.Openat(a.stateFD, l.ID+negotiatedSuffix, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		a.log.Debug("cannot mark the negotiation over in the state directory", append(a.leaseFields(l), zap.Error(err))...)
		return
	}
	unix.Close(fd)
}

// Recover adopts the running commands recorded in the state directory by
// an earlier agent; call it before Serve. It returns how many processes
// were adopted and how many records were stale (process gone, or its rule
// gone from the policy, or unreadable: a zero-byte or torn record) and
// removed.
//
// Only an unsafe state directory (safedir.go) is an error: sluiced refuses
// to start. A directory that cannot be created, opened or listed (a full
// or read-only filesystem, too many files) is not: the agent admits
// without persistence, says so in an error log line, in `sluice status`
// and with every lease it cannot save (sluice_lease_state_errors_total),
// rather than leaving every shim to its fail mode. Start never waits on a
// record: one that cannot be read is removed (or, failing that, skipped).
func (a *Agent) Recover() (adopted, stale int, err error) {
	if a.stateDir == "" {
		return 0, 0, nil
	}
	// leases/ and every directory above it are checked, and leases/ is
	// held open: every state file is then reached relative to it
	// (safedir.go).
	fd, err := openTrustedDir(a.stateDir, dirRole{what: "state directory", mode: 0o700, gid: -1})
	if errors.Is(err, errUnsafe) {
		return 0, 0, err
	}
	if err != nil {
		a.noPersistence(err)
		return 0, 0, nil
	}
	if a.stateFD >= 0 {
		unix.Close(a.stateFD)
	}
	a.stateFD = fd
	names, err := readDirNames(fd)
	if err != nil {
		a.noPersistence(fmt.Errorf("list %s: %w", a.stateDir, err))
		return 0, 0, nil
	}
	a.setStateProblem("")
	live := map[string]bool{}
	var markers []string
	for _, name := range names {
		if id, ok := strings.CutSuffix(name, tmpSuffix); ok && isLeaseID(id) {
			// A write the previous agent did not finish: never adopted.
			_ = unix.Unlinkat(fd, name, 0)
			continue
		}
		if id, ok := strings.CutSuffix(name, negotiatedSuffix); ok && isLeaseID(id) {
			markers = append(markers, id)
			continue
		}
		if !isLeaseID(name) {
			continue
		}
		path := filepath.Join(a.stateDir, name)
		if why := a.adopt(name); why != "" {
			stale++
			a.log.Warn("lease state not adopted", zap.String("file", path), zap.String("why", why))
			_ = unix.Unlinkat(fd, name, 0) // removes a symlink itself, never its target
			continue
		}
		live[name] = true
		adopted++
	}
	for _, id := range markers {
		if !live[id] {
			_ = unix.Unlinkat(fd, id+negotiatedSuffix, 0) // its lease is gone
		}
	}
	return adopted, stale, nil
}

// negotiatedBefore reports whether the previous agent marked lease id's
// negotiation over: a regular file, never followed through a symlink.
func (a *Agent) negotiatedBefore(id string) bool {
	var st unix.Stat_t
	return unix.Fstatat(a.stateFD, id+negotiatedSuffix, &st, unix.AT_SYMLINK_NOFOLLOW) == nil &&
		st.Mode&unix.S_IFMT == unix.S_IFREG
}

// noPersistence records that the state directory cannot be used.
func (a *Agent) noPersistence(err error) {
	if a.stateFD >= 0 {
		unix.Close(a.stateFD)
		a.stateFD = -1
	}
	msg := fmt.Sprintf("state directory %s unusable (%v): admitting without persistence, so a restart of the agent forgets the commands running; free space or fix %s, then restart sluiced", a.stateDir, err, a.stateDir)
	a.setStateProblem(msg)
	a.log.Error("admitting without persistence", zap.String("state_dir", a.stateDir), zap.Error(err),
		zap.String("fix", "free space or fix the state directory, then restart sluiced"))
}

func (a *Agent) setStateProblem(s string) {
	a.stateMu.Lock()
	a.stateProblem = s
	a.stateMu.Unlock()
}

// StateProblem says why the state directory is not in use ("" when it is).
func (a *Agent) StateProblem() string {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	return a.stateProblem
}

// StateErrors is how many lease state files could not be written
// (sluice_lease_state_errors_total).
func (a *Agent) StateErrors() uint64 { return a.stateErrors.Load() }

// readDirNames lists the directory dirfd (through a duplicate, so dirfd's
// offset is untouched).
func readDirNames(dirfd int) ([]string, error) {
	dup, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "leases")
	defer f.Close()
	return f.Readdirnames(-1)
}

// adopt takes over the lease recorded in the state file id, or says why not.
// Only a file the agent itself could have written is read (safedir.go).
func (a *Agent) adopt(id string) string {
	b, err := readTrustedFile(a.stateFD, id, maxLeaseRecord)
	if err != nil {
		return err.Error()
	}
	var rec leaseRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.PID <= 0 {
		return fmt.Sprintf("unreadable record: %v", err)
	}
	rec.sanitize()
	rec.negotiated = a.negotiatedBefore(id)
	// The same pid and start time name the same process; check again after
	// the pidfd is open, so a pid reused in between is never adopted.
	if st, err := procfs.Default.StartTime(rec.PID); err != nil || st != rec.Start {
		return "the process has ended"
	}
	pidfd, err := unix.PidfdOpen(rec.PID, unix.PIDFD_NONBLOCK)
	if err != nil {
		return "the process has ended"
	}
	if st, err := procfs.Default.StartTime(rec.PID); err != nil || st != rec.Start {
		unix.Close(pidfd)
		return "the process has ended"
	}
	var release func()
	if rec.Limit != "" {
		a.mu.RLock()
		lim := a.limiters[rec.Limit]
		a.mu.RUnlock()
		if lim == nil {
			unix.Close(pidfd)
			return fmt.Sprintf("rule %q is no longer in the policy", rec.Limit)
		}
		release = lim.Adopt(rec.Key)
	}
	release = a.adoptBudget(&Lease{Subcommand: rec.Subcommand, Repo: rec.Repo, RemoteIP: rec.RemoteIP, User: rec.User}, release)
	l := &Lease{
		ID: id, CorrelationID: rec.CorrelationID, Command: rec.Command, Subcommand: rec.Subcommand,
		Repo: rec.Repo, RemoteIP: rec.RemoteIP, User: rec.User, Limit: rec.Limit, Key: rec.Key,
		Peer: PeerCred{PID: int32(rec.PID), UID: rec.UID, pidfd: -1}, Bucket: rec.Bucket, Arrived: rec.Arrived,
	}
	a.leases.adopt(l, rec.Admitted)
	el := &execHold{pid: rec.PID, exit: make(chan ProcessExit, 1), pidfd: os.NewFile(uintptr(pidfd), "pidfd")}
	adm := &grant{lease: l, release: release, bucket: -1, exec: el, admitted: rec.Admitted, saved: true,
		waited: rec.Admitted.Sub(rec.Arrived)}
	a.execMu.Lock()
	a.execLeases[rec.PID] = el
	a.execMu.Unlock()
	if a.tracer != nil {
		// The exit report then carries the process's CPU for its whole life.
		if _, err := a.tracer.Track(rec.PID); err != nil {
			a.log.Warn("adopted process not traced; its CPU will not be recorded", append(a.leaseFields(l), zap.Error(err))...)
		}
	}
	adm.deadlines = a.rearm(l, &rec, pidfd)
	a.log.Info("adopted a command still running from before the restart", a.leaseFields(l)...)
	go a.runExec(adm)
	return ""
}

// rearm starts the timeouts of the adopted lease l from the time it was
// admitted, with the values it was armed with (or, for a record written
// before they were recorded, those of the current policy): a restart
// neither resets a deadline nor lifts it. A deadline that passed while no
// agent ran fires at once (a negotiation first gets its last look at the
// process tree: a pack-objects running ends it). A negotiation that ended
// under the old agent left its marker (negotiatedSuffix): the transfer is
// then bounded by max_runtime only, as it was before the restart — even
// after its pack-objects has exited while upload-pack still sends the
// pack's tail to a slow client.
func (a *Agent) rearm(l *Lease, rec *leaseRecord, pidfd int) *deadlines {
	cfg := a.Policy()
	neg := negotiationOf(rec.Subcommand, &cfg.Timeouts)
	var run time.Duration
	for i := range cfg.Limits {
		if rec.Limit != "" && cfg.Limits[i].Name == rec.Limit {
			run = cfg.Limits[i].MaxRuntime.Duration
		}
	}
	grace := cfg.Timeouts.KillGrace.Duration
	if d := rec.Deadlines; d != nil {
		neg.limit = time.Duration(d.NegotiationMS) * time.Millisecond
		run = time.Duration(d.MaxRuntimeMS) * time.Millisecond
		grace = time.Duration(d.KillGraceMS) * time.Millisecond
	}
	if rec.negotiated {
		neg = negotiation{} // the transfer is not bounded by it
	}
	since := rec.Admitted
	if now := bootNow(); rec.AdmittedBoot > 0 && now >= rec.AdmittedBoot {
		since = time.Now().Add(-time.Duration(now - rec.AdmittedBoot))
	}
	own := -1
	if fd, err := unix.FcntlInt(uintptr(pidfd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
		own = fd
	}
	return a.timeouts.armAt(l, neg, run, grace, since, own)
}

// isLeaseID reports whether name looks like a lease ID (16 hex digits).
func isLeaseID(name string) bool {
	if len(name) != 16 {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// StoppingMark is the file a stopping agent leaves next to its socket
// (its mtime: when it began to stop) and a ready agent removes. A shim
// that finds no socket, or a socket nobody accepts on, while the mark is
// younger than restart_grace is looking at a restart, not a missing agent:
// it keeps trying until the grace is over (cmd/sluice-shim/reconnect.go).
// A mark left by an agent that never comes back costs each command at
// most what is left of the grace, once, and nothing after it.
const StoppingMark = "stopping"

// MarkStopping writes the stopping mark in the socket's directory (a
// directory Listen checked: safedir.go). Best effort: a failure is logged.
func MarkStopping(socket string, log *zap.Logger) {
	dir := filepath.Dir(socket)
	path := filepath.Join(dir, StoppingMark)
	_ = unix.Unlink(path)
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		log.Warn("cannot leave the stopping mark; shims arriving during a restart apply fail_mode at once", zap.String("file", path), zap.Error(err))
		return
	}
	unix.Close(fd)
}

// ClearStopping removes the stopping mark: the agent is ready.
func ClearStopping(socket string) {
	_ = unix.Unlink(filepath.Join(filepath.Dir(socket), StoppingMark))
}
