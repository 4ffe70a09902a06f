package agent

// Resource bounds of the agent. Every input an unprivileged caller controls
// is bounded, so that no number of clients, keys or bytes can exhaust the
// agent's memory or file descriptors:
//
//   - connections: at most [agent] max_connections at once, at most
//     max_connections_per_uid per uid, the last few kept for root and
//     admin_group (see tryConn); one more is refused at once (the shim
//     exits 75), counted in sluice_connections_rejected_total{reason}. Each
//     connection holds two file descriptors (socket and the peer's pidfd),
//     so the count is also capped by the open-file limit, with a warning
//     at start;
//   - message size: shimproto.MaxFrame (64 KiB) per shim frame and per gRPC
//     message; a larger length prefix closes the connection;
//   - request fields: shimproto.MaxRepoBytes, MaxUserBytes, … (validateRequest);
//   - the hello: a connection must say which protocol it speaks and send
//     its request within helloTimeout (shim framing); a gRPC connection
//     must finish the HTTP/2 handshake and open its first call within
//     helloTimeout, each call must send its request within helloTimeout,
//     and a connection with no call in progress is closed after
//     grpcMaxIdle (see grpcServerOptions). A
//     queued or admitted request keeps its connection as long as it needs;
//     that is bounded by the caps above and by max_queue_wait;
//   - queues: max_queue_size per key and max_queue_wait per waiter;
//   - keys: a limiter forgets a key as soon as nothing runs or waits under
//     it, so it tracks at most as many keys as there are connections, however
//     many distinct repositories, addresses or users pass through
//     (sluice_limiter_keys);
//   - accept errors: running out of file descriptors (EMFILE, ENFILE) or
//     memory pauses accepting with a backoff instead of stopping the agent.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// Connection refusal reasons, the label of
// sluice_connections_rejected_total.
const (
	// RejectMaxConnections: max_connections (or the share of it open to
	// callers that are not root / admin_group) was in use.
	RejectMaxConnections = "max_connections"
	// RejectPerUID: the peer's uid held max_connections_per_uid already.
	RejectPerUID = "per_uid"
	// RejectHandshake: the connection did not say which protocol it speaks
	// and send its request within helloTimeout (shim framing), or did not
	// complete the HTTP/2 handshake or send a call's request in time (gRPC).
	RejectHandshake = "handshake"
)

// RejectReasons lists the reasons, in the order metrics report them.
var RejectReasons = []string{RejectMaxConnections, RejectPerUID, RejectHandshake}

// connCounter counts the connections Serve holds, per uid, and those it
// refused or closed, by reason.
type connCounter struct {
	mu     sync.Mutex // guards open and perUID
	open   int64
	perUID map[uint32]int64 // entries with a zero count are deleted

	rejected [3]atomic.Uint64 // indexed like RejectReasons

	adminMu  sync.Mutex     // guards the fields below
	adminPol *policy.Config // the policy adminGID was resolved for
	adminGID uint32
	adminErr error
}

// Connections returns how many connections the agent serves now and how
// many it refused since start (at accept, for any reason).
func (a *Agent) Connections() (open int, rejected uint64) {
	a.conns.mu.Lock()
	open = int(a.conns.open)
	a.conns.mu.Unlock()
	for i := range a.conns.rejected {
		if RejectReasons[i] != RejectHandshake {
			rejected += a.conns.rejected[i].Load()
		}
	}
	return open, rejected
}

// ConnectionsRejected returns, per reason of RejectReasons, how many
// connections the agent refused or closed since start.
func (a *Agent) ConnectionsRejected() map[string]uint64 {
	out := make(map[string]uint64, len(RejectReasons))
	for i, r := range RejectReasons {
		out[r] = a.conns.rejected[i].Load()
	}
	return out
}

func (c *connCounter) count(reason string) uint64 {
	for i, r := range RejectReasons {
		if r == reason {
			return c.rejected[i].Add(1)
		}
	}
	return 0
}

// Every connection holds two file descriptors: its socket and a pidfd of
// the peer. fdReserve are kept for everything else (listeners, logs,
// cgroup and /proc files, gRPC).
const (
	fdsPerConn = 2
	fdReserve  = 64
)

// fdBudget is how many connections the open-file limit allows, read once
// (the Go runtime has raised the soft limit to the hard one by then);
// 0 when the limit cannot be read.
var fdBudget = sync.OnceValue(func() int64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == ^uint64(0) {
		return 0
	}
	if rl.Cur <= fdReserve+fdsPerConn {
		return 1
	}
	return int64((rl.Cur - fdReserve) / fdsPerConn)
})

// maxConnections is [agent] max_connections of the policy in force, capped
// by what the open-file limit allows (see warnFDBudget).
func (a *Agent) maxConnections() int64 {
	n := int64(a.Policy().Agent.MaxConnections)
	if n <= 0 {
		n = policy.DefaultMaxConnections
	}
	if b := fdBudget(); b > 0 && b < n {
		return b
	}
	return n
}

// warnFDBudget logs when the open-file limit is too low for
// max_connections: running out of descriptors would refuse connections
// with an error nobody sees, so the agent caps the count and says how to
// raise it.
//
// It is a warning only when the cap can matter: below fdWarnBelow
// connections a busy host's running and queued commands (each one
// connection) can reach it. Above that the cap is logged once at info
// level, with the numbers, and nothing else: a 20,000-descriptor limit
// still serves ~10,000 git commands at once.
func (a *Agent) warnFDBudget() {
	pol := a.Policy()
	want := int64(pol.Agent.MaxConnections)
	b := fdBudget()
	level, msg := fdBudgetMessage(want, b)
	if msg == "" {
		return
	}
	a.log.Check(level, msg).Write(zap.String("config", pol.Source), zap.Int64("max_connections", want),
		zap.Int64("fds_needed", want*fdsPerConn+fdReserve), zap.Int64("serving_at_most", b))
}

// fdBudgetMessage is what warnFDBudget logs for max_connections want and a
// connection budget b ("" when nothing).
func fdBudgetMessage(want, b int64) (zapcore.Level, string) {
	switch {
	case b <= 0 || want <= b:
		return zapcore.InfoLevel, ""
	case b < fdWarnBelow:
		return zapcore.WarnLevel, fmt.Sprintf("the open-file limit lets sluiced serve at most %d git commands (running and queued) at once, fewer than [agent] max_connections; "+
			"more are refused (exit 75): raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections", b)
	}
	return zapcore.InfoLevel, fmt.Sprintf("the open-file limit caps connections at %d (running and queued git commands), below [agent] max_connections", b)
}

// fdWarnBelow is the connection budget below which warnFDBudget warns.
const fdWarnBelow = 1024

// Who gets a connection when they are scarce. Every connection, and every
// gRPC call on a connection, is counted against max_connections (M) and
// against its uid (SO_PEERCRED at accept), so many calls multiplexed on one
// connection cannot get around the caps:
//
//   - a uid other than root, sluiced's own and admin_group's members may
//     hold at most max_connections_per_uid (P, a quarter of M by default),
//     so one local user can never take the connections another uid (the
//     Git server's) needs: an attacker needs more than (M - R) / P uids to
//     fill the table;
//   - the last R = min(16, M/2) connections are kept for root, sluiced's
//     uid and admin_group (the reserve), so `sluice status` answers while
//     everybody else is refused;
//   - a refused shim gets an explicit Rejected (PERMISSION for its uid's
//     cap, MAX_SIZE for max_connections), never UNAVAILABLE, and a refused
//     gRPC call RESOURCE_EXHAUSTED with the same line: the shim exits 75
//     ("try again later") whatever fail_mode says. A saturated agent is
//     alive and shedding load; turning that into fail-open would let any
//     user who fills the table run everybody's git without limits.
//     fail_mode applies only when no agent answers (stopped, restarting,
//     socket missing, no answer within the shim's admit timeout).
//
// Admin membership needs the peer's supplementary groups from /proc, so it
// is read only for a connection that would otherwise be refused.

// adminReserve is R for max_connections m.
func adminReserve(m int64) int64 { return min(16, m/2) }

// connLimits are the numbers tryConn decides with.
type connLimits struct {
	max, perUID, reserve int64
}

func (a *Agent) connLimits() connLimits {
	m := a.maxConnections()
	p := int64(a.Policy().Agent.ConnectionsPerUID())
	return connLimits{max: m, perUID: min(p, m), reserve: adminReserve(m)}
}

// tryConn counts a new connection (or gRPC call) from uid. It returns the
// function that uncounts it (idempotent), or nil and the refusal reason.
// privileged says whether the peer is root, sluiced's uid or in
// admin_group; it is called only when the connection would be refused
// otherwise, and outside the lock (it may read /proc).
func (c *connCounter) tryConn(l connLimits, uid uint32, privileged func() bool) (func(), string) {
	c.mu.Lock()
	if c.open < l.max-l.reserve && c.perUID[uid] < l.perUID {
		c.add(uid)
		c.mu.Unlock()
		return c.release(uid), ""
	}
	full, overUID := c.open >= l.max, c.perUID[uid] >= l.perUID
	c.mu.Unlock()
	if full {
		return nil, RejectMaxConnections
	}
	if !privileged() {
		if overUID {
			return nil, RejectPerUID
		}
		return nil, RejectMaxConnections
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open >= l.max {
		return nil, RejectMaxConnections
	}
	c.add(uid)
	return c.release(uid), ""
}

// add counts a connection of uid; c.mu must be held.
func (c *connCounter) add(uid uint32) {
	c.open++
	if c.perUID == nil {
		c.perUID = map[uint32]int64{}
	}
	c.perUID[uid]++
}

// release returns the function that uncounts a connection of uid once.
func (c *connCounter) release(uid uint32) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.open--
			if c.perUID[uid]--; c.perUID[uid] <= 0 {
				delete(c.perUID, uid)
			}
		})
	}
}

// privilegedPeer reports whether cred may use the reserve and is exempt
// from the per-uid cap: root, sluiced's own uid, or a member of
// admin_group (primary or supplementary group, read from /proc and checked
// against the peer's pidfd).
func (a *Agent) privilegedPeer(cred PeerCred) bool {
	if cred.UID == 0 || cred.UID == uint32(os.Geteuid()) {
		return true
	}
	pol := a.Policy()
	err := authorize(cred, pol.Agent.AdminGroup, func(pid int32) ([]uint32, error) {
		g, err := procfs.Default.Groups(int(pid))
		if err == nil && !cred.alive() {
			err = errors.New("peer process exited")
		}
		return g, err
	}, func(string) (uint32, error) { return a.conns.adminGroupID(pol) })
	return err == nil
}

// adminGroupID resolves admin_group once per policy: a refused connection
// must not cost a read of /etc/group in the accept loop.
func (c *connCounter) adminGroupID(pol *policy.Config) (uint32, error) {
	c.adminMu.Lock()
	defer c.adminMu.Unlock()
	if c.adminPol != pol {
		c.adminGID, c.adminErr = lookupGroupID(pol.Agent.AdminGroup)
		c.adminPol = pol
	}
	return c.adminGID, c.adminErr
}

// tryConn counts a new connection from cred; see connCounter.tryConn.
func (a *Agent) tryConn(cred PeerCred) (func(), string) {
	return a.conns.tryConn(a.connLimits(), cred.UID, func() bool { return a.privilegedPeer(cred) })
}

// refusal counts a refusal and returns the reason code and the line the
// shim (or gRPC client) shows. The code is never UNAVAILABLE, so the shim
// exits 75 whatever its fail_mode (see above).
func (a *Agent) refusal(cred PeerCred, reason string) (admitpb.RejectReason, string) {
	n := a.conns.count(reason)
	l := a.connLimits()
	src := a.policySource()
	if reason == RejectPerUID {
		if n == 1 || n%1000 == 0 {
			a.log.Warn("connection refused: the uid holds [agent] max_connections_per_uid connections; raise it if this uid is the Git server's",
				zap.Uint32("uid", cred.UID), zap.Int32("pid", cred.PID), zap.Int64("max_connections_per_uid", l.perUID),
				zap.String("config", src), zap.Uint64("refused_total", n))
		}
		return admitpb.RejectReason_REJECT_REASON_PERMISSION, fmt.Sprintf(
			"sluice: too many connections from uid %d ([agent] max_connections_per_uid = %d in %s); try again later, or raise max_connections_per_uid if uid %d is the Git server's",
			cred.UID, l.perUID, src, cred.UID)
	}
	if n == 1 || n%1000 == 0 {
		a.log.Warn("connection refused: max_connections open; raise [agent] max_connections if this is legitimate load",
			zap.Int64("max_connections", l.max), zap.Int64("reserved_for_admin", l.reserve),
			zap.Uint32("uid", cred.UID), zap.String("config", src), zap.Uint64("refused_total", n))
	}
	return admitpb.RejectReason_REJECT_REASON_MAX_SIZE, fmt.Sprintf(
		"sluice: the admission service is at its connection limit ([agent] max_connections = %d in %s); try again later",
		l.max, src)
}

// refuseConn answers a connection tryConn refused with a shim Rejected
// frame and closes it, without reading anything. A gRPC client sees a
// broken connection.
func (a *Agent) refuseConn(c *net.UnixConn, cred PeerCred, reason string) {
	code, msg := a.refusal(cred, reason)
	b, _ := proto.Marshal(rejected(code, "", msg))
	_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	_, _ = c.Write(shimproto.AppendFrame(nil, b))
	c.Close()
}

// policySource names the policy file for messages.
func (a *Agent) policySource() string {
	src := a.Policy().Source
	if src == "" || src == policy.DefaultSource {
		return "the policy file, " + policy.DefaultPath
	}
	return src
}

// acceptBackoff is how long to pause after a temporary accept error: from
// 5 ms doubling to 1 s, as net/http does.
func acceptBackoff(prev time.Duration) time.Duration {
	if prev == 0 {
		return 5 * time.Millisecond
	}
	return min(2*prev, time.Second)
}

// temporaryAcceptError reports errors after which accepting may succeed
// again: out of file descriptors or memory, or a connection aborted before
// it was accepted.
func temporaryAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
