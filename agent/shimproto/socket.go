package shimproto

import "os"

// Socket locations.
const (
	// RootSocket is the agent's socket: every shim and the CLI use it,
	// whatever user runs them, unless SocketEnv says otherwise.
	RootSocket = "/run/sluice/sluice.sock"
	// SocketEnv overrides the socket path for agent, shim and CLI alike.
	SocketEnv = "SLUICE_SOCKET"
)

// SocketPath resolves the agent's socket path, the same way for the agent,
// the shim and the CLI:
//
//  1. $SLUICE_SOCKET if set;
//  2. configured if non-empty (the agent's [agent] socket);
//  3. RootSocket.
//
// There is deliberately no per-user fallback ($XDG_RUNTIME_DIR, /tmp): the
// shim reads shim.conf (which names the git binary it executes) next to the
// socket, so the place must be one no other unprivileged user can create or
// write. /run/sluice can only be made by root. An agent run by a non-root
// user needs SLUICE_SOCKET or [agent] socket, and its shims need the same
// SLUICE_SOCKET.
func SocketPath(configured string) string {
	return socketPath(configured, os.Getenv)
}

func socketPath(configured string, getenv func(string) string) string {
	if s := getenv(SocketEnv); s != "" {
		return s
	}
	if configured != "" {
		return configured
	}
	return RootSocket
}
