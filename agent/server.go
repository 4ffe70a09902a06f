package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
)

const (
	// helloTimeout bounds how long a new connection may take to say which
	// protocol it speaks.
	helloTimeout = 5 * time.Second
	// drainTimeout bounds how long shutdown waits for queued waiters to
	// be told to fail over.
	drainTimeout = 2 * time.Second
)

// Serve accepts connections on ln until ctx is done, then shuts down:
// queued waiters are rejected as unavailable (their shims apply
// fail_mode), the socket is removed, and running leases are dropped with
// their connections (their git processes keep running). It returns nil
// after a shutdown caused by ctx.
func (a *Agent) Serve(ctx context.Context, sock *Socket) error {
	ln, path := sock.ln, sock.Path
	a.warnFDBudget()
	a.mu.Lock()
	a.socket = path
	a.mu.Unlock()

	gs := grpc.NewServer(a.grpcServerOptions()...)
	admitpb.RegisterAdmissionServer(gs, admissionService{a: a})
	admitpb.RegisterAdminServer(gs, adminService{a: a})
	gln := newChanListener(ln.Addr())
	gdone := make(chan struct{})
	go func() {
		defer close(gdone)
		_ = gs.Serve(gln)
	}()

	var conns sync.WaitGroup
	var shimMu sync.Mutex
	shimConns := map[net.Conn]struct{}{}

	acceptErr := make(chan error, 1)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		var backoff time.Duration
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				if temporaryAcceptError(err) && a.stopping.Err() == nil {
					// Out of fds or memory: wait for connections to
					// end rather than stop serving everyone.
					backoff = acceptBackoff(backoff)
					a.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
					time.Sleep(backoff)
					continue
				}
				acceptErr <- err
				return
			}
			backoff = 0
			cred, err := peerCred(c)
			if err != nil {
				a.log.Warn("reading peer credentials", zap.Error(err))
				c.Close()
				continue
			}
			done, reason := a.tryConn(cred)
			if done == nil {
				a.refuseConn(c, cred, reason)
				cred.close()
				continue
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				a.dispatch(c, cred, gln, done, func(add bool) {
					shimMu.Lock()
					defer shimMu.Unlock()
					if add {
						shimConns[c] = struct{}{}
					} else {
						delete(shimConns, c)
					}
				})
			}()
		}
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-acceptErr:
		err = fmt.Errorf("accept on %s: %w", path, err)
	}
	// Shutdown: leave the stopping mark before anything a shim can see
	// changes (recovery.go), then refuse and fail over waiters first, so
	// they get a clean answer rather than a broken connection.
	MarkStopping(path, a.log)
	a.stop()
	ln.Close()
	removeSocketIfOurs(path, sock.ino)
	a.waitAdmissionsDone(drainTimeout)
	gs.Stop()
	<-gdone
	// No conns.Add may race with conns.Wait below.
	<-acceptDone
	shimMu.Lock()
	for c := range shimConns {
		c.Close()
	}
	shimMu.Unlock()
	conns.Wait()
	return err
}

// waitAdmissionsDone waits until every request in admission (queued or
// being answered) has had its reply sent, or d passes.
func (a *Agent) waitAdmissionsDone(d time.Duration) {
	deadline := time.Now().Add(d)
	for a.admitting.Load() > 0 {
		if time.Now().After(deadline) {
			a.log.Warn("shutdown: some admission requests did not finish in time", zap.Duration("waited", d))
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// dispatch reads the first byte of c and hands it to the gRPC server or
// serves it as a shim connection.
// done uncounts the connection (see tryConn) once it is closed.
func (a *Agent) dispatch(c *net.UnixConn, cred PeerCred, gln *chanListener, done func(), track func(add bool)) {
	handed := false
	defer func() {
		if !handed {
			done()
		}
	}()
	if a.stopping.Err() != nil {
		cred.close()
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(helloTimeout))
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		if isTimeout(err) {
			a.conns.count(RejectHandshake)
		}
		cred.close()
		c.Close()
		return
	}
	switch first[0] {
	case 'P': // "PRI * HTTP/2.0": gRPC
		// The gRPC server bounds the rest of the handshake
		// (grpc.ConnectionTimeout) and the idle time that follows.
		_ = c.SetReadDeadline(time.Time{})
		pc := &peekedConn{UnixConn: c, first: first[0], cred: cred, onClose: done, a: a}
		// The first call must open within helloTimeout too: a client
		// that finishes the HTTP/2 handshake and then says nothing is
		// closed like a silent shim, without waiting for grpcMaxIdle.
		time.AfterFunc(helloTimeout, func() {
			if !pc.called.Load() && !pc.closed.Load() {
				a.conns.count(RejectHandshake)
				pc.Close()
			}
		})
		handed = true
		if !gln.deliver(pc) {
			pc.Close()
		}
	case shimproto.Magic[0]:
		track(true)
		defer track(false)
		defer cred.close()
		a.serveShim(c, cred)
	case packCacheFirst: // pack cache (packcache_hook.go)
		track(true)
		defer track(false)
		defer cred.close()
		a.servePackCache(c, cred)
	default:
		cred.close()
		a.log.Warn("unknown protocol on admission socket", zap.Int32("pid", cred.PID), zap.Uint32("uid", cred.UID), zap.Uint8("first_byte", first[0]))
		c.Close()
	}
}

// serveShim serves one shim connection: magic, an admit frame, replies,
// then the lease until a Finished frame or the connection closes.
func (a *Agent) serveShim(c *net.UnixConn, cred PeerCred) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 512)
	magic := make([]byte, len(shimproto.Magic)-1)
	// The read deadline dispatch set (helloTimeout from accept) still
	// runs: the magic and the whole admit frame must arrive before it, so
	// a connection that says hello and then nothing, or drips its request
	// a byte at a time, is closed like a silent one.
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != shimproto.Magic[1:] {
		if isTimeout(err) {
			a.conns.count(RejectHandshake)
		}
		a.log.Warn("bad shim handshake", zap.Int32("pid", cred.PID), zap.Uint32("uid", cred.UID), zap.Error(err))
		return
	}
	var buf []byte
	frame, err := shimproto.ReadFrame(r, buf)
	if err != nil {
		if isTimeout(err) {
			a.conns.count(RejectHandshake)
		}
		a.log.Warn("reading admission request", zap.Int32("pid", cred.PID), zap.Uint32("uid", cred.UID), zap.Error(err))
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	var msg admitpb.ClientMsg
	send := func(m *admitpb.ServerMsg) error {
		b, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		_ = c.SetWriteDeadline(time.Now().Add(helloTimeout))
		_, err = c.Write(shimproto.AppendFrame(nil, b))
		return err
	}
	if err := proto.Unmarshal(frame, &msg); err != nil || msg.GetAdmit() == nil {
		if err == nil {
			err = errors.New("first message is not an admit request")
		}
		a.log.Warn("malformed admission request", zap.Int32("pid", cred.PID), zap.Uint32("uid", cred.UID), zap.Error(err))
		a.obs.CommandRejected(cmdLabel, "invalid")
		_ = send(rejected(admitpb.RejectReason_REJECT_REASON_INVALID, "", "sluice: invalid admission request: "+err.Error()))
		return
	}

	// Watch the connection while queued and while the lease runs: the
	// next frame is Finished, and EOF means the shim is gone.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	next := make(chan *admitpb.Finished, 1)
	go func() {
		defer cancel()
		defer close(next)
		f, err := shimproto.ReadFrame(r, buf)
		if err != nil {
			return
		}
		var m admitpb.ClientMsg
		if proto.Unmarshal(f, &m) == nil && m.GetFinished() != nil {
			next <- m.GetFinished()
		}
	}()
	adm := a.admit(ctx, cred, msg.GetAdmit(), send)
	if adm == nil {
		return
	}
	if adm.exec != nil {
		c.Close() // the shim closes its end when it execs git
		a.runExec(adm)
		return
	}
	fin := a.holdSupervised(adm, next) // ends also when the peer exits (execmode.go)
	if fin == nil && a.stopping.Err() != nil {
		// Shutdown closed the connection, not the shim: git still runs.
		a.abandon(adm)
		return
	}
	a.finish(adm, fin)
}

// admissionService is the gRPC face of admission.
type admissionService struct {
	admitpb.UnimplementedAdmissionServer
	a *Agent
}

func (s admissionService) Admit(stream admitpb.Admission_AdmitServer) error {
	cred, ok := credFromContext(stream.Context())
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer credentials: connect over the Unix socket")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	requestArrived(stream.Context())
	if first.GetAdmit() == nil {
		return status.Error(codes.InvalidArgument, "first message must be an admit request")
	}
	adm := s.a.admit(stream.Context(), cred, first.GetAdmit(), stream.Send)
	if adm == nil {
		return nil
	}
	if adm.exec != nil {
		s.a.runExec(adm)
		return nil
	}
	next := make(chan *admitpb.Finished, 1)
	go func() {
		defer close(next)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if f := m.GetFinished(); f != nil {
				next <- f
				return
			}
		}
	}()
	s.a.finish(adm, s.a.holdSupervised(adm, next)) // ends also when the peer exits
	return nil
}

// peekedConn is a connection whose first byte was read by dispatch.
type peekedConn struct {
	*net.UnixConn
	first byte
	read  bool
	cred  PeerCred
	// onClose uncounts the connection; nil for none.
	onClose func()
	// a counts a handshake that timed out; nil in tests.
	a *Agent
	// handshook is set once the gRPC server cleared the handshake deadline.
	handshook atomic.Bool
	// called is set when the first gRPC call opens (tapCall); closed when
	// the connection is closed.
	called, closed atomic.Bool

	closeOnce sync.Once
}

// Close closes the connection and the peer's pidfd.
func (c *peekedConn) Close() error {
	c.closed.Store(true)
	err := c.UnixConn.Close()
	c.closeOnce.Do(func() {
		c.cred.close()
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if !c.read && len(p) > 0 {
		c.read = true
		p[0] = c.first
		return 1, nil
	}
	n, err := c.UnixConn.Read(p)
	if err != nil && c.a != nil && !c.handshook.Load() && !c.called.Load() && isTimeout(err) {
		c.a.conns.count(RejectHandshake)
	}
	return n, err
}

// SetDeadline is how the gRPC server bounds the HTTP/2 handshake
// (grpc.ConnectionTimeout): it clears the deadline once the handshake is
// done.
func (c *peekedConn) SetDeadline(t time.Time) error {
	if t.IsZero() {
		c.handshook.Store(true)
	}
	return c.UnixConn.SetDeadline(t)
}

// chanListener hands connections chosen by dispatch to the gRPC server.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// peerCredentials makes the peer's SO_PEERCRED visible to gRPC handlers.
type peerCredentials struct{}

type credInfo struct {
	credentials.CommonAuthInfo
	cred PeerCred
	conn *peekedConn
}

func (credInfo) AuthType() string { return "peercred" }

func (peerCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pc, ok := c.(*peekedConn)
	if !ok {
		return nil, nil, errors.New("connection without peer credentials")
	}
	return c, credInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, cred: pc.cred, conn: pc}, nil
}

func (peerCredentials) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, nil, errors.New("peerCredentials is server-side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (peerCredentials) Clone() credentials.TransportCredentials { return peerCredentials{} }

func (peerCredentials) OverrideServerName(string) error { return nil }

func credFromContext(ctx context.Context) (PeerCred, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return PeerCred{}, false
	}
	ci, ok := p.AuthInfo.(credInfo)
	return ci.cred, ok
}

// gRPC connections are bounded like the shim framing's hello:
//   - the HTTP/2 handshake must be done within helloTimeout of dispatch
//     handing the connection over (grpc.ConnectionTimeout);
//   - the first call must open within helloTimeout of the hand-over
//     (dispatch's timer);
//   - each call must send its request within helloTimeout of opening its
//     stream (tapCall arms a timer that cancels the call and closes the
//     connection, disarmed by requestArrived);
//   - a connection with no call in progress (no queued or admitted Admit,
//     no admin call) is closed after grpcMaxIdle
//     (keepalive.MaxConnectionIdle: a GOAWAY, and the close at most 5 s
//     later even if the client ignores it);
//   - each call counts like a connection against max_connections and
//     max_connections_per_uid (tapCall), so multiplexing calls on one
//     connection gets around no cap.
//
// A queued or admitted Admit keeps its connection as long as it needs
// (bounded by max_queue_wait and by those caps). The CLI's client
// reconnects by itself after an idle close.
const grpcMaxIdle = 10 * time.Second

func (a *Agent) grpcServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(peerCredentials{}),
		grpc.MaxRecvMsgSize(shimproto.MaxFrame),
		grpc.MaxSendMsgSize(4 << 20),
		grpc.ConnectionTimeout(helloTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: grpcMaxIdle}),
		grpc.InTapHandle(a.tapCall),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			// A unary handler runs once its request has arrived.
			requestArrived(ctx)
			return h(ctx, req)
		}),
	}
}

type requestTimerKey struct{}

// errNoRequest cancels a call whose request did not arrive in time.
var errNoRequest = errors.New("no request within the hello timeout")

// tapCall runs when a gRPC call opens, before its handler: it counts the
// call against the caller's caps (refusing it with RESOURCE_EXHAUSTED and
// the shim's line when over them) and gives it helloTimeout to send its
// request: then the call is cancelled (a blocked Recv returns) and its
// connection closed, unless requestArrived was called first. Both end with
// the call.
func (a *Agent) tapCall(ctx context.Context, _ *tap.Info) (context.Context, error) {
	release := func() {}
	var pc *peekedConn
	if p, ok := peer.FromContext(ctx); ok {
		if ci, ok := p.AuthInfo.(credInfo); ok && ci.conn != nil {
			pc = ci.conn
			pc.called.Store(true)
		}
	}
	if cred, ok := credFromContext(ctx); ok {
		done, reason := a.tryConn(cred)
		if done == nil {
			_, msg := a.refusal(cred, reason)
			return nil, status.Error(codes.ResourceExhausted, msg)
		}
		release = done
	}
	ctx, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(helloTimeout, func() {
		a.conns.count(RejectHandshake)
		cancel(errNoRequest)
		// Every gRPC client sends a call's request with its headers:
		// a connection that does not is closed, not left to idle.
		if pc != nil {
			pc.Close()
		}
	})
	// The call's context ends with the call: release its place and the
	// timer then.
	context.AfterFunc(ctx, func() { t.Stop(); release(); cancel(nil) })
	return context.WithValue(ctx, requestTimerKey{}, t), nil
}

// requestArrived disarms the timer tapCall set for this call.
func requestArrived(ctx context.Context) {
	if t, ok := ctx.Value(requestTimerKey{}).(*time.Timer); ok {
		t.Stop()
	}
}

// isTimeout reports a read that hit its deadline.
func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}
