package agent

// servers.go tells which Git server a git process belongs to, so that the
// agent can say, per server, whether it routes git through sluice: every
// admission request and every unwrapped exec (an exec of a limited git
// subcommand outside every admitted tree, seen by the eBPF tracer) is
// attributed to the Git server process it descends from. `sluice status`
// lists the servers; `sluice check` looks up the one it checks.
//
// A Git server is the topmost ancestor (within maxAncestorDepth) whose
// command name is one of serverComms or [ebpf] server_comms: git daemon,
// fcgiwrap and git-http-backend, Gitea/Forgejo, gitolite, the common web
// servers, and sshd. Under sshd only non-interactive sessions count — a
// chain with a shell that is not running `-c COMMAND` (an operator's login)
// is somebody working on the host, not the Git server — so that a git
// fetch in an admin's shell is not reported as a hole in the wiring.
//
// With [ebpf] unwrapped_scope = "servers" (the default), an unwrapped exec
// that belongs to no Git server is not counted nor logged: a developer's
// or a cron job's git on the same host is none of sluice's business.
// "all" counts every one, as before.

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/procfs"
)

// serverComms are the command names (as /proc/PID/comm shows them, at
// most 15 bytes) of processes that serve git to clients.
var serverComms = []string{
	"git-daemon", "fcgiwrap", "git-http-backen", // comm keeps 15 bytes of git-http-backend
	"gitea", "forgejo", "gitolite-shell", "gitaly", "gitlab-shell",
	"apache2", "httpd", "lighttpd", "uwsgi",
	"sshd",
}

// shells are interpreters whose presence in an sshd session's chain, when
// not running `-c COMMAND`, marks an interactive login.
var shells = []string{"sh", "bash", "dash", "zsh", "fish", "ksh", "mksh", "tcsh", "csh"}

// serverID names a Git server process.
type serverID struct {
	Comm string
	PID  int
}

// serverStats is what the agent saw of one Git server.
type serverStats struct {
	Requests         uint64
	LastRequest      time.Time
	Unwrapped        uint64
	LastUnwrapped    time.Time
	LastUnwrappedCmd string // pid, subcommand and cwd of the last one, for the operator

	// For the aggregated log: unwrapped execs since the last line.
	sinceLog int
	lastLog  time.Time
}

// maxServers bounds the server table: past it, the least recently seen
// server is forgotten.
const maxServers = 256

// unwrappedLogEvery is how often, at most, one server's unwrapped execs are
// logged after the first (which is logged at once): one line per server per
// interval with the count since the previous line.
const unwrappedLogEvery = time.Minute

// serverTable attributes requests and unwrapped execs to Git servers.
type serverTable struct {
	proc procfs.FS

	mu sync.Mutex // guards the fields below
	m  map[serverID]*serverStats
}

func newServerTable(proc procfs.FS) *serverTable {
	return &serverTable{proc: proc, m: make(map[serverID]*serverStats)}
}

// serverOf returns the Git server pid descends from (pid itself included),
// with extra command names besides serverComms; ok is false when it
// descends from none (or its ancestry cannot be read).
func (t *serverTable) serverOf(pid int, extra []string) (serverID, bool) {
	var found serverID
	interactive := false
	cur := pid
	for depth := 0; depth <= maxAncestorDepth && cur > 1; depth++ {
		comm, err := t.proc.Comm(cur)
		if err != nil {
			break
		}
		switch {
		case found.PID != 0 && comm == found.Comm:
			found.PID = cur // a forked worker: keep climbing to the topmost
		case found.PID != 0:
			return found, true
		case slices.Contains(serverComms, comm) || slices.Contains(extra, comm):
			if comm == "sshd" && interactive {
				return serverID{}, false
			}
			found = serverID{Comm: comm, PID: cur}
		case slices.Contains(shells, comm):
			if argv, err := t.proc.Cmdline(cur, maxCmdline); err == nil && !slices.Contains(argv, "-c") {
				interactive = true
			}
		}
		pp, err := t.proc.PPID(cur)
		if err != nil {
			break
		}
		cur = pp
	}
	return found, found.PID != 0
}

// statsLocked returns the entry of id, creating it (and forgetting the
// least recently seen server when the table is full).
func (t *serverTable) statsLocked(id serverID) *serverStats {
	if s, ok := t.m[id]; ok {
		return s
	}
	if len(t.m) >= maxServers {
		var oldest serverID
		var when time.Time
		for k, s := range t.m {
			seen := s.LastRequest
			if s.LastUnwrapped.After(seen) {
				seen = s.LastUnwrapped
			}
			if when.IsZero() || seen.Before(when) {
				oldest, when = k, seen
			}
		}
		delete(t.m, oldest)
	}
	s := &serverStats{}
	t.m[id] = s
	return s
}

// noteRequest attributes an admission request from pid.
func (t *serverTable) noteRequest(pid int, extra []string, now time.Time) {
	id, ok := t.serverOf(pid, extra)
	if !ok {
		return
	}
	t.mu.Lock()
	s := t.statsLocked(id)
	s.Requests++
	s.LastRequest = now
	t.mu.Unlock()
}

// noteUnwrapped attributes an unwrapped exec to id and says whether to log
// it now, with how many execs the line stands for (itself included).
func (t *serverTable) noteUnwrapped(id serverID, what string, now time.Time) (logNow bool, count int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.statsLocked(id)
	s.Unwrapped++
	s.LastUnwrapped = now
	s.LastUnwrappedCmd = what
	s.sinceLog++
	if !s.lastLog.IsZero() && now.Sub(s.lastLog) < unwrappedLogEvery {
		return false, 0
	}
	count, s.sinceLog, s.lastLog = s.sinceLog, 0, now
	return true, count
}

// ServerInfo is one Git server as `sluice status` shows it.
type ServerInfo struct {
	Comm             string
	PID              int
	Requests         uint64
	LastRequest      time.Time
	Unwrapped        uint64
	LastUnwrapped    time.Time
	LastUnwrappedCmd string
}

// snapshot lists the servers seen, by pid.
func (t *serverTable) snapshot() []ServerInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ServerInfo, 0, len(t.m))
	for id, s := range t.m {
		out = append(out, ServerInfo{Comm: id.Comm, PID: id.PID, Requests: s.Requests, LastRequest: s.LastRequest,
			Unwrapped: s.Unwrapped, LastUnwrapped: s.LastUnwrapped, LastUnwrappedCmd: s.LastUnwrappedCmd})
	}
	slices.SortFunc(out, func(a, b ServerInfo) int { return a.PID - b.PID })
	return out
}

// Servers lists the Git servers the agent has seen requests or unwrapped
// execs from.
func (a *Agent) Servers() []ServerInfo { return a.servers.snapshot() }

// describeExec is the operator's summary of an unwrapped exec.
func describeExec(pid int, sub, cwd string) string {
	var b strings.Builder
	b.WriteString("pid ")
	b.WriteString(strconv.Itoa(pid))
	b.WriteString(" git ")
	b.WriteString(sub)
	if cwd != "" {
		b.WriteString(" in ")
		b.WriteString(cwd)
	}
	return b.String()
}
