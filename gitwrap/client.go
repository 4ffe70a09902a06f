package gitwrap

import (
	"math/rand/v2"
	"net/netip"
	"strings"
)

// CorrelationEnv is the variable that carries the correlation id.
const CorrelationEnv = "CORRELATION_ID"

// RemoteIP returns the client's address as the server told git, or "" (see
// the package doc for the order of variables).
//
// REMOTE_ADDR comes first: git daemon and CGI servers (git-http-backend,
// Gitea's HTTP) set it for the connection they serve, and nothing passes it
// on by accident, while SSH_CONNECTION is inherited by everything started
// from an ssh login — such as a git daemon an operator started by hand,
// whose clients would otherwise all share the operator's address.
func RemoteIP(getenv Env) string {
	if ip := ParseIP(getenv("REMOTE_ADDR")); ip != "" {
		return ip
	}
	for _, k := range [...]string{"SSH_CONNECTION", "SSH_CLIENT"} {
		if v := getenv(k); v != "" {
			first, _, _ := strings.Cut(strings.TrimLeft(v, " "), " ")
			if ip := ParseIP(first); ip != "" {
				return ip
			}
		}
	}
	return ""
}

// ParseIP normalises an address as servers write it: "192.0.2.1",
// "192.0.2.1:4711", "[2001:db8::1]", "[2001:db8::1]:22", "fe80::1%eth0",
// "::ffff:192.0.2.1" (unmapped). Anything else gives "".
func ParseIP(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return ""
		}
		s = s[1:end]
	} else if strings.Count(s, ":") == 1 { // IPv4 with a port
		s, _, _ = strings.Cut(s, ":")
	}
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i]
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return ""
	}
	return a.Unmap().String()
}

// User returns the authenticated user as the server told git, or "" (see
// the package doc for the order of variables).
func User(getenv Env) string {
	for _, k := range [...]string{"GL_USERNAME", "GITEA_PUSHER_NAME", "REMOTE_USER"} {
		if v := getenv(k); v != "" {
			return v
		}
	}
	if getenv("SSH_CONNECTION") != "" {
		if v := getenv("USER"); v != "" {
			return v
		}
		return getenv("LOGNAME")
	}
	return ""
}

// CorrelationID returns CORRELATION_ID, or a new id and generated=true; the
// caller then adds CORRELATION_ID=id to git's environment.
func CorrelationID(getenv Env) (id string, generated bool) {
	if v := getenv(CorrelationEnv); v != "" {
		return v, false
	}
	return NewCorrelationID(), true
}

// NewCorrelationID returns 16 random lowercase hex characters.
func NewCorrelationID() string {
	const hex = "0123456789abcdef"
	v := rand.Uint64()
	var b [16]byte
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = hex[v&15]
		v >>= 4
	}
	return string(b[:])
}
