package agent

// sanitize.go: caller-supplied text on its way to a log line or a message.
//
// The correlation id, the user, the command name, the remote address and
// the repository path come from the caller (the shim clamps them, but any
// local process may speak the protocol). They end up in the agent's log
// (read on an operator's terminal, in journald, by log shippers that split
// on newlines) and in the one-line messages written to a git client's
// stderr. So they are cleaned once, where the request enters the agent
// (admit), before anything stores or prints them: control characters (C0
// including ESC, CR and LF; DEL; C1), Unicode bidi and other invisible
// controls that reorder or hide text (U+061C, U+200B–U+200F, U+2028–U+202E,
// U+2060–U+206F, U+FEFF) and invalid UTF-8 are written as Go escapes
// (\x1b, \n, \u202e, \xff), so an operator sees what was sent but no
// terminal acts on it; and each field is cut to a bound. The raw request
// still derives the limiter key (so two callers never share a key by
// accident of escaping); only the copies kept for display are cleaned.

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Display bounds of caller-supplied fields (bytes, after escaping).
const (
	maxShownCorrID   = 2 * maxCorrIDBytes
	maxShownUser     = maxUserBytes
	maxShownCommand  = maxNameBytes
	maxShownRemoteIP = 64
	maxShownRepo     = maxRepoBytes
)

// shownControl reports whether r must be escaped before it is shown.
func shownControl(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x061c, r >= 0x200b && r <= 0x200f, r >= 0x2028 && r <= 0x202e,
		r >= 0x2060 && r <= 0x206f, r == 0xfeff:
		return true
	}
	return false
}

// cleanText returns s with every control character, bidi control and
// invalid byte escaped, cut to at most max bytes at a character boundary
// ("..." marks a cut). Text that needs neither is returned as is.
func cleanText(s string, max int) string {
	clean := len(s) <= max
	for _, r := range s {
		if !clean {
			break
		}
		if r == utf8.RuneError || shownControl(r) {
			clean = false
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && n <= 1:
			piece = `\x` + hex2(s[i])
		case r == '\n':
			piece = `\n`
		case r == '\r':
			piece = `\r`
		case r == '\t':
			piece = `\t`
		case r < 0x80 && shownControl(r):
			piece = `\x` + hex2(byte(r))
		case shownControl(r):
			piece = `\u` + strconv.FormatInt(int64(r)+0x10000, 16)[1:]
		default:
			piece = s[i : i+n]
		}
		b.WriteString(piece)
		i += n
		if b.Len() > max {
			break
		}
	}
	out := b.String()
	if len(out) <= max {
		return out
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(out[cut]) {
		cut--
	}
	return out[:cut] + "..."
}

func hex2(c byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[c>>4], digits[c&15]})
}

// cleanLease cleans the caller-supplied fields of l for display (see the
// top of this file).
func cleanLease(l *Lease) {
	l.CorrelationID = cleanText(l.CorrelationID, maxShownCorrID)
	l.User = cleanText(l.User, maxShownUser)
	l.Command = cleanText(l.Command, maxShownCommand)
	l.RemoteIP = cleanText(l.RemoteIP, maxShownRemoteIP)
	if r := string(l.Repo); cleanText(r, maxShownRepo) != r {
		l.Repo = []byte(cleanText(r, maxShownRepo))
	}
}

// sanitize cleans a state record's strings as cleanLease does: the file
// is the agent's own, but it is read back by a new agent.
func (r *leaseRecord) sanitize() {
	l := Lease{CorrelationID: r.CorrelationID, User: r.User, Command: r.Command, RemoteIP: r.RemoteIP, Repo: r.Repo}
	cleanLease(&l)
	r.CorrelationID, r.User, r.Command, r.RemoteIP, r.Repo = l.CorrelationID, l.User, l.Command, l.RemoteIP, l.Repo
}
