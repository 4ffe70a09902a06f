package agent

import (
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/gitwrap"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// GitExec is an exec of the real git seen by the tracer.
type GitExec struct {
	PID, PPID int
	// Root is the admitted process this one descends from (itself when
	// the shim exec'd it in place), 0 when it descends from none.
	Root       int
	ParentComm string
	Filename   string
	Argv       []string
}

// GitExecuted is called for every exec of the real git the tracer sees. An
// exec outside every admitted tree, of a subcommand the policy limits, went
// around sluice: a server calling git-core programs directly, a forgotten
// code path. Within [ebpf] unwrapped_scope (servers.go: by default only
// execs that descend from a Git server) it is counted by subcommand
// (sluice_unwrapped_exec_total), attributed to its server (`sluice
// status`), and logged with what finds the hole — pid, parent, working
// directory, argv — at once for a server's first, then at most once a
// minute per server with the count since the previous line.
func (a *Agent) GitExecuted(e GitExec) {
	inv := gitwrap.Parse(e.Argv)
	if inv.Subcommand == "" {
		return
	}
	if e.Root != 0 {
		// Inside an admitted tree: a pack-objects under an upload-pack ends
		// that upload-pack's negotiation (timeouts.go).
		a.NoteGitExec(e.Root, inv.Subcommand)
		return
	}
	if r, _ := a.ruleFor(inv.Subcommand); r == nil {
		return
	}
	pol := a.Policy()
	server, ok := a.servers.serverOf(e.PID, pol.EBPF.ServerComms)
	if !ok && e.PPID > 1 {
		server, ok = a.servers.serverOf(e.PPID, pol.EBPF.ServerComms) // e.PID already gone
	}
	if !ok {
		if pol.EBPF.UnwrappedScope != policy.ScopeAll {
			return // not a Git server's: a developer's or a cron job's git
		}
		server = serverID{Comm: e.ParentComm, PID: e.PPID}
	}
	a.obs.Unwrapped(inv.Subcommand)
	cwd, _ := procfs.Default.Cwd(e.PID)
	logNow, count := a.servers.noteUnwrapped(server, describeExec(e.PID, inv.Subcommand, cwd), time.Now())
	if !logNow {
		return
	}
	argv := strings.Join(e.Argv, " ")
	if len(argv) > 256 {
		argv = argv[:256] + "…"
	}
	a.log.Warn("git ran without admission: it bypassed the sluice shim",
		zap.String("server", server.Comm), zap.Int("server_pid", server.PID),
		zap.Int("count_since_last_line", count),
		zap.String("subcmd", inv.Subcommand), zap.Int("pid", e.PID), zap.Int("ppid", e.PPID),
		zap.String("parent_comm", e.ParentComm), zap.String("cwd", cwd),
		zap.String("filename", e.Filename), zap.String("argv", argv),
		zap.String("fix", "make the server run git through the shim (PATH and GIT_EXEC_PATH, see packaging/README.md); sluice check --pid "+strconv.Itoa(server.PID)+" says what is missing"))
}
