package agent

// Resource bounds of the agent. Every input an unprivileged caller controls
// is bounded, so that no number of clients, keys or bytes can exhaust the
// agent's memory or file descriptors:
//
//   - connections: at most [agent] max_connections at once; one more is
//     answered "unavailable" and closed at once (the shim applies
//     fail_mode), counted in sluice_connections_rejected_total. Each
//     connection holds two file descriptors (socket and the peer's pidfd),
//     so the count is also capped by the open-file limit, with a warning
//     at start;
//   - message size: wire.MaxFrame (64 KiB) per shim frame and per gRPC
//     message; a larger length prefix closes the connection;
//   - request fields: wire.MaxRepoBytes, MaxUserBytes, … (validateRequest);
//   - the hello: a connection must say which protocol it speaks within
//     helloTimeout;
//   - queues: max_queue_size per key and max_queue_wait per waiter;
//   - keys: a limiter forgets a key as soon as nothing runs or waits under
//     it, so it tracks at most as many keys as there are connections, however
//     many distinct repositories, addresses or users pass through
//     (sluice_limiter_keys);
//   - accept errors: running out of file descriptors (EMFILE, ENFILE) or
//     memory pauses accepting with a backoff instead of stopping the agent.

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/wire"
	"github.com/sluicehq/sluice/policy"
)

// connCounter counts the connections Serve holds and those it refused.
type connCounter struct {
	open     atomic.Int64
	rejected atomic.Uint64
}

// Connections returns how many connections the agent serves now and how
// many it refused since start because max_connections were open.
func (a *Agent) Connections() (open int, rejected uint64) {
	return int(a.conns.open.Load()), a.conns.rejected.Load()
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
func (a *Agent) warnFDBudget() {
	pol := a.Policy()
	want := int64(pol.Agent.MaxConnections)
	if b := fdBudget(); b > 0 && want > b {
		a.log.Warn("the open-file limit is too low for [agent] max_connections: serving fewer connections; raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections",
			zap.String("config", pol.Source), zap.Int64("max_connections", want),
			zap.Int64("fds_needed", want*fdsPerConn+fdReserve), zap.Int64("serving_at_most", b))
	}
}

// tryConn counts a new connection; it returns nil when max_connections
// are already open, else the function that uncounts it (idempotent).
func (a *Agent) tryConn() func() {
	if a.conns.open.Add(1) > a.maxConnections() {
		a.conns.open.Add(-1)
		return nil
	}
	var once sync.Once
	return func() { once.Do(func() { a.conns.open.Add(-1) }) }
}

// refuseConn answers a connection beyond max_connections with a shim
// Rejected frame (reason UNAVAILABLE: the shim applies fail_mode) and closes
// it, without reading anything. A gRPC client sees a broken connection.
func (a *Agent) refuseConn(c *net.UnixConn) {
	n := a.conns.rejected.Add(1)
	max := a.maxConnections()
	if n == 1 || n%1000 == 0 {
		a.log.Warn("connection refused: max_connections open; raise [agent] max_connections if this is legitimate load",
			zap.Int64("max_connections", max), zap.Uint64("refused_total", n))
	}
	b, _ := proto.Marshal(rejected(admitpb.RejectReason_REJECT_REASON_UNAVAILABLE, "", msgTooManyConns))
	_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	_, _ = c.Write(wire.AppendFrame(nil, b))
	c.Close()
}

const msgTooManyConns = "sluice: the admission service is at its connection limit ([agent] max_connections); try again later"

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
