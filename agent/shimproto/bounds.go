package shimproto

import "unicode/utf8"

// Bounds on what an AdmitRequest may carry. The agent rejects a request
// beyond them as invalid; the shim clamps what it read from argv and the
// environment to them first (Clamp), so an odd environment (a 1 MiB
// CORRELATION_ID, a control character in REMOTE_USER) never turns into a
// refused git command.
const (
	// MaxRepoBytes bounds the repository path: Linux's PATH_MAX.
	MaxRepoBytes = 4096
	// MaxNameBytes bounds the command and subcommand names.
	MaxNameBytes = 64
	// MaxUserBytes bounds the user name.
	MaxUserBytes = 256
	// MaxCorrelationIDBytes bounds the correlation id.
	MaxCorrelationIDBytes = 128
)

// Clamp makes r fit the bounds above without refusing anything:
//   - a command name longer than MaxNameBytes, not UTF-8, or holding '/' or NUL, is
//     replaced by "git" (it is only a label);
//   - a repository path longer than MaxRepoBytes, not absolute, or holding
//     NUL is dropped (the request is then keyed as an unknown repository);
//   - the user loses its NUL bytes, invalid UTF-8 becomes U+FFFD (as the
//     encoder would do), and it is cut to MaxUserBytes at a character
//     boundary;
//   - the correlation id keeps its printable characters (others become
//     '_') and is cut to MaxCorrelationIDBytes.
//
// The subcommand is left alone: the shim sends only subcommands the policy
// matches, and those are valid names.
func (r *AdmitRequest) Clamp() {
	if len(r.Command) > MaxNameBytes || hasByte(r.Command, '/') || hasByte(r.Command, 0) || !utf8.ValidString(r.Command) {
		r.Command = "git"
	}
	if len(r.Repo) > MaxRepoBytes || (len(r.Repo) > 0 && r.Repo[0] != '/') || hasByte(string(r.Repo), 0) {
		r.Repo = nil
	}
	if hasByte(r.User, 0) {
		b := make([]byte, 0, len(r.User))
		for i := 0; i < len(r.User); i++ {
			if r.User[i] != 0 {
				b = append(b, r.User[i])
			}
		}
		r.User = string(b)
	}
	if !utf8.ValidString(r.User) {
		r.User = toValidUTF8(r.User) // as it will be encoded: cut after, not before
	}
	r.User = cutUTF8(r.User, MaxUserBytes)
	r.CorrelationID = cutUTF8(printableOnly(r.CorrelationID), MaxCorrelationIDBytes)
}

func hasByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

// cutUTF8 cuts s to at most n bytes without splitting a character.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// printableOnly replaces invalid UTF-8 and control characters with '_'.
func printableOnly(s string) string {
	ok := true
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == utf8.RuneError {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	b := make([]byte, 0, len(s))
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == utf8.RuneError {
			b = append(b, '_')
			continue
		}
		b = utf8.AppendRune(b, c)
	}
	return string(b)
}
