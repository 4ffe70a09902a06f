package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/wire"
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

	gs := grpc.NewServer(
		grpc.Creds(peerCredentials{}),
		grpc.MaxRecvMsgSize(wire.MaxFrame),
		grpc.MaxSendMsgSize(4<<20),
	)
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
			done := a.tryConn()
			if done == nil {
				a.refuseConn(c)
				continue
			}
			cred, err := peerCred(c)
			if err != nil {
				a.log.Warn("reading peer credentials", zap.Error(err))
				c.Close()
				done()
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
	// Shutdown: refuse and fail over waiters first, so they get a clean
	// answer rather than a broken connection.
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
		cred.close()
		c.Close()
		return
	}
	switch first[0] {
	case 'P': // "PRI * HTTP/2.0": gRPC
		_ = c.SetReadDeadline(time.Time{})
		pc := &peekedConn{UnixConn: c, first: first[0], cred: cred, onClose: done}
		handed = true
		if !gln.deliver(pc) {
			pc.Close()
		}
	case wire.Magic[0]:
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
	magic := make([]byte, len(wire.Magic)-1)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != wire.Magic[1:] {
		a.log.Warn("bad shim handshake", zap.Int32("pid", cred.PID), zap.Uint32("uid", cred.UID))
		return
	}
	var buf []byte
	frame, err := wire.ReadFrame(r, buf)
	if err != nil {
		a.log.Warn("reading admission request", zap.Int32("pid", cred.PID), zap.Error(err))
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
		_, err = c.Write(wire.AppendFrame(nil, b))
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
		f, err := wire.ReadFrame(r, buf)
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
	fin := <-next
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
	var fin *admitpb.Finished
	for {
		m, err := stream.Recv()
		if err != nil {
			break
		}
		if f := m.GetFinished(); f != nil {
			fin = f
			break
		}
	}
	s.a.finish(adm, fin)
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

	closeOnce sync.Once
}

// Close closes the connection and the peer's pidfd.
func (c *peekedConn) Close() error {
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
	return c.UnixConn.Read(p)
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
}

func (credInfo) AuthType() string { return "peercred" }

func (peerCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pc, ok := c.(*peekedConn)
	if !ok {
		return nil, nil, errors.New("connection without peer credentials")
	}
	return c, credInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, cred: pc.cred}, nil
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
