package policy

import (
	"strconv"
	"strings"
)

// Error is one problem in a policy, with enough context for an operator to
// find and fix it.
type Error struct {
	// File is the policy's file name (Config.Source).
	File string
	// Line is the 1-based line of the offending key or table; 0 means
	// unknown (for example a value that was never written and defaulted).
	Line int
	// Key names the offending key: "agent.fail_mode",
	// `limit "upload-pack".max_queue_wait` for a rule with a usable name,
	// or "limit[1].max_queue_wait" (rules count from 0 in file order) when
	// the name is missing or not unique. "" for syntax errors.
	Key string
	// Value is the offending value as written in the file (with quotes for
	// strings), or as Go prints it when it was not written; "" when there is
	// no single value (unknown keys, missing required keys, syntax errors).
	Value string
	// Problem says what is wrong.
	Problem string
	// Fix says what to do about it.
	Fix string

	// path is the internal key path ("limit[1].max_queue_wait") until
	// finish renders Key from it.
	path string
}

// Error renders the problem on one line:
//
//	sluice.toml:12: limit "upload-pack": max_queue_wait = "-1s": must be > 0; set a Go duration such as "1s"
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		section, leaf := splitKey(e.Key)
		if section != "" {
			b.WriteString(section)
			b.WriteString(": ")
		}
		b.WriteString(leaf)
		if e.Value != "" {
			b.WriteString(" = ")
			b.WriteString(oneLine(e.Value))
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	if e.Fix != "" {
		b.WriteString("; ")
		b.WriteString(e.Fix)
	}
	return b.String()
}

// splitKey splits a key at its last '.' outside quotes: the section and the
// leaf. A key without a dot is all leaf.
func splitKey(k string) (section, leaf string) {
	inQuote := false
	last := -1
	for i := 0; i < len(k); i++ {
		switch k[i] {
		case '"':
			inQuote = !inQuote
		case '\\':
			if inQuote {
				i++
			}
		case '.':
			if !inQuote {
				last = i
			}
		}
	}
	if last < 0 {
		return "", k
	}
	return k[:last], k[last+1:]
}

// oneLine keeps a multi-line value on one line and bounds its length.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// Errors is every problem found in a policy, in file order where known.
type Errors []*Error

// Error joins the problems, one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}
