package wire

import (
	"os"
	"strconv"
	"syscall"
)

// Socket locations.
const (
	// RootSocket is the agent's socket when it runs as root.
	RootSocket = "/run/sluice/sluice.sock"
	// SocketEnv overrides the socket path for agent, shim and CLI alike.
	SocketEnv = "SLUICE_SOCKET"
)

// SocketPath resolves the agent's socket path, the same way for the agent,
// the shim and the CLI:
//
//  1. $SLUICE_SOCKET if set;
//  2. configured if non-empty (the agent's [agent] socket);
//  3. as root, RootSocket;
//  4. $XDG_RUNTIME_DIR/sluice/sluice.sock if it exists;
//  5. RootSocket if it exists (a non-root shim, e.g. git run for an ssh user,
//     must find the root agent);
//  6. $XDG_RUNTIME_DIR/sluice/sluice.sock, or /tmp/sluice-UID/sluice.sock
//     without XDG_RUNTIME_DIR.
func SocketPath(configured string) string {
	return socketPath(configured, os.Geteuid(), os.Getenv, exists)
}

func socketPath(configured string, euid int, getenv func(string) string, exists func(string) bool) string {
	if s := getenv(SocketEnv); s != "" {
		return s
	}
	if configured != "" {
		return configured
	}
	if euid == 0 {
		return RootSocket
	}
	user := ""
	if xdg := getenv("XDG_RUNTIME_DIR"); xdg != "" {
		user = xdg + "/sluice/sluice.sock"
		if exists(user) {
			return user
		}
	}
	if exists(RootSocket) {
		return RootSocket
	}
	if user != "" {
		return user
	}
	return "/tmp/sluice-" + strconv.Itoa(euid) + "/sluice.sock"
}

func exists(path string) bool {
	var st syscall.Stat_t
	return syscall.Stat(path, &st) == nil
}
