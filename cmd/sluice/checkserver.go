package main

// checkserver.go is the half of `sluice check` that verifies the Git
// server itself, not root's shell: given the server's pid, systemd unit or
// user (or, with none of them, every Git server process found on the
// host), it works out the environment server-side git really gets and the
// identity it runs with, and checks, as that identity:
//
//   - server          what was found and where its environment came from
//   - server PATH     git, git-upload-pack, git-receive-pack and
//                     git-upload-archive on the server's PATH are the shim
//   - exec path       for servers that run `git upload-pack` through git's
//                     exec path (git-shell behind sshd, git daemon,
//                     git-http-backend), GIT_EXEC_PATH points at the shim
//   - server access   the server's uid and groups can connect to the
//                     socket and read shim.conf (tried for real, in a child
//                     process running as that uid and those groups)
//   - server hook     uploadpack.packObjectsHook is the shim in the
//                     system or global gitconfig the server's git reads
//
// Where the environment comes from, by kind of server:
//
//   - git daemon, Gitea, anything else: /proc/PID/environ of the process
//     (what it was started with; git inherits it);
//   - sshd: sessions do not inherit sshd's environment; `sshd -T -C user=U`
//     prints the SetEnv lines that apply to user U (--user, default: every
//     user whose login shell is git-shell), on top of sshd's default PATH;
//   - fcgiwrap: CGI scripts get what the web server passes (nginx's
//     fastcgi_param), which no process shows: give it with --env
//     PATH=… --env GIT_EXEC_PATH=…, else the exec-path check warns.
//
// A running process keeps the groups it started with: `adduser git sluice`
// does nothing for a daemon started before it, and the access check tries
// with the groups in /proc/PID/status, so it catches exactly that.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/internal/procfs"
)

// Kinds of Git server, by how server-side git gets its environment and
// whether it runs git through git's exec path.
const (
	kindSSHD   = "sshd"
	kindDaemon = "git daemon"
	kindHTTP   = "fcgiwrap"
	kindGitea  = "gitea"
	kindOther  = "process"
)

// sshdDefaultPath is the PATH OpenSSH gives a session without SetEnv PATH
// (Debian's build).
const sshdDefaultPath = "/usr/local/bin:/usr/bin:/bin:/usr/games"

// gitServer is one Git server whose wiring `sluice check` verifies.
type gitServer struct {
	desc    string // for the report: "git daemon (pid 123)", "sshd (pid 45) sessions of user git"
	kind    string
	pid     int // 0 when only a user was given
	user    string
	uid     uint32
	gid     uint32
	groups  []uint32
	env     map[string]string // environment of server-side git; nil when unknown
	envFrom string            // where env came from
}

// serverFlags are check's flags that name the server.
type serverFlags struct {
	pid  int
	unit string
	user string
	env  []string // --env K=V, repeatable: added to (or replacing) what was found
}

// envFlag collects repeated --env K=V flags.
type envFlag struct{ vals *[]string }

func (f envFlag) String() string {
	if f.vals == nil {
		return ""
	}
	return strings.Join(*f.vals, " ")
}

func (f envFlag) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("--env %q: want NAME=value", v)
	}
	*f.vals = append(*f.vals, v)
	return nil
}

// findServers resolves the flags to the servers to check. With no flag it
// looks for Git server processes in env.proc. The check result says
// what was found, or why nothing could be checked.
func findServers(env checkEnv, f serverFlags) ([]*gitServer, checkResult) {
	r := checkResult{name: "server"}
	var servers []*gitServer
	switch {
	case f.unit != "":
		pid, err := unitMainPID(f.unit)
		if err != nil {
			r.status, r.detail = checkFail, err.Error()
			r.fix = "start the unit, or pass the server's --pid"
			return nil, r
		}
		s, err := procServer(env.proc, pid, f.user)
		if err != nil {
			r.status, r.detail, r.fix = checkFail, err.Error(), "pass the server's --pid"
			return nil, r
		}
		servers = s
	case f.pid > 0:
		s, err := procServer(env.proc, f.pid, f.user)
		if err != nil {
			r.status, r.detail, r.fix = checkFail, err.Error(), "pass the pid of a running Git server (sshd, git daemon, fcgiwrap, gitea)"
			return nil, r
		}
		servers = s
	case f.user != "":
		s, err := userServer(f.user)
		if err != nil {
			r.status, r.detail, r.fix = checkFail, err.Error(), "pass the user the Git server runs git as"
			return nil, r
		}
		servers = []*gitServer{s}
	default:
		servers = discoverServers(env.proc)
		if len(servers) == 0 {
			r.status = checkWarn
			r.detail = "no Git server process found (sshd with a git-shell user, git daemon, fcgiwrap, gitea): the server's wiring was not checked"
			r.fix = "start the Git server and run sluice check again, or name it: --unit NAME, --pid PID, or --user USER --env PATH=… --env GIT_EXEC_PATH=…"
			return nil, r
		}
	}
	for _, s := range servers {
		for _, kv := range f.env {
			k, v, _ := strings.Cut(kv, "=")
			if s.env == nil {
				s.env = map[string]string{}
			}
			s.env[k] = v
			if !strings.Contains(s.envFrom, "--env") {
				s.envFrom += " + --env"
			}
		}
	}
	var descs []string
	for _, s := range servers {
		descs = append(descs, s.desc)
	}
	r.status, r.detail = checkOK, strings.Join(descs, "; ")
	return servers, r
}

// unitMainPID asks systemd for a unit's main pid.
func unitMainPID(unit string) (int, error) {
	out, err := exec.Command("systemctl", "show", "--property=MainPID", "--value", unit).Output()
	if err != nil {
		return 0, fmt.Errorf("systemctl show %s: %v", unit, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("unit %s is not running (MainPID %q)", unit, strings.TrimSpace(string(out)))
	}
	return pid, nil
}

// kindOf classifies a process by its executable and command line.
func kindOf(exe string, cmdline []string) string {
	base := filepath.Base(exe)
	switch {
	case base == "sshd":
		return kindSSHD
	case base == "git-daemon", base == "git" && len(cmdline) > 1 && slices.Contains(cmdline[1:], "daemon"):
		return kindDaemon
	case base == "fcgiwrap":
		return kindHTTP
	case base == "gitea", base == "forgejo":
		return kindGitea
	}
	return kindOther
}

// procServer describes the server process pid. An sshd yields one server
// per user its sessions run git as: user if given, else every user whose
// login shell is git-shell.
func procServer(proc procfs.FS, pid int, userName string) ([]*gitServer, error) {
	exe, err := proc.Exe(pid)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %v (is it running? check needs root to read another user's process)", pid, err)
	}
	cmdline, _ := proc.Cmdline(pid, 0)
	kind := kindOf(exe, cmdline)
	if kind == kindSSHD {
		users := []string{userName}
		if userName == "" {
			users = gitShellUsers("/etc/passwd")
			if len(users) == 0 {
				return nil, fmt.Errorf("sshd (pid %d): no user has git-shell as login shell; pass --user with the user git runs as", pid)
			}
		}
		var out []*gitServer
		for _, u := range users {
			s, err := sshdServer(pid, exe, cmdline, u)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	}
	st, err := proc.Status(pid)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %v", pid, err)
	}
	env, err := proc.Environ(pid)
	if err != nil {
		return nil, fmt.Errorf("pid %d: environment: %v", pid, err)
	}
	uid := st.UID[1] // real, effective, saved, fs: git runs as the effective uid
	s := &gitServer{
		desc: fmt.Sprintf("%s (pid %d, %s) as %s", kind, pid, exe, userLabel(uid)),
		kind: kind, pid: pid, user: userLabel(uid),
		uid: uid, gid: st.GID[1], groups: st.Groups,
		env: env, envFrom: fmt.Sprintf("/proc/%d/environ", pid),
	}
	if kind == kindHTTP {
		// CGI scripts get what the web server passes, not fcgiwrap's own
		// environment: only --env can say it.
		s.env, s.envFrom = nil, "unknown (the web server's fastcgi_param)"
	}
	return []*gitServer{s}, nil
}

func userLabel(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return strconv.FormatUint(uint64(uid), 10)
}

// userIdentity looks a user up in the user database: uid, primary gid and
// every group (what a new login session gets).
func userIdentity(name string) (uid, gid uint32, groups []uint32, home string, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, nil, "", fmt.Errorf("user %s: %v", name, err)
	}
	n, _ := strconv.ParseUint(u.Uid, 10, 32)
	g, _ := strconv.ParseUint(u.Gid, 10, 32)
	ids, _ := u.GroupIds()
	for _, id := range ids {
		if v, err := strconv.ParseUint(id, 10, 32); err == nil {
			groups = append(groups, uint32(v))
		}
	}
	return uint32(n), uint32(g), groups, u.HomeDir, nil
}

// userServer is a server known only by the user git runs as; its
// environment is what --env gives.
func userServer(name string) (*gitServer, error) {
	uid, gid, groups, _, err := userIdentity(name)
	if err != nil {
		return nil, err
	}
	return &gitServer{
		desc: "user " + name + " (no process: environment from --env only)",
		kind: kindOther, user: name, uid: uid, gid: gid, groups: groups,
		envFrom: "--env",
	}, nil
}

// sshdServer describes the sessions sshd runs for user: identity from the
// user database (a new session gets the user's current groups) and the
// environment from sshd's effective configuration for that user.
func sshdServer(pid int, exe string, cmdline []string, userName string) (*gitServer, error) {
	uid, gid, groups, home, err := userIdentity(userName)
	if err != nil {
		return nil, err
	}
	args := []string{"-T", "-C", "user=" + userName + ",host=localhost,addr=127.0.0.1"}
	if len(cmdline) == 1 {
		// sshd's listener rewrites its title: "sshd: /usr/sbin/sshd -f
		// FILE … [listener] 0 of 10-100 startups" (a path with spaces
		// cannot be told apart; such an sshd needs its default config).
		cmdline = strings.Fields(cmdline[0])
	}
	for i, a := range cmdline {
		if a == "-f" && i+1 < len(cmdline) {
			args = append(args, "-f", cmdline[i+1])
		} else if strings.HasPrefix(a, "-f") && len(a) > 2 {
			args = append(args, a)
		}
	}
	out, err := exec.Command(exe, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v: %s", exe, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	env := map[string]string{"PATH": sshdDefaultPath, "HOME": home, "USER": userName}
	for _, line := range strings.Split(string(out), "\n") {
		if kv, ok := strings.CutPrefix(line, "setenv "); ok {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
	}
	return &gitServer{
		desc: fmt.Sprintf("sshd (pid %d) sessions of user %s", pid, userName),
		kind: kindSSHD, pid: pid, user: userName, uid: uid, gid: gid, groups: groups,
		env: env, envFrom: "sshd -T -C user=" + userName + " (SetEnv on sshd's default PATH)",
	}, nil
}

// gitShellUsers lists the users whose login shell is git-shell.
func gitShellUsers(passwd string) []string {
	data, err := os.ReadFile(passwd)
	if err != nil {
		return nil
	}
	var users []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) == 7 && filepath.Base(f[6]) == "git-shell" {
			users = append(users, f[0])
		}
	}
	return users
}

// discoverServers finds Git server processes: every git daemon, fcgiwrap
// and gitea/forgejo, and each sshd listening process (its sessions of every
// git-shell user). Only the topmost process of each kind is taken (a
// daemon's forked children share its environment).
func discoverServers(proc procfs.FS) []*gitServer {
	pids, _ := proc.PIDs()
	type found struct {
		pid, ppid int
		kind      string
	}
	var procs []found
	kinds := map[int]string{}
	for _, pid := range pids {
		exe, err := proc.Exe(pid)
		if err != nil {
			continue
		}
		cmdline, _ := proc.Cmdline(pid, 0)
		kind := kindOf(exe, cmdline)
		if kind == kindOther {
			continue
		}
		kinds[pid] = kind
		ppid, _ := proc.PPID(pid) // 0 when unreadable
		procs = append(procs, found{pid: pid, ppid: ppid, kind: kind})
	}
	var out []*gitServer
	for _, p := range procs {
		if kinds[p.ppid] == p.kind {
			continue // a child of a server of the same kind
		}
		if p.kind == kindSSHD && len(gitShellUsers("/etc/passwd")) == 0 {
			continue // an sshd with no git-shell user is not a Git server we can tell
		}
		s, err := procServer(proc, p.pid, "")
		if err != nil {
			continue
		}
		out = append(out, s...)
	}
	return out
}

// runsViaExecPath reports whether the server runs `git upload-pack` through
// git's exec path, which it puts first on PATH: then the shim must be the
// `git` and `git-upload-pack` in GIT_EXEC_PATH, PATH alone is not enough.
func (s *gitServer) runsViaExecPath() bool {
	return s.kind == kindSSHD || s.kind == kindDaemon || s.kind == kindHTTP
}

// fixFor says where this server's environment is set.
func (s *gitServer) envFix(vars string) string {
	switch s.kind {
	case kindSSHD:
		return fmt.Sprintf("in sshd_config, under Match User %s: SetEnv %s; then reload sshd", s.user, vars)
	case kindDaemon:
		return "start git daemon with " + vars + " in its environment (a unit: Environment=…), then restart it"
	case kindHTTP:
		return "pass them from the web server (nginx: fastcgi_param NAME value; for each of " + vars + ") and tell check with --env NAME=value"
	case kindGitea:
		return "set [git] PATH = /usr/lib/sluice/bin/git in app.ini (see /usr/share/doc/sluice/README.md, Gitea) and restart Gitea"
	}
	return "set " + vars + " in the environment the Git server runs git with, then restart it"
}

// checkServer runs the per-server checks.
func checkServer(env checkEnv, s *gitServer, realGit string) []checkResult {
	prefix := ""
	if s.pid > 0 {
		prefix = fmt.Sprintf("[%d %s] ", s.pid, s.user)
	} else {
		prefix = "[" + s.user + "] "
	}
	results := []checkResult{
		checkServerPath(env, s),
		checkServerExecPath(env, s),
		checkServerAccess(env, s),
		checkServerHook(env, s, realGit),
	}
	for i := range results {
		results[i].detail = prefix + results[i].detail
	}
	return results
}

const wiringGuide = "see /usr/share/doc/sluice/README.md, \"Two lines every server needs\""

func checkServerPath(env checkEnv, s *gitServer) checkResult {
	r := checkResult{name: "server PATH"}
	path, ok := s.env["PATH"]
	if s.env == nil || !ok {
		r.status = checkWarn
		r.detail = "the server's PATH is unknown (" + s.envFrom + ")"
		r.fix = "tell check what the server passes: --env PATH=… (and --env GIT_EXEC_PATH=…)"
		if s.kind == kindGitea {
			r.detail, r.fix = "Gitea runs the git of its app.ini [git] PATH", "check that [git] PATH is /usr/lib/sluice/bin/git"
		}
		return r
	}
	var wrong []string
	for _, name := range serverCommands {
		p := lookPath(path, name)
		switch {
		case p == "":
			wrong = append(wrong, name+" not found")
		case !sameFile(p, env.shim):
			wrong = append(wrong, name+" is "+p)
		}
	}
	if len(wrong) > 0 {
		r.status = checkFail
		r.detail = fmt.Sprintf("PATH=%s (from %s): %s, not the shim %s", path, s.envFrom, strings.Join(wrong, "; "), env.shim)
		r.fix = s.envFix("PATH=/usr/lib/sluice/bin:/usr/bin:/bin") + "; " + wiringGuide
		return r
	}
	r.status, r.detail = checkOK, "PATH="+path+" (from "+s.envFrom+") finds the shim for "+strings.Join(serverCommands, ", ")
	return r
}

func checkServerExecPath(env checkEnv, s *gitServer) checkResult {
	r := checkResult{name: "exec path"}
	if !s.runsViaExecPath() {
		r.status, r.detail = checkSkip, s.kind+" runs git by name: PATH is what counts"
		return r
	}
	const want = "GIT_EXEC_PATH=/usr/lib/sluice/git-core"
	if s.env == nil {
		r.status = checkWarn
		r.detail = "the server's GIT_EXEC_PATH is unknown (" + s.envFrom + ")"
		r.fix = "tell check what the server passes: --env GIT_EXEC_PATH=…"
		return r
	}
	dir, ok := s.env["GIT_EXEC_PATH"]
	if (!ok || dir == "") && s.kind == kindDaemon {
		// git-daemon run directly finds git on its PATH (checked above);
		// `git daemon` through the git wrapper puts /usr/lib/git-core first
		// in its child's PATH, which this process's environment does not
		// show. The guide sets GIT_EXEC_PATH for both.
		r.status = checkWarn
		r.detail = fmt.Sprintf("GIT_EXEC_PATH is not set (from %s): right only while git daemon is started as /usr/lib/git-core/git-daemon; `git daemon` would run git from /usr/lib/git-core, bypassing the shim", s.envFrom)
		r.fix = s.envFix(want) + "; " + wiringGuide
		return r
	}
	if !ok || dir == "" {
		r.status = checkFail
		r.detail = fmt.Sprintf("GIT_EXEC_PATH is not set (from %s): %s runs `git upload-pack` from git's own exec path (/usr/lib/git-core), bypassing the shim", s.envFrom, s.kind)
		r.fix = s.envFix(want) + "; " + wiringGuide
		return r
	}
	var wrong []string
	for _, name := range serverCommands {
		p := filepath.Join(dir, name)
		if !sameFile(p, env.shim) {
			wrong = append(wrong, p)
		}
	}
	if len(wrong) > 0 {
		r.status = checkFail
		r.detail = fmt.Sprintf("GIT_EXEC_PATH=%s: %s not the shim %s", dir, strings.Join(wrong, ", "), env.shim)
		r.fix = s.envFix(want) + "; " + wiringGuide
		return r
	}
	r.status, r.detail = checkOK, "GIT_EXEC_PATH="+dir+": git and the serving commands there are the shim"
	return r
}

// serverSocket is the socket the server's shims use: its SLUICE_SOCKET, or
// the one every shim uses without it.
func serverSocket(s *gitServer) string {
	if v := s.env[shimproto.SocketEnv]; v != "" {
		return v
	}
	return shimproto.RootSocket
}

// accessProbeArg is the hidden argument that makes `sluice check` the probe
// child: it runs as the server's identity, tries what the shim does, and
// prints one line per try.
const accessProbeArg = "--access-probe"

// checkServerAccess runs this binary as the server's uid, gid and groups to
// connect to the socket and read shim.conf, as the shim will.
func checkServerAccess(env checkEnv, s *gitServer) checkResult {
	r := checkResult{name: "server access"}
	if os.Geteuid() != 0 {
		r.status, r.detail = checkSkip, "needs root to try as the server's user"
		return r
	}
	socket := serverSocket(s)
	self, err := os.Executable()
	if err != nil {
		r.status, r.detail = checkSkip, "cannot find this binary to run as the server's user: "+err.Error()
		return r
	}
	cmd := exec.Command(self, "check", accessProbeArg, socket)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: s.uid, Gid: s.gid, Groups: s.groups}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	text := strings.TrimSpace(out.String())
	who := fmt.Sprintf("uid %d (%s) with groups %s", s.uid, s.user, groupList(s.gid, s.groups))
	if runErr != nil && !strings.HasPrefix(text, "socket") && !strings.HasPrefix(text, "shim.conf") {
		r.status = checkSkip
		r.detail = fmt.Sprintf("could not run %s as %s: %v %s", self, who, runErr, text)
		r.fix = "install sluice where every user can run it (/usr/bin/sluice)"
		return r
	}
	if runErr != nil {
		r.status, r.detail = checkFail, who+": "+strings.ReplaceAll(text, "\n", "; ")
		r.fix = accessFix(s, socket, text)
		return r
	}
	r.status, r.detail = checkOK, who+" can connect to "+socket+" and read "+shimproto.ShimConfigPath(socket)
	return r
}

func accessFix(s *gitServer, socket, text string) string {
	if strings.Contains(text, "permission denied") {
		fix := fmt.Sprintf("adduser %s %s (the socket's group; [agent] socket_group), then restart the Git server: a running process keeps the groups it started with", s.user, socketGroupName(socket))
		return fix
	}
	if strings.Contains(text, "no such file") {
		return "start sluiced (it creates " + socket + "), or set the server's SLUICE_SOCKET to where it listens"
	}
	return "see the message; sluiced's log says more"
}

func socketGroupName(socket string) string {
	var st syscall.Stat_t
	if syscall.Stat(socket, &st) != nil {
		if syscall.Stat(filepath.Dir(socket), &st) != nil {
			return "sluice"
		}
	}
	return groupName(st.Gid)
}

func groupList(gid uint32, groups []uint32) string {
	names := []string{groupName(gid)}
	for _, g := range groups {
		if g != gid {
			names = append(names, groupName(g))
		}
	}
	return strings.Join(names, ",")
}

// runAccessProbe is the probe child: it does what the shim does on start —
// load and trust-check shim.conf next to socket (shimproto.LoadShimConfig), then
// connect — printing one line each, and exits 1 when either fails.
func runAccessProbe(socket string, stdout io.Writer) int {
	code := 0
	setup := shimproto.LoadShimConfig(socket)
	if setup.Problem != nil {
		fmt.Fprintf(stdout, "shim.conf %s: %s\n", shimproto.ShimConfigPath(socket), setup.Problem.Error())
		code = 1
	}
	if setup.NoDial {
		return 1
	}
	conn, err := shimproto.Dial(socket, time.Second)
	if err != nil {
		fmt.Fprintf(stdout, "socket %s: %s\n", socket, describeAccessErr(err))
		return 1
	}
	conn.Close()
	fmt.Fprintf(stdout, "socket %s: ok\n", socket)
	return code
}

func describeAccessErr(err error) string {
	switch {
	case errors.Is(err, os.ErrPermission), strings.Contains(err.Error(), "permission denied"):
		return "permission denied"
	case errors.Is(err, os.ErrNotExist), strings.Contains(err.Error(), "no such file"):
		return "no such file"
	}
	return err.Error()
}

// checkServerHook asks the real git, as the server's user and with the
// server's environment, what the system and global gitconfig say about
// uploadpack.packObjectsHook: git honours it from nowhere else.
func checkServerHook(env checkEnv, s *gitServer, realGit string) checkResult {
	r := checkResult{name: "server hook"}
	if realGit == "" {
		r.status, r.detail = checkSkip, "no real git to ask"
		return r
	}
	if s.kind == kindGitea {
		r.status, r.detail = checkSkip, "Gitea writes its own global gitconfig ([git.config] in app.ini)"
		r.fix = "set uploadpack.packObjectsHook = " + env.shim + " under [git.config] in app.ini"
		return r
	}
	genv := []string{"PATH=/usr/bin:/bin"}
	home := ""
	if _, _, _, h, err := userIdentity(s.user); err == nil {
		home = h
	}
	for _, k := range []string{"HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM"} {
		if v, ok := s.env[k]; ok {
			genv = append(genv, k+"="+v)
			if k == "HOME" {
				home = ""
			}
		}
	}
	if home != "" {
		genv = append(genv, "HOME="+home)
	}
	var found []string
	for _, scope := range []string{"--system", "--global"} {
		cmd := exec.Command(realGit, "config", scope, "--includes", "--get", "uploadpack.packObjectsHook")
		cmd.Env = genv
		if os.Geteuid() == 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: s.uid, Gid: s.gid, Groups: s.groups}}
		}
		cmd.Dir = "/"
		out, err := cmd.Output()
		if v := strings.TrimSpace(string(out)); err == nil && v != "" {
			found = append(found, strings.TrimPrefix(scope, "--")+": "+v)
			if sameFile(strings.Fields(v)[0], env.shim) {
				r.status, r.detail = checkOK, "uploadpack.packObjectsHook = "+v+" ("+strings.TrimPrefix(scope, "--")+" config, read as "+s.user+")"
				return r
			}
		}
	}
	r.status = checkFail
	if len(found) > 0 {
		r.detail = "uploadpack.packObjectsHook is not the shim " + env.shim + ": " + strings.Join(found, "; ")
	} else {
		r.detail = "uploadpack.packObjectsHook is not set in the system or global gitconfig the server's git reads (as " + s.user + "): pack-objects runs without admission"
	}
	if v := s.env["GIT_CONFIG_NOSYSTEM"]; v != "" && v != "0" && v != "false" {
		r.detail += "; the server sets GIT_CONFIG_NOSYSTEM"
	}
	r.fix = "git config --system include.path /usr/share/sluice/gitconfig (or --global as " + s.user + "); " + wiringGuide
	return r
}

// checkServerTraffic is the proof of the wiring: what sluiced itself saw
// of this server — requests from its processes, and git commands its
// processes ran without the shim (the tracer's unwrapped execs).
func checkServerTraffic(s *gitServer, seen []*admitpb.ServerStatus, seenErr error, now time.Time) checkResult {
	r := checkResult{name: "server traffic"}
	prefix := fmt.Sprintf("[%d %s] ", s.pid, s.user)
	switch {
	case s.pid == 0:
		r.status, r.detail = checkSkip, "["+s.user+"] no server process to look up"
		return r
	case seenErr != nil:
		r.status, r.detail = checkSkip, prefix+"sluiced could not be asked: "+seenErr.Error()
		return r
	}
	var sv *admitpb.ServerStatus
	for _, x := range seen {
		if int(x.Pid) == s.pid {
			sv = x
		}
	}
	switch {
	case sv == nil:
		r.status = checkWarn
		r.detail = prefix + "sluiced has seen no request from this server yet"
		r.fix = "run a clone through the server, then check again; if it still says this, git is not reaching the shim"
	case sv.UnwrappedTotal > 0:
		r.status = checkFail
		r.detail = fmt.Sprintf("%s%d git commands run by this server bypassed sluice, the last %s (%s); %d went through it",
			prefix, sv.UnwrappedTotal, fmtAgo(sv.LastUnwrappedUnixUsec, now), sv.LastUnwrapped, sv.RequestsTotal)
		r.fix = "the checks above say which part of the wiring is missing; once fixed, restart the server: the count is since sluiced started"
	default:
		r.status = checkOK
		r.detail = fmt.Sprintf("%s%d requests from this server, the last %s; none bypassed sluice", prefix, sv.RequestsTotal, fmtAgo(sv.LastRequestUnixUsec, now))
	}
	return r
}
