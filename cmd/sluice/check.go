package main

// check.go is `sluice check`: the checks an operator runs after installing
// or wiring sluice (like `praefect check`), each printed with OK, FAIL, WARN
// or SKIP and, when it is not OK, the fix.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/ebpf"
	"github.com/sluicehq/sluice/gitwrap"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

const checkUsage = `usage: sluice check [--unit NAME | --pid PID | --user USER] [--env NAME=value ...] [flags]

Run the checks an installation needs and print each with OK, FAIL, WARN or
SKIP and, when it is not OK, how to fix it.

The host:
  config          the policy file is valid
  agent           sluiced answers on its socket
  socket          the socket's mode and group let the Git server's user in
  cgroups         the cgroup hierarchy is writable and has the controllers
  bpf             BTF and CAP_BPF are there for the eBPF tracer
  git             the real git runs, and its version
  packObjectsHook uploadpack.packObjectsHook runs the shim, from the system
                  gitconfig ($GIT_CONFIG_SYSTEM is honoured)

The Git server, as it really runs (--unit, --pid, --user; without them every
git daemon, fcgiwrap, gitea and sshd with a git-shell user found running):
  server          what was found, and where its environment comes from
                  (/proc/PID/environ; for sshd, sshd -T for the user)
  server PATH     git, git-upload-pack, git-receive-pack, git-upload-archive
                  on the server's PATH are the shim
  exec path       git-shell, git daemon and git-http-backend run git through
                  GIT_EXEC_PATH: it must hold the shim
  server access   the server's uid and groups (those the running process has)
                  can connect to the socket and read shim.conf: tried for real
  server hook     uploadpack.packObjectsHook is the shim in the system or
                  global gitconfig, read as the server's user
  server traffic  sluiced saw requests from the server's processes, and no
                  git run by them without the shim (eBPF tracer)

--path PATH checks one PATH string as well (shim on PATH), for a server that
cannot be named. fcgiwrap's CGI environment comes from the web server: give
it with --env PATH=... --env GIT_EXEC_PATH=....

WARN is a problem that does not stop sluice from limiting (cgroups or eBPF
unavailable when not required; a server whose environment cannot be seen).
Exit status: 0 when no check FAILs, 1 otherwise, 2 usage error.

flags:
`

// Check outcomes.
const (
	checkOK   = "OK"
	checkFail = "FAIL"
	checkWarn = "WARN"
	checkSkip = "SKIP"
)

// checkResult is one line of `sluice check`.
type checkResult struct {
	name   string
	status string
	detail string
	fix    string // how to fix it, when status is FAIL or WARN
}

// checkEnv is what the checks read from the machine, injected for tests.
type checkEnv struct {
	configPath string // --config, or policy.DefaultPath
	configSet  bool   // --config was given: a missing file is a failure
	socket     string // --socket; "" resolves from the config
	path       string // --path: a PATH to check the shim on; "" = none
	server     serverFlags
	proc       procfs.FS // the Git server's processes, and this one's (self)
	shim       string    // the shim binary the PATH and hook must reach
	cgroupRoot string    // mountpoint of the cgroup file systems
	btf        string    // /sys/kernel/btf/vmlinux
	getenv     func(string) string
	// status asks the agent at socket for its status; nil error means it
	// answered.
	status func(socket string) (string, error)
	// servers asks the agent which Git servers it saw requests and
	// unwrapped execs from; nil when there is no agent to ask.
	servers func(socket string) ([]*admitpb.ServerStatus, error)
}

func runCheck(args []string, stdout, stderr io.Writer) int {
	if len(args) == 2 && args[0] == accessProbeArg {
		return runAccessProbe(args[1], stdout)
	}
	fset := flag.NewFlagSet("check", flag.ContinueOnError)
	env := checkEnv{
		cgroupRoot: "/sys/fs/cgroup",
		proc:       procfs.Default,
		btf:        ebpf.KernelBTF,
		getenv:     os.Getenv,
		status:     agentStatus,
		servers:    agentServers,
	}
	fset.StringVar(&env.configPath, "config", policy.DefaultPath, "policy file sluiced reads")
	fset.StringVar(&env.socket, "socket", "", "sluiced's socket (default: $"+shimproto.SocketEnv+", then [agent] socket, then "+shimproto.RootSocket+")")
	fset.StringVar(&env.path, "path", "", "also check that this PATH finds the shim (for a server check cannot name)")
	fset.IntVar(&env.server.pid, "pid", 0, "pid of the Git server (sshd, git daemon, fcgiwrap, gitea)")
	fset.StringVar(&env.server.unit, "unit", "", "systemd unit of the Git server")
	fset.StringVar(&env.server.user, "user", "", "user server-side git runs as (with sshd: whose sessions to check)")
	fset.Var(envFlag{&env.server.env}, "env", "NAME=value the server gives git, repeatable (fcgiwrap: what nginx passes)")
	fset.StringVar(&env.shim, "shim", "/usr/bin/sluice-shim", "the installed shim")
	if code, ok := parseFlags(fset, checkUsage, args, stdout, stderr); !ok {
		return code
	}
	if fset.NArg() > 0 {
		fmt.Fprintln(stderr, "sluice check: takes no arguments; run 'sluice check -h'")
		return 2
	}
	fset.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			env.configSet = true
		}
	})
	return printChecks(runChecks(env), stdout)
}

// agentStatus asks sluiced for its status over the admin API.
func agentStatus(socket string) (string, error) {
	c, err := dialAdmin(socket)
	if err != nil {
		return "", err
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("sluiced %s answers on %s (%d rules, fail_mode %s)", st.Version, socket, len(st.Limits), st.FailMode), nil
}

// agentServers asks sluiced which Git servers it has seen.
func agentServers(socket string) ([]*admitpb.ServerStatus, error) {
	c, err := dialAdmin(socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		return nil, err
	}
	return st.Servers, nil
}

// printChecks prints the results and returns the exit status.
func printChecks(results []checkResult, w io.Writer) int {
	var b strings.Builder
	counts := map[string]int{}
	for _, r := range results {
		counts[r.status]++
		fmt.Fprintf(&b, "%-4s  %-15s  %s\n", r.status, r.name, r.detail)
		if r.fix != "" && r.status != checkOK {
			fmt.Fprintf(&b, "      %-15s  fix: %s\n", "", r.fix)
		}
	}
	fmt.Fprintf(&b, "\n%d checks: %d ok, %d failed, %d warnings, %d skipped\n",
		len(results), counts[checkOK], counts[checkFail], counts[checkWarn], counts[checkSkip])
	io.WriteString(w, b.String())
	if counts[checkFail] > 0 {
		return 1
	}
	return 0
}

// runChecks runs every check in order.
func runChecks(env checkEnv) []checkResult {
	cfg, r := checkConfig(env)
	results := []checkResult{r}
	socket := env.socket
	if socket == "" {
		socket = shimproto.SocketPath(cfg.Agent.Socket)
		if s := env.getenv(shimproto.SocketEnv); s != "" {
			socket = s
		}
	}
	results = append(results, checkAgent(env, socket), checkSocket(cfg, socket))
	results = append(results, checkCgroups(env, cfg), checkBPF(env, cfg))
	realGit, r := checkRealGit(env, cfg)
	results = append(results, r, checkHook(env, realGit))
	if env.path != "" {
		results = append(results, checkShimOnPath(env))
	}
	servers, r := findServers(env, env.server)
	results = append(results, r)
	var seen []*admitpb.ServerStatus
	var seenErr error
	if len(servers) > 0 && env.servers != nil {
		seen, seenErr = env.servers(socket)
	}
	for _, s := range servers {
		results = append(results, checkServer(env, s, realGit)...)
		results = append(results, checkServerTraffic(s, seen, seenErr, time.Now()))
	}
	return results
}

func checkConfig(env checkEnv) (*policy.Config, checkResult) {
	r := checkResult{name: "config"}
	cfg, err := policy.Load(env.configPath)
	switch {
	case err == nil:
		r.status, r.detail = checkOK, fmt.Sprintf("%s is valid (%d rules)", env.configPath, len(cfg.RuleNames()))
	case errors.Is(err, fs.ErrNotExist) && !env.configSet:
		r.status, r.detail = checkSkip, env.configPath+" does not exist: sluiced applies the embedded default policy"
		r.fix = "sluice validate --print-defaults > " + env.configPath + " to edit it"
		cfg = policy.Default()
	default:
		var problems policy.Errors
		msg := err.Error()
		if errors.As(err, &problems) && len(problems) > 0 {
			msg = fmt.Sprintf("%d problems, first: %s", len(problems), problems[0].Error())
		}
		r.status, r.detail = checkFail, msg
		r.fix = "sluice validate " + env.configPath + " lists every problem with its fix"
		cfg = policy.Default()
	}
	return cfg, r
}

func checkAgent(env checkEnv, socket string) checkResult {
	r := checkResult{name: "agent"}
	detail, err := env.status(socket)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "sluice: ")
		if strings.Contains(msg, "admin") || strings.Contains(msg, "permission") {
			// The agent answered but refused the admin call: it is up.
			r.status, r.detail = checkOK, "sluiced answers on "+socket+" (status refused: "+msg+")"
			return r
		}
		r.status, r.detail = checkFail, msg
		r.fix = "start it (systemctl enable --now sluiced; journalctl -u sluiced says why it stopped), or point --socket/$" + shimproto.SocketEnv + " at it"
		return r
	}
	r.status, r.detail = checkOK, detail
	return r
}

func checkSocket(cfg *policy.Config, socket string) checkResult {
	r := checkResult{name: "socket"}
	var st syscall.Stat_t
	if err := syscall.Stat(socket, &st); err != nil {
		r.status, r.detail = checkFail, fmt.Sprintf("%s: %v", socket, err)
		r.fix = "start sluiced; it creates the socket"
		return r
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		r.status, r.detail = checkFail, socket+" is not a socket"
		r.fix = "remove it and restart sluiced, or set [agent] socket to another path"
		return r
	}
	group := groupName(st.Gid)
	perm := st.Mode & 0o777
	want := cfg.Agent.SocketGroup
	switch {
	case perm&0o060 != 0o060:
		r.status, r.detail = checkFail, fmt.Sprintf("%s has mode %04o: its group %s cannot connect", socket, perm, group)
		r.fix = "restart sluiced (it makes the socket 0660)"
	case want != "" && want != group && want != strconv.FormatUint(uint64(st.Gid), 10):
		r.status, r.detail = checkFail, fmt.Sprintf("%s belongs to group %s, [agent] socket_group is %q", socket, group, want)
		r.fix = "restart sluiced so it applies socket_group"
	default:
		r.status, r.detail = checkOK, fmt.Sprintf("%s mode %04o group %s", socket, perm, group)
		if st.Gid == 0 {
			r.status = checkWarn
			r.detail += ": only root and group root can connect"
			r.fix = "set [agent] socket_group (or run sluiced with the group sluice, as the unit does) and add the Git server's user to it"
		}
	}
	if dir, err := os.Stat(filepath.Dir(socket)); err == nil && r.status == checkOK && dir.Mode().Perm()&0o050 != 0o050 {
		r.status = checkFail
		r.detail = fmt.Sprintf("%s has mode %04o: the group cannot reach the socket inside", filepath.Dir(socket), dir.Mode().Perm())
		r.fix = "chmod 0750 " + filepath.Dir(socket) + " (sluiced does it when it creates the directory)"
	}
	return r
}

func groupName(gid uint32) string {
	id := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return id
}

// checkCgroups asks cgroup.Probe about the own cgroup, the hierarchy and
// its controllers, and whether a cgroup can be created below the own one.
func checkCgroups(env checkEnv, cfg *policy.Config) checkResult {
	r := checkResult{name: "cgroups"}
	if !cfg.Cgroups.Enabled {
		r.status, r.detail = checkSkip, "[cgroups] enabled = false"
		return r
	}
	bad := checkWarn
	if cfg.Cgroups.Required {
		bad = checkFail
	}
	root := env.cgroupRoot
	if cfg.Cgroups.Mountpoint != "" {
		root = cfg.Cgroups.Mountpoint
	}
	p, err := cgroup.Probe(root, env.proc.SelfPath("cgroup"))
	var pe *cgroup.ProbeError
	switch {
	case errors.As(err, &pe) && pe.Step == cgroup.ProbeReadOwn:
		r.status, r.detail, r.fix = bad, pe.Err.Error(), "mount /proc"
	case errors.As(err, &pe) && pe.Step == cgroup.ProbeMount:
		r.status, r.detail = bad, "no cgroup file system at "+root+": "+pe.Err.Error()
		r.fix = "mount cgroups at " + root + " or set [cgroups] mountpoint; or set [cgroups] enabled = false"
	case errors.As(err, &pe) && pe.Step == cgroup.ProbeCreate:
		r.status, r.detail = bad, fmt.Sprintf("cannot create a cgroup in %s: %v", pe.Path, pe.Err)
		r.fix = "run sluiced as root; under systemd keep Delegate=yes in sluiced.service"
	case errors.As(err, &pe) && pe.Step == cgroup.ProbeRemove:
		r.status, r.detail = bad, fmt.Sprintf("created %s but cannot remove it: %v", pe.Path, pe.Err)
		r.fix = "rmdir " + pe.Path
	case err != nil:
		r.status, r.detail = bad, err.Error()
	case len(p.Missing) > 0:
		r.status, r.detail = bad, fmt.Sprintf("%s is writable but controllers are missing: %s", p.Writable(), strings.Join(p.Missing, ", "))
		r.fix = "enable the controllers (kernel config, cgroup_enable= boot options) or accept that those limits do not apply"
	default:
		r.status, r.detail = checkOK, p.Writable()+" is writable; controllers present"
	}
	return r
}

// checkBPF asks ebpf.Probe whether the tracer can load: kernel BTF, and
// CAP_BPF in this process's effective set.
func checkBPF(env checkEnv, cfg *policy.Config) checkResult {
	r := checkResult{name: "bpf"}
	if !cfg.EBPF.Enabled {
		r.status, r.detail = checkSkip, "[ebpf] enabled = false"
		return r
	}
	err := ebpf.Probe(ebpf.ProbeOptions{BTF: env.btf, CapEff: func() (uint64, error) {
		return readCapEff(env.proc)
	}})
	var pe *ebpf.ProbeError
	switch {
	case err == nil:
		r.status, r.detail = checkOK, env.btf+" present; CAP_BPF effective"
	case errors.As(err, &pe) && pe.Step == ebpf.ProbeBTF:
		r.status, r.detail = checkWarn, fmt.Sprintf("no kernel BTF (%v): the eBPF tracer cannot load", pe.Err)
		r.fix = "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's is)"
	case errors.As(err, &pe) && pe.Step == ebpf.ProbeCaps:
		r.status, r.detail, r.fix = checkWarn, pe.Err.Error(), "mount /proc"
	default: // ebpf.ProbeCapBPF
		r.status, r.detail = checkWarn, "this process lacks CAP_BPF: sluiced running like this cannot load the tracer"
		r.fix = "run sluiced (and this check) as root; keep CAP_BPF and CAP_PERFMON in the unit's CapabilityBoundingSet"
	}
	return r
}

// readCapEff returns this process's effective capabilities.
func readCapEff(proc procfs.FS) (uint64, error) {
	st, err := proc.SelfStatus()
	if err != nil {
		return 0, err
	}
	if !st.Has("CapEff") {
		return 0, fmt.Errorf("%s has no CapEff line", proc.SelfPath("status"))
	}
	return st.CapEff, nil
}

// serverCommands are the names a Git server runs that must reach the shim.
var serverCommands = []string{"git", "git-upload-pack", "git-receive-pack", "git-upload-archive"}

// lookPath finds name on path (a PATH value) like execvp.
func lookPath(path, name string) string {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// sameFile reports whether a and b are the same file after symlinks.
func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

func checkShimOnPath(env checkEnv) checkResult {
	r := checkResult{name: "shim on PATH"}
	if _, err := os.Stat(env.shim); err != nil {
		r.status, r.detail = checkFail, fmt.Sprintf("the shim is not installed: %v", err)
		r.fix = "install the sluice package, or pass --shim with its path"
		return r
	}
	var wrong []string
	for _, name := range serverCommands {
		p := lookPath(env.path, name)
		switch {
		case p == "":
			wrong = append(wrong, name+" not found")
		case !sameFile(p, env.shim):
			wrong = append(wrong, name+" is "+p)
		}
	}
	if len(wrong) > 0 {
		r.status, r.detail = checkFail, "on "+env.path+": "+strings.Join(wrong, "; ")+", not the shim "+env.shim
		r.fix = "put /usr/lib/sluice/bin first on the Git server's PATH (sshd: SetEnv PATH=...; fcgiwrap: fastcgi_param PATH ...; git daemon and git-http-backend also GIT_EXEC_PATH=/usr/lib/sluice/git-core): see /usr/share/doc/sluice/README.md"
		return r
	}
	r.status, r.detail = checkOK, strings.Join(serverCommands, ", ")+" on the server's PATH are the shim "+env.shim
	return r
}

// checkRealGit finds the real git the shim runs, as the shim does
// (gitwrap.FindRealGitFor with --shim as the shim): SLUICE_REAL_GIT, [git]
// bin, else the first git in an absolute entry of the server's PATH (--path,
// else $PATH) that is not the shim, else /usr/bin/git.
func checkRealGit(env checkEnv, cfg *policy.Config) (string, checkResult) {
	r := checkResult{name: "git"}
	search := env.path
	if search == "" {
		search = env.getenv("PATH")
	}
	getenv := func(k string) string {
		if k == "PATH" {
			return search
		}
		return env.getenv(k)
	}
	realGit, err := gitwrap.FindRealGitFor(getenv, cfg.Git.Bin, env.shim)
	if err != nil && env.getenv(gitwrap.RealGitEnv) == "" && cfg.Git.Bin == "" {
		r.status, r.detail = checkFail, "no real git on "+search
		r.fix = "install git (apt-get install git) or set [git] bin"
		return "", r
	}
	if err != nil {
		r.status, r.detail = checkFail, strings.TrimPrefix(err.Error(), "sluice: ")
		r.fix = "point [git] bin (or $" + gitwrap.RealGitEnv + ") at the real git"
		return "", r
	}
	out, err := exec.Command(realGit, "--version").Output()
	if err != nil {
		r.status, r.detail = checkFail, fmt.Sprintf("%s --version: %v", realGit, err)
		r.fix = "reinstall git or fix [git] bin"
		return "", r
	}
	v := strings.TrimSpace(string(out))
	r.status, r.detail = checkOK, realGit+": "+v
	if major, minor, ok := gitVersion(v); ok && (major < 2 || major == 2 && minor < 19) {
		r.status = checkWarn
		r.fix = "git before 2.19 lacks parts of protocol v2 and the pack-objects hook arguments sluice relies on: upgrade git"
	}
	return realGit, r
}

func gitVersion(s string) (major, minor int, ok bool) {
	f := strings.Fields(s)
	if len(f) < 3 {
		return 0, 0, false
	}
	parts := strings.Split(f[2], ".")
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}

// checkHook asks the real git what the system gitconfig says about
// uploadpack.packObjectsHook, includes followed, as upload-pack reads it.
func checkHook(env checkEnv, realGit string) checkResult {
	r := checkResult{name: "packObjectsHook"}
	r.fix = "git config --system uploadpack.packObjectsHook " + env.shim + " (or git config --system include.path /usr/share/sluice/gitconfig); it is only honoured from the system or global config, never a repository's"
	if realGit == "" {
		r.status, r.detail, r.fix = checkSkip, "no real git to ask", ""
		return r
	}
	file := "/etc/gitconfig"
	if f := env.getenv("GIT_CONFIG_SYSTEM"); f != "" {
		file = f
	}
	if v := env.getenv("GIT_CONFIG_NOSYSTEM"); v != "" && v != "0" && v != "false" {
		r.status, r.detail = checkFail, "GIT_CONFIG_NOSYSTEM is set: git ignores the system gitconfig"
		r.fix = "unset GIT_CONFIG_NOSYSTEM in the Git server's environment"
		return r
	}
	cmd := exec.Command(realGit, "config", "--system", "--includes", "--get", "uploadpack.packObjectsHook")
	cmd.Env = gitConfigEnv(env.getenv)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	val := strings.TrimSpace(string(out))
	if err != nil || val == "" {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 || err == nil {
			r.status, r.detail = checkFail, "uploadpack.packObjectsHook is not set in the system gitconfig ("+file+"): pack-objects runs without admission"
			return r
		}
		r.status, r.detail = checkFail, fmt.Sprintf("git config --system: %v %s", err, strings.TrimSpace(stderr.String()))
		return r
	}
	hook := strings.Fields(val)[0]
	if !sameFile(hook, env.shim) {
		r.status, r.detail = checkFail, fmt.Sprintf("uploadpack.packObjectsHook in %s is %q, not the shim %s", file, val, env.shim)
		return r
	}
	r.status, r.detail, r.fix = checkOK, "uploadpack.packObjectsHook = "+val+" in "+file, ""
	return r
}

// gitConfigEnv is this process's environment with the variables that
// choose the system gitconfig taken from getenv.
func gitConfigEnv(getenv func(string) string) []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GIT_CONFIG_SYSTEM=") && !strings.HasPrefix(kv, "GIT_CONFIG_NOSYSTEM=") {
			e = append(e, kv)
		}
	}
	for _, k := range []string{"GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM"} {
		if v := getenv(k); v != "" {
			e = append(e, k+"="+v)
		}
	}
	return e
}
