package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/agenttest"
	"github.com/sluicehq/sluice/policy"
)

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// inCgroup returns a command that moves itself into the cgroup (v1 memory)
// and only then execs argv, so nothing it does is charged elsewhere.
func inCgroup(cg *serverCgroup, argv ...string) *exec.Cmd {
	argv = append(cgroupWrap(cg), argv...)
	return exec.Command(argv[0], argv[1:]...)
}

// cgroupWrap is the argv prefix of inCgroup: nil without a cgroup.
func cgroupWrap(cg *serverCgroup) []string {
	if cg == nil {
		return nil
	}
	script := `echo $$ > "$0/cgroup.procs"`
	for i := range cg.extra {
		script += fmt.Sprintf(` && echo $$ > "$%d/cgroup.procs"`, i+1)
	}
	script += fmt.Sprintf(` && shift %d && exec "$@"`, len(cg.extra))
	return append([]string{"/bin/sh", "-c", script, cg.dir}, cg.extra...)
}

// proc is a started server process in its own process group.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(cmd *exec.Cmd, logPath string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

// stop sends sig to the process group, then SIGKILL after grace.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// agent is a running sluiced.
type agent struct {
	*agenttest.Agent
	pid     int
	socket  string
	metrics string // http://127.0.0.1:N/metrics
	logPath string
	// packCache: the policy enables [pack_cache] (its dir is
	// <run dir>/pack-cache).
	packCache bool
}

func startAgent(bin, dir string, m mode, cg *serverCgroup, hierarchyRoot string, env []string) (*agent, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "run", "sluice.sock")
	cfg, err := agentConfig(m.Policy, socket, fmt.Sprintf("127.0.0.1:%d", port), hierarchyRoot, filepath.Join(dir, "pack-cache"))
	if err != nil {
		return nil, fmt.Errorf("mode %s: %w", m.Name, err)
	}
	packCache := false
	if c, err := policy.Parse(filepath.Join(dir, "sluice.toml"), []byte(cfg)); err == nil {
		packCache = c.PackCache.Enabled
	}
	sluiced, err := filepath.Abs(filepath.Join(bin, "sluiced"))
	if err != nil {
		return nil, err
	}
	a := &agent{socket: socket, metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port), logPath: filepath.Join(dir, "sluiced.log"), packCache: packCache}
	a.Agent = &agenttest.Agent{Bin: sluiced, Dir: dir, Socket: socket, Args: []string{"-log-level", "info"}, Wrap: cgroupWrap(cg), Env: env,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}, LogFile: a.logPath,
		Ready: agenttest.ReadySocket, MetricsURL: a.metrics}
	if err := a.Start(cfg); err != nil {
		return nil, err
	}
	a.pid = a.Pid() // the wrapper execs sluiced: same pid
	return a, nil
}

// stop sends sig to sluiced's process group, then SIGKILL after grace,
// and says so when sluiced did not exit cleanly.
func (a *agent) stop(sig syscall.Signal, grace time.Duration) {
	a.StopTimeout = grace
	if err := a.StopWith(sig); err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
	}
}

// shimDirs makes the wiring of packaging/README.md: a PATH directory and a
// GIT_EXEC_PATH directory of links to the shim, and a system gitconfig with
// uploadpack.packObjectsHook.
func shimDirs(bin, dir string) (pathDir, execDir, gitconfig string, err error) {
	shim, err := filepath.Abs(filepath.Join(bin, "sluice-shim"))
	if err != nil {
		return
	}
	if _, err = os.Stat(shim); err != nil {
		return
	}
	pathDir, execDir = filepath.Join(dir, "shim-bin"), filepath.Join(dir, "shim-git-core")
	for _, d := range []string{pathDir, execDir} {
		if err = os.MkdirAll(d, 0o755); err != nil {
			return
		}
		for _, n := range []string{"git", "git-upload-pack", "git-receive-pack", "git-upload-archive"} {
			if err = os.Symlink(shim, filepath.Join(d, n)); err != nil {
				return
			}
		}
	}
	gitconfig = filepath.Join(dir, "gitconfig-sluice")
	err = os.WriteFile(gitconfig, []byte(serverGitconfig+"[uploadpack]\n\tpackObjectsHook = "+shim+"\n"), 0o644)
	return
}

// daemonEnv is git daemon's environment: plain git for "none", the shim
// wiring otherwise.
func daemonEnv(base []string, sluice bool, socket, pathDir, execDir, gitconfig, emptyConfig string) []string {
	env := append([]string{}, base...)
	if !sluice {
		return append(env, "PATH=/usr/bin:/bin", "GIT_CONFIG_SYSTEM="+emptyConfig)
	}
	return append(env, "PATH="+pathDir+":/usr/bin:/bin", "GIT_EXEC_PATH="+execDir,
		"GIT_CONFIG_SYSTEM="+gitconfig, "SLUICE_SOCKET="+socket, "SLUICE_REAL_GIT="+realGit,
		"SLUICE_SHIM_LOG="+filepath.Join(filepath.Dir(gitconfig), "shim.log"))
}

// startDaemon starts git daemon inside cg on a free loopback port and
// waits until it accepts connections. --max-connections=0: git daemon's
// own default cap (32) kills or drops connections from the same address,
// which would hide what the server does under the storm in every mode.
func startDaemon(base, logPath string, cg *serverCgroup, env []string) (*proc, int, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	cmd := inCgroup(cg, gitDaemon, "--reuseaddr", "--base-path="+base, "--export-all", "--informative-errors",
		"--max-connections=0", "--enable=receive-pack", "--listen=127.0.0.1", "--port="+strconv.Itoa(port))
	cmd.Env = env
	p, err := startProc(cmd, logPath)
	if err != nil {
		return nil, 0, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			c.Close()
			return p, port, nil
		}
		select {
		case <-p.done:
			return nil, 0, fmt.Errorf("git daemon exited at start-up: %s", tail(logPath, 2000))
		default:
		}
		if time.Now().After(deadline) {
			p.stop(syscall.SIGKILL, time.Second)
			return nil, 0, errors.New("git daemon did not listen within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return strings.TrimSpace(string(b))
}

// countLines counts the lines of a file containing substr.
func countLines(path, substr string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			n++
		}
	}
	return n
}

// procCPU returns a process's user+system CPU time from /proc/<pid>/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}
