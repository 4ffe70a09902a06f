package shimproto

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ShimConfig is what the shim needs from the agent's configuration. The agent
// writes it to shim.conf next to the socket (WriteShimConfig); the shim reads
// it on every run (ReadShimConfig), one open and one read.
//
// File format: one `key=value` per line, `#` starts a comment line, unknown
// keys are ignored (newer agents may add keys):
//
//	version=1
//	fail_mode=open|closed
//	git_bin=/usr/bin/git         (empty = search PATH, skipping the shim)
//	match=upload-pack,pack-objects,receive-pack,upload-archive
//	admit_timeout_ms=62000
//	queue_feedback_after_ms=2000 (0 = never)
//	restart_grace_ms=5000        (0 = apply fail_mode at once)
type ShimConfig struct {
	// FailClosed makes the shim refuse to run git (exit 75) when the agent
	// cannot be reached or does not answer in time. False (the default)
	// runs git anyway without a lease and logs a warning.
	FailClosed bool
	// GitBin is the real git binary. Empty means: SLUICE_REAL_GIT, else the
	// first "git" on PATH that is not the shim, else /usr/bin/git.
	GitBin string
	// Match lists the git subcommands that need admission. Nil or empty
	// means none: every command goes straight to git.
	Match []string
	// AdmitTimeout is the longest the shim waits for Admitted or Rejected
	// (queueing included) before applying the fail mode. Zero or negative
	// means DefaultAdmitTimeout.
	AdmitTimeout time.Duration
	// QueueFeedbackAfter is how long the shim waits in a queue before it
	// tells the git client on stderr that it is waiting. Zero or negative
	// means never (DefaultShimConfig uses DefaultQueueFeedbackAfter).
	QueueFeedbackAfter time.Duration
	// RestartGrace is how long the shim keeps reconnecting to an agent
	// that is restarting before it applies the fail mode (0: never).
	RestartGrace time.Duration
	// PackCache makes the hook-mode shim ask the agent's pack cache before
	// running pack-objects --stdout ([pack_cache] enabled; packcache.go).
	PackCache bool
}

// DefaultRestartGrace is the restart grace used when shim.conf does not
// say ([agent] restart_grace's default).
const DefaultRestartGrace = 5 * time.Second

// DefaultQueueFeedbackAfter is the queue feedback threshold used when
// shim.conf does not say ([agent] queue_feedback_after's default).
const DefaultQueueFeedbackAfter = 2 * time.Second

// DefaultAdmitTimeout is the admission wait used when none is configured: a
// little over the longest default max_queue_wait, so the agent's own
// rejection normally arrives first.
const DefaultAdmitTimeout = 62 * time.Second

// DefaultMatch is the subcommands admitted when shim.conf does not say.
var defaultMatch = [...]string{"upload-pack", "pack-objects", "receive-pack", "upload-archive"}

// maxConfigSize bounds shim.conf; the agent writes a few hundred bytes.
const maxConfigSize = 16 << 10

// DefaultShimConfig returns the configuration the shim uses without a
// shim.conf: fail open, git from PATH, match the four expensive subcommands,
// DefaultAdmitTimeout.
func DefaultShimConfig() ShimConfig {
	return ShimConfig{
		Match:              append([]string(nil), defaultMatch[:]...),
		AdmitTimeout:       DefaultAdmitTimeout,
		QueueFeedbackAfter: DefaultQueueFeedbackAfter,
		RestartGrace:       DefaultRestartGrace,
	}
}

// Matches reports whether subcommand needs admission.
func (c *ShimConfig) Matches(subcommand string) bool {
	if subcommand == "" {
		return false
	}
	for _, m := range c.Match {
		if m == subcommand {
			return true
		}
	}
	return false
}

// ShimConfigPath returns the path of shim.conf for the given socket: the
// file sits next to the socket.
func ShimConfigPath(socket string) string {
	return filepath.Join(filepath.Dir(socket), "shim.conf")
}

// FormatShimConfig returns the file contents WriteShimConfig writes.
func FormatShimConfig(c ShimConfig) []byte {
	b := make([]byte, 0, 256)
	b = append(b, "# Written by sluiced for sluice-shim; rewritten on every start and reload.\n"...)
	b = append(b, "version=1\n"...)
	if c.FailClosed {
		b = append(b, "fail_mode=closed\n"...)
	} else {
		b = append(b, "fail_mode=open\n"...)
	}
	b = append(b, "git_bin="...)
	b = append(b, c.GitBin...)
	b = append(b, "\nmatch="...)
	b = append(b, strings.Join(c.Match, ",")...)
	t := c.AdmitTimeout
	if t <= 0 {
		t = DefaultAdmitTimeout
	}
	b = append(b, "\nadmit_timeout_ms="...)
	b = strconv.AppendInt(b, t.Milliseconds(), 10)
	b = append(b, "\nqueue_feedback_after_ms="...)
	b = strconv.AppendInt(b, max(c.QueueFeedbackAfter, 0).Milliseconds(), 10)
	b = append(b, "\nrestart_grace_ms="...)
	b = strconv.AppendInt(b, max(c.RestartGrace, 0).Milliseconds(), 10)
	if c.PackCache {
		b = append(b, "\npack_cache=1"...)
	}
	return append(b, '\n')
}

// WriteShimConfig writes c to path atomically (temporary file in the same
// directory, fsync, rename) with mode 0644, so a shim never reads a torn file,
// and mirrors c.FailClosed in the directory's sticky bit (markFailMode).
func WriteShimConfig(path string, c ShimConfig) error {
	if strings.ContainsAny(c.GitBin, "\n\r") {
		return errors.New("write shim config: git_bin contains a newline")
	}
	for _, m := range c.Match {
		if m == "" || strings.ContainsAny(m, ",\n\r \t") {
			return errors.New("write shim config: bad match entry " + strconv.Quote(m))
		}
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".shim.conf.*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(FormatShimConfig(c)); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return markFailMode(filepath.Dir(path), c.FailClosed)
}

// markFailMode mirrors fail_mode in the sticky bit of dir (set: closed), so
// a shim that may not read shim.conf (its user is not in the socket group)
// still applies the configured fail mode: anyone can stat the directory.
// The bit means nothing else on a directory nobody but its owner can write.
// A directory the agent does not own is left alone (EPERM): shims that
// cannot read shim.conf there fail open.
func markFailMode(dir string, closed bool) error {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	mode := st.Mode & 0o7777
	want := mode &^ syscall.S_ISVTX
	if closed {
		want |= syscall.S_ISVTX
	}
	if want == mode {
		return nil
	}
	if err := syscall.Chmod(dir, want); err != nil && err != syscall.EPERM {
		return &os.PathError{Op: "mark fail_mode on", Path: dir, Err: err}
	}
	return nil
}

// ReadShimConfig reads shim.conf. A missing file gives DefaultShimConfig()
// and an error wrapping os.ErrNotExist (the shim ignores it). A line it
// cannot parse leaves that key at its default and is reported in the error,
// but the rest of the file still applies. It uses raw syscalls (no os.File,
// no poller) because the shim runs it for every git process.
func ReadShimConfig(path string) (ShimConfig, error) {
	c := DefaultShimConfig()
	data, err := readSmallFile(path)
	if err != nil {
		return c, &os.PathError{Op: "read shim config", Path: path, Err: err}
	}
	if err := parseShimConfig(data, &c); err != nil {
		return c, errors.New(path + ": " + err.Error())
	}
	return c, nil
}

// readSmallFile reads up to maxConfigSize bytes of path.
func readSmallFile(path string) ([]byte, error) {
	b, err := ReadFile(path, maxConfigSize)
	if err == errTooLarge {
		return nil, errors.New("file larger than " + strconv.Itoa(maxConfigSize) + " bytes")
	}
	return b, err
}

var errTooLarge = errors.New("file too large")

// ReadFile reads path with raw syscalls (no os.File, cheap enough for the
// shim's start-up). A file of max bytes or more is an error.
func ReadFile(path string, max int) ([]byte, error) {
	var fd int
	var err error
	for {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	return readFD(fd, max)
}

// parseShimConfig applies the lines of data to c.
func parseShimConfig(data []byte, c *ShimConfig) error {
	var firstErr error
	bad := func(line int, msg string) {
		if firstErr == nil {
			firstErr = errors.New("line " + strconv.Itoa(line) + ": " + msg)
		}
	}
	s := string(data)
	for lineNo := 1; s != ""; lineNo++ {
		line := s
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			bad(lineNo, "want key=value")
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch key {
		case "version":
			if val != "1" {
				bad(lineNo, "unsupported version "+strconv.Quote(val)+" (reading what is understood)")
			}
		case "fail_mode":
			switch val {
			case "open":
				c.FailClosed = false
			case "closed":
				c.FailClosed = true
			default:
				bad(lineNo, "fail_mode must be open or closed")
			}
		case "git_bin":
			c.GitBin = val
		case "match":
			c.Match = c.Match[:0]
			for _, m := range strings.Split(val, ",") {
				if m = strings.TrimSpace(m); m != "" {
					c.Match = append(c.Match, m)
				}
			}
		case "admit_timeout_ms":
			ms, err := strconv.ParseInt(val, 10, 64)
			if err != nil || ms < 0 || ms > int64(24*time.Hour/time.Millisecond) {
				bad(lineNo, "admit_timeout_ms must be milliseconds")
				continue
			}
			if ms == 0 {
				c.AdmitTimeout = DefaultAdmitTimeout
			} else {
				c.AdmitTimeout = time.Duration(ms) * time.Millisecond
			}
		case "restart_grace_ms":
			ms, err := strconv.ParseInt(val, 10, 64)
			if err != nil || ms < 0 || ms > int64(time.Minute/time.Millisecond) {
				bad(lineNo, "restart_grace_ms must be milliseconds, at most 60000")
				continue
			}
			c.RestartGrace = time.Duration(ms) * time.Millisecond
		case "queue_feedback_after_ms":
			ms, err := strconv.ParseInt(val, 10, 64)
			if err != nil || ms < 0 || ms > int64(24*time.Hour/time.Millisecond) {
				bad(lineNo, "queue_feedback_after_ms must be milliseconds")
				continue
			}
			c.QueueFeedbackAfter = time.Duration(ms) * time.Millisecond
		case "pack_cache":
			c.PackCache = val == "1"
		}
	}
	return firstErr
}
