package main

// client.go connects the operator commands (status, top, reload, demo) to
// the agent's admin API over its Unix socket, and turns connection and
// permission failures into messages that name the socket and the fix.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
)

// rpcTimeout bounds every admin call: the agent answers from memory, so a
// slow answer means it is stuck or unreachable — but an operator runs
// status in the middle of a storm, when the agent may wait a few seconds
// for a CPU (2 s timed out under load), so the bound is 5 s.
const rpcTimeout = 5 * time.Second

// adminClient is a connection to sluiced's admin API.
type adminClient struct {
	socket string
	cc     *grpc.ClientConn
	admin  admitpb.AdminClient

	mu      sync.Mutex // guards the field below
	dialErr error      // last error connecting to the socket
}

// resolveSocket returns the socket to use: the --socket flag, else
// shimproto.SocketPath (SLUICE_SOCKET, then the default for this user).
func resolveSocket(flagValue string) string {
	s := flagValue
	if s == "" {
		s = shimproto.SocketPath("")
	}
	if abs, err := filepath.Abs(s); err == nil {
		s = abs
	}
	return s
}

// dialAdmin prepares a client for the agent at socket. It does not
// connect until the first call.
func dialAdmin(socket string) (*adminClient, error) {
	c := &adminClient{socket: socket}
	cc, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(c.dial),
	)
	if err != nil {
		return nil, fmt.Errorf("sluice: socket %s: %v", socket, err)
	}
	c.cc = cc
	c.admin = admitpb.NewAdminClient(cc)
	return c, nil
}

// dial connects to the socket and remembers why it could not.
func (c *adminClient) dial(ctx context.Context, _ string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	c.mu.Lock()
	c.dialErr = err
	c.mu.Unlock()
	return conn, err
}

func (c *adminClient) Close() error { return c.cc.Close() }

// Status fetches the agent's status.
func (c *adminClient) Status(ctx context.Context) (*admitpb.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	st, err := c.admin.Status(ctx, &admitpb.StatusRequest{})
	if err != nil {
		return nil, c.explain(err)
	}
	return st, nil
}

// Reload asks the agent to re-read its policy file.
func (c *adminClient) Reload(ctx context.Context) (*admitpb.ReloadResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := c.admin.Reload(ctx, &admitpb.ReloadRequest{})
	if err != nil {
		return nil, c.explain(err)
	}
	return resp, nil
}

// explain turns an RPC error into one line for an operator.
func (c *adminClient) explain(err error) error {
	c.mu.Lock()
	dialErr := c.dialErr
	c.mu.Unlock()
	st := status.Convert(err)
	switch st.Code() {
	case codes.PermissionDenied, codes.Unauthenticated:
		// The agent's message already says what to do.
		return errors.New(st.Message())
	case codes.Unavailable, codes.DeadlineExceeded:
		if dialErr != nil {
			return unreachable(c.socket, dialErr)
		}
		if st.Code() == codes.DeadlineExceeded {
			return fmt.Errorf("sluice: sluiced at %s did not answer within %v; is it overloaded or stuck? (systemctl status sluiced, journalctl -u sluiced)", c.socket, rpcTimeout)
		}
		return fmt.Errorf("sluice: cannot reach sluiced at %s: %s; is it running? (systemctl status sluiced), or set %s", c.socket, st.Message(), shimproto.SocketEnv)
	case codes.Unimplemented:
		return fmt.Errorf("sluice: sluiced at %s does not support this command (%s); upgrade sluiced to the version of this CLI", c.socket, st.Message())
	}
	return fmt.Errorf("sluice: sluiced at %s: %s: %s", c.socket, st.Code(), st.Message())
}

// unreachable explains a failure to connect to the socket.
func unreachable(socket string, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if errno == syscall.EACCES || errno == syscall.EPERM {
			return fmt.Errorf("sluice: cannot reach sluiced at %s: %v; run as root or as a member of the socket's group ([agent] socket_group)", socket, errno)
		}
		err = errno // "connection refused", without the dial prefix
	}
	return fmt.Errorf("sluice: cannot reach sluiced at %s: %v; is it running? (systemctl status sluiced), or set %s", socket, err, shimproto.SocketEnv)
}
