// Package agenttest owns starting and stopping a real sluiced for the
// end-to-end tests, the benchmarks and `sluice demo`: the config file, the
// wait until it is ready, its log (kept, searched and waited on), its
// metrics scraped, and a clean stop with its exit checked.
//
// It does not import the testing package: Start returns errors, and
// StartT adapts it to anything with Helper, Fatalf and Cleanup (a
// *testing.T), so the bench binaries and the CLI can use it too.
package agenttest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Ready says when Start returns.
type Ready int

const (
	// ReadyLine waits for the "sluiced ready" log line; Metrics is taken
	// from the "metrics listening" line before it.
	ReadyLine Ready = iota
	// ReadySocket waits until Socket accepts a connection: for a sluiced
	// run at -log-level warn or error, whose ready lines are not printed.
	// With FindMetrics, it then waits until the process listens on TCP
	// and sets Metrics to that address.
	ReadySocket
)

// Agent is one sluiced. Set the fields, then call Start once.
type Agent struct {
	// Bin is the sluiced binary.
	Bin string
	// Dir receives sluice.toml; Start creates it.
	Dir string
	// Socket is the agent's socket as the config says (needed by
	// ReadySocket; informational otherwise).
	Socket string
	// Args are more sluiced flags after -config (e.g. -log-level error).
	Args []string
	// Wrap runs sluiced under a program that execs it (setpriv, sh -c
	// moving itself into a cgroup); nil runs sluiced directly. Pid is the
	// wrapper's, which becomes sluiced's once it execs.
	Wrap []string
	// Env is sluiced's environment; nil inherits this process's.
	Env []string
	// SysProcAttr is passed to the process (e.g. Setpgid); nil for none.
	SysProcAttr *syscall.SysProcAttr
	// LogFile, when set, receives sluiced's output (stdout and stderr)
	// and the log is read back from it; otherwise it is kept in memory.
	LogFile string
	// Tee, when set, also receives sluiced's output.
	Tee io.Writer
	// OnLine, when set, is called with each line of output as it is read
	// (on the reading goroutine: it must not block).
	OnLine func(line []byte)
	// Ready says when Start returns; FindMetrics goes with ReadySocket.
	Ready       Ready
	FindMetrics bool
	// MetricsURL, when set with ReadySocket, is also waited for: Start
	// returns once a GET of it succeeds, and sets Metrics to its origin.
	MetricsURL string
	// ReadyTimeout bounds Start (0: 20s); StopTimeout is how long Stop
	// waits after SIGTERM before SIGKILL (0: 15s).
	ReadyTimeout, StopTimeout time.Duration

	// Metrics is http://host:port of the metrics listener, set by Start
	// ("" when metrics are off or were not looked for).
	Metrics string

	cmd      *exec.Cmd
	logs     LockedBuffer
	logFile  *os.File
	done     chan struct{} // closed when sluiced has exited
	readDone chan struct{} // closed when its output reached EOF
	waitErr  error
}

// ConfigPath is where Start writes the config.
func (a *Agent) ConfigPath() string { return filepath.Join(a.Dir, "sluice.toml") }

// Start writes config to Dir/sluice.toml, starts sluiced and waits until
// it is ready. On error the process is stopped and the error carries the
// end of its log.
func (a *Agent) Start(config string) error {
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(a.ConfigPath(), []byte(config), 0o644); err != nil {
		return err
	}
	if a.LogFile != "" {
		f, err := os.Create(a.LogFile)
		if err != nil {
			return err
		}
		a.logFile = f
	}
	argv := append(append(append([]string{}, a.Wrap...), a.Bin, "-config", a.ConfigPath()), a.Args...)
	a.cmd = exec.Command(argv[0], argv[1:]...)
	a.cmd.Env = a.Env
	a.cmd.SysProcAttr = a.SysProcAttr
	pr, pw, err := os.Pipe()
	if err != nil {
		a.closeLog()
		return err
	}
	a.cmd.Stdout, a.cmd.Stderr = pw, pw
	if err := a.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		a.closeLog()
		return fmt.Errorf("start %s: %w", a.Bin, err)
	}
	pw.Close()
	a.done, a.readDone = make(chan struct{}), make(chan struct{})
	ready := make(chan string, 1)
	go a.read(pr, ready)
	go func() { a.waitErr = a.cmd.Wait(); close(a.done) }()

	timeout := a.ReadyTimeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	deadline := time.After(timeout)
	fail := func(format string, args ...any) error {
		a.kill()
		return fmt.Errorf(format+"\n%s", append(args, a.tail(4000))...)
	}
	if a.Ready == ReadyLine {
		select {
		case m := <-ready:
			if m != "" {
				a.Metrics = "http://" + m
			}
			return nil
		case <-a.done:
			a.waitRead()
			return fmt.Errorf("sluiced exited before it was ready: %v\n%s", a.waitErr, a.tail(4000))
		case <-deadline:
			return fail("sluiced not ready after %v:", timeout)
		}
	}
	for poll := time.NewTicker(20 * time.Millisecond); ; {
		up, err := a.socketUp()
		if up {
			break
		}
		select {
		case <-a.done:
			poll.Stop()
			a.waitRead()
			return fmt.Errorf("sluiced exited before it was ready: %v\n%s", a.waitErr, a.tail(4000))
		case <-deadline:
			poll.Stop()
			return fail("sluiced not ready after %v (%v):", timeout, err)
		case <-poll.C:
		}
	}
	return nil
}

// socketUp reports whether the socket answers and, as asked, the metrics
// listener too (setting Metrics).
func (a *Agent) socketUp() (bool, error) {
	c, err := net.DialTimeout("unix", a.Socket, 100*time.Millisecond)
	if err != nil {
		return false, err
	}
	c.Close()
	switch {
	case a.MetricsURL != "":
		r, err := http.Get(a.MetricsURL)
		if err != nil {
			return false, err
		}
		r.Body.Close()
		if i := strings.Index(a.MetricsURL[len("http://"):], "/"); i >= 0 {
			a.Metrics = a.MetricsURL[:len("http://")+i]
		} else {
			a.Metrics = a.MetricsURL
		}
	case a.FindMetrics:
		addr, err := listeningTCP(a.cmd.Process.Pid)
		if err != nil {
			return false, err
		}
		a.Metrics = "http://" + addr
	}
	return true, nil
}

// read copies sluiced's output to the log, line by line, and sends the
// metrics address on ready at "sluiced ready".
func (a *Agent) read(r io.ReadCloser, ready chan<- string) {
	defer close(a.readDone)
	defer r.Close()
	defer a.closeLog()
	br := bufio.NewReaderSize(r, 64<<10)
	metrics, sent := "", false
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if a.logFile != nil {
				a.logFile.Write(line)
			} else {
				a.logs.Write(line)
			}
			if a.Tee != nil {
				a.Tee.Write(line)
			}
			if a.OnLine != nil {
				a.OnLine(line)
			}
			if !sent && bytes.Contains(line, []byte(`"msg":"`)) {
				var l struct{ Msg, Addr string }
				if json.Unmarshal(line, &l) == nil {
					switch l.Msg {
					case "metrics listening":
						metrics = l.Addr
					case "sluiced ready":
						ready <- metrics
						sent = true
					}
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func (a *Agent) closeLog() {
	if a.logFile != nil {
		a.logFile.Close()
	}
}

// waitRead waits briefly for the output to reach EOF (a child of sluiced
// could hold the pipe open).
func (a *Agent) waitRead() {
	select {
	case <-a.readDone:
	case <-time.After(2 * time.Second):
	}
}

// kill ends the process at once (start-up failed).
func (a *Agent) kill() {
	a.cmd.Process.Kill()
	<-a.done
	a.waitRead()
}

// Stop sends SIGTERM and waits StopTimeout for sluiced to exit, then
// kills it. It returns an error when sluiced had to be killed or exited
// with an error after the SIGTERM; nil when it had exited before (call
// ExitErr for that exit).
func (a *Agent) Stop() error {
	return a.StopWith(syscall.SIGTERM)
}

// StopWith is Stop with another signal; with SysProcAttr.Setpgid the
// whole process group is signalled.
func (a *Agent) StopWith(sig syscall.Signal) error {
	if a.cmd == nil || a.cmd.Process == nil || a.Exited() {
		return nil
	}
	a.signal(sig)
	grace := a.StopTimeout
	if grace == 0 {
		grace = 15 * time.Second
	}
	select {
	case <-a.done:
	case <-time.After(grace):
		a.signal(syscall.SIGKILL)
		<-a.done
		a.waitRead()
		return fmt.Errorf("sluiced did not stop within %v of %v", grace, sig)
	}
	a.waitRead()
	if a.waitErr != nil && sig == syscall.SIGTERM {
		return fmt.Errorf("sluiced exited with %v after SIGTERM:\n%s", a.waitErr, a.tail(4000))
	}
	return nil
}

func (a *Agent) signal(sig syscall.Signal) {
	if a.SysProcAttr != nil && a.SysProcAttr.Setpgid {
		syscall.Kill(-a.cmd.Process.Pid, sig)
		return
	}
	a.cmd.Process.Signal(sig)
}

// Signal sends sig to sluiced (not its process group).
func (a *Agent) Signal(sig os.Signal) error { return a.cmd.Process.Signal(sig) }

// Pid is sluiced's pid (the wrapper's, which execs sluiced, with Wrap).
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Cmd is the started command (for callers that track their processes).
func (a *Agent) Cmd() *exec.Cmd { return a.cmd }

// Done is closed when sluiced has exited.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Exited reports whether sluiced has exited.
func (a *Agent) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// ExitErr is cmd.Wait's error once sluiced has exited.
func (a *Agent) ExitErr() error {
	<-a.done
	return a.waitErr
}

// Logs returns sluiced's output so far.
func (a *Agent) Logs() string {
	if a.LogFile != "" {
		b, _ := os.ReadFile(a.LogFile)
		return string(b)
	}
	return a.logs.String()
}

// tail returns the end of the log, for error messages.
func (a *Agent) tail(n int) string {
	s := a.Logs()
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}

// LogLines returns the JSON log lines whose msg is msg, decoded.
func (a *Agent) LogLines(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(a.Logs(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// WaitLogLines waits up to timeout until at least n log lines have msg
// msg, and returns them. The agent writes a log line a moment after it
// counts what the line reports: a test that read a counter should wait
// for the line, not read it at once.
func (a *Agent) WaitLogLines(msg string, n int, timeout time.Duration) ([]map[string]any, error) {
	deadline := time.Now().Add(timeout)
	for {
		lines := a.LogLines(msg)
		if len(lines) >= n {
			return lines, nil
		}
		if time.Now().After(deadline) {
			return lines, fmt.Errorf("%d log lines %q after %v, want %d", len(lines), msg, timeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Scrape returns the agent's metrics as series → value, series written as
// in the exposition format (`name{label="v",…}`).
func (a *Agent) Scrape() (map[string]float64, error) {
	if a.Metrics == "" {
		return nil, errors.New("sluiced has no metrics address")
	}
	resp, err := http.Get(a.Metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %s", a.Metrics, resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics reads an exposition as series → value.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// listeningTCP finds the 127.0.0.1 port pid listens on (its metrics
// listener), from /proc/net/tcp and the process's socket inodes.
func listeningTCP(pid int) (string, error) {
	inodes := map[string]bool{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
			continue
		}
		_, port, _ := strings.Cut(f[1], ":")
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil {
			continue
		}
		return fmt.Sprintf("127.0.0.1:%d", p), nil
	}
	return "", errors.New("sluiced has no TCP listener: is metrics_addr off?")
}

// LockedBuffer is a bytes.Buffer safe for one writer and many readers.
type LockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TB is what StartT needs of a test: a *testing.T has it.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// StartT starts a as Start does, failing t on error, and stops it when
// the test ends, failing t when the stop is not clean.
func StartT(t TB, a *Agent, config string) {
	t.Helper()
	if err := a.Start(config); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if err := a.Stop(); err != nil {
			t.Errorf("%v", err)
		}
	})
}
