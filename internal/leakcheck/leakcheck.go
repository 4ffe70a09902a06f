// Package leakcheck owns the goroutine and file-descriptor leak check that
// the agent packages run in TestMain: goroutines and open files (from
// /proc/self/fd) are noted before the tests, and those the tests started
// or opened and that are still there once things had a moment to settle
// fail the package.
//
//	func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
package leakcheck

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Settle is how long the check waits for goroutines to exit and files to
// be closed after the tests before it calls them leaked.
var Settle = 5 * time.Second

// Runner is what Main runs: a *testing.M.
type Runner interface{ Run() int }

// Main runs the tests and the leak check, writes what leaked to stderr,
// and returns the exit code: m.Run's, or 1 when tests passed but
// something leaked. Under -fuzz the check is skipped (the fuzzing engine
// keeps its own workers and pipes).
func Main(m Runner) int {
	before := Take()
	code := m.Run()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return code
	}
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return code
	}
	if err := before.Check(Settle); err != nil {
		fmt.Fprintf(os.Stderr, "leakcheck: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Snapshot is the process's goroutines and open files at one moment.
type Snapshot struct {
	goroutines map[string]bool // goroutine ids
	fds        map[string]string
}

// Take notes the goroutines and open files now.
func Take() Snapshot {
	s := Snapshot{goroutines: map[string]bool{}, fds: openFDs()}
	for _, g := range goroutines() {
		s.goroutines[g.id] = true
	}
	return s
}

// Check waits up to settle for the goroutines started and the files
// opened since s to be gone, and describes those that remain.
func (s Snapshot) Check(settle time.Duration) error {
	deadline := time.Now().Add(settle)
	for {
		gs, fds := s.newGoroutines(), s.newFDs()
		if len(gs) == 0 && len(fds) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			if len(gs) > 0 {
				fmt.Fprintf(&b, "%d goroutines started by the tests still run %v after them:\n", len(gs), settle)
				for _, g := range gs {
					b.WriteString(g.stack)
					b.WriteString("\n\n")
				}
			}
			if len(fds) > 0 {
				fmt.Fprintf(&b, "%d files opened by the tests are still open %v after them: %s\n", len(fds), settle, strings.Join(fds, ", "))
			}
			return fmt.Errorf("%s", strings.TrimSpace(b.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s Snapshot) newGoroutines() []goroutine {
	var out []goroutine
	for _, g := range goroutines() {
		if !s.goroutines[g.id] && !ignored(g.stack) {
			out = append(out, g)
		}
	}
	return out
}

func (s Snapshot) newFDs() []string {
	var out []string
	for fd, target := range openFDs() {
		if s.fds[fd] == target || runtimeFile(target) {
			continue
		}
		out = append(out, fd+" → "+target)
	}
	sort.Strings(out)
	return out
}

// ignored: goroutines the runtime and the standard library start once and
// keep, whoever asked first.
func ignored(stack string) bool {
	for _, s := range []string{
		"os/signal.loop",          // signal.Notify's dispatcher
		"os/signal.signal_recv",   // the same
		"testing.(*M).startAlarm", // -timeout's alarm
		"runtime.ensureSigM",      // signal masking for signal.Notify
	} {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

// runtimeFile: the network poller's epoll and wake-up descriptors, made
// on the first use of the poller and kept.
func runtimeFile(target string) bool {
	return target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]"
}

type goroutine struct{ id, stack string }

// goroutines returns every goroutine but the caller's.
func goroutines() []goroutine {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []goroutine
	for i, block := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 { // the caller's own goroutine comes first
			continue
		}
		head, _, _ := bytes.Cut(block, []byte("\n"))
		f := strings.Fields(string(head)) // goroutine 12 [chan receive]:
		if len(f) < 2 || f[0] != "goroutine" {
			continue
		}
		out = append(out, goroutine{id: f[1], stack: string(block)})
	}
	return out
}

// openFDs returns fd → what it refers to, from /proc/self/fd (none where
// there is no /proc).
func openFDs() map[string]string {
	out := map[string]string{}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return out
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil && err != io.EOF {
		return out
	}
	self := fmt.Sprint(d.Fd())
	for _, n := range names {
		if n == self {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + n)
		if err != nil {
			continue // closed meanwhile
		}
		out[n] = target
	}
	return out
}
