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

// The unwrapped-exec log is a token bucket: bursts of up to
// unwrappedLogBurst lines, then one per unwrappedLogEvery; the metric
// counts every exec.
const (
	unwrappedLogEvery = time.Second
	unwrappedLogBurst = 10
)

// unwrappedLog rate-limits the log of unwrapped execs.
type unwrappedLog struct {
	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
}

// allow takes a token at now; it returns false (and counts the line as
// suppressed) when none is left.
func (u *unwrappedLog) allow(now time.Time) (ok bool, suppressedBefore int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.last.IsZero() {
		u.tokens = unwrappedLogBurst
	} else {
		u.tokens = min(unwrappedLogBurst, u.tokens+now.Sub(u.last).Seconds()/unwrappedLogEvery.Seconds())
	}
	u.last = now
	if u.tokens < 1 {
		u.suppressed++
		return false, 0
	}
	u.tokens--
	n := u.suppressed
	u.suppressed = 0
	return true, n
}

// GitExecuted is called for every exec of the real git the tracer sees. An
// exec outside every admitted process tree, of a subcommand the policy
// limits, went around sluice: a server calling git-core programs directly,
// a forgotten code path, a cron job. It is counted by subcommand
// (sluice_unwrapped_exec_total) and logged with what finds the hole: pid,
// parent and working directory.
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
	a.obs.Unwrapped(inv.Subcommand)
	ok, suppressed := a.unwrapped.allow(time.Now())
	if !ok {
		return
	}

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
