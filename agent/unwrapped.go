package agent

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/gitwrap"
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

// unwrappedLogEvery bounds the unwrapped-exec log to one line per interval;
// the metric counts every one.
const unwrappedLogEvery = time.Second

// unwrappedLog rate-limits the log of unwrapped execs.
type unwrappedLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// GitExecuted is called for every exec of the real git the tracer sees. An
// exec outside every admitted process tree, of a subcommand the policy
// limits, went around sluice: a server calling git-core programs directly,
// a forgotten code path, a cron job. It is counted by subcommand
// (sluice_unwrapped_exec_total) and logged with what finds the hole: pid,
// parent and working directory.
func (a *Agent) GitExecuted(e GitExec) {
	inv := gitwrap.Parse(e.Argv)
	if e.Root != 0 || inv.Subcommand == "" {
		return
	}
	if r, _ := a.ruleFor(inv.Subcommand); r == nil {
		return
	}
	a.obs.Unwrapped(inv.Subcommand)
	a.unwrapped.mu.Lock()
	now := time.Now()
	if now.Sub(a.unwrapped.last) < unwrappedLogEvery {
		a.unwrapped.suppressed++
		a.unwrapped.mu.Unlock()
		return
	}
	a.unwrapped.last = now
	suppressed := a.unwrapped.suppressed
	a.unwrapped.suppressed = 0
	a.unwrapped.mu.Unlock()

	cwd, _ := os.Readlink("/proc/" + strconv.Itoa(e.PID) + "/cwd")
	argv := strings.Join(e.Argv, " ")
	if len(argv) > 256 {
		argv = argv[:256] + "…"
	}
	a.log.Warn("git ran without admission: it bypassed the sluice shim",
		zap.String("subcmd", inv.Subcommand), zap.Int("pid", e.PID), zap.Int("ppid", e.PPID),
		zap.String("parent_comm", e.ParentComm), zap.String("cwd", cwd),
		zap.String("filename", e.Filename), zap.String("argv", argv),
		zap.Int("not_logged_since_last", suppressed),
		zap.String("fix", "make the server run git through the shim (PATH and GIT_EXEC_PATH, see packaging/README.md)"))
}
