// Command sluice-shim stands in for git (installed as git, git-upload-pack,
// git-receive-pack, git-upload-archive, or configured as
// uploadpack.packObjectsHook) and asks sluiced for admission before running
// the real git. It runs once per git process, so start-up cost is the
// product's hottest path: it links no gRPC, protobuf, net, fmt or logging
// library (deps_test.go enforces the budget).
//
// Flow: parse argv → read shim.conf next to the socket, only if it and its
// directory are trusted (shimproto.LoadShimConfig: owned by root or the agent,
// not writable by others, no symbolic link; otherwise fail closed without
// dialling, one "sluice:" line naming the path, owner and mode) → find the real git →
// a subcommand shim.conf does not match is exec'd at once (no socket, no
// environment changes but SLUICE_SHIM_EXEC, the exec-loop guard). A matched
// one connects (50 ms connect timeout), sends the AdmitRequest and waits:
// the first answer within 1 s, the final one within admit_timeout_ms.
//
//   - Admitted in exec mode (the agent runs its eBPF tracer): the shim
//     execs the real git in place — same pid, no resident shim; the agent
//     holds the lease until that process exits and reads its CPU, max RSS
//     and exit status from the kernel.
//   - Admitted in supervising mode (no tracer): git runs as a supervised
//     child (Pdeathsig SIGKILL, signals forwarded, stdio inherited), the
//     connection is held open as the lease, Finished (exit status, CPU, max
//     RSS, real time) is sent, and the shim exits exactly as git did (same
//     code, or the same signal re-raised).
//   - Queued longer than queue_feedback_after (shim.conf): a "sluice:
//     waiting for a slot …" line on stderr, refreshed in place (feedback.go).
//   - Rejected (queue full, waited too long, invalid request, or the
//     caller's uid/gid not allowed by [agent] admit_users/admit_groups): the
//     agent's one-line message ("sluice: …") with the correlation id goes
//     to the client as an ERR pkt-line when the shim stands in for
//     upload-pack, receive-pack or upload-archive, and to stderr; the shim
//     exits 75 (EX_TEMPFAIL: "try again later"). In hook mode the client
//     sees it as "remote: sluice: …". fail_mode "closed" refuses the same
//     way (reject.go).
//   - Rejected as unavailable (the agent is shutting down), a waiting
//     connection dropped, or no socket while the agent's stopping mark is
//     fresh: the agent is restarting; the shim reconnects and queues again
//     for restart_grace_ms (reconnect.go), then as if the agent were
//     unreachable.
//   - Agent unreachable, no answer in time or a broken answer: fail_mode
//     "open" (default) execs git without a lease and logs a warning;
//     "closed" prints why to stderr and exits 75. Permission denied on the
//     socket or shim.conf (the Git server's user is not in the socket
//     group): the fail mode from the socket directory's sticky bit, and the
//     message names the group to join.
//   - The real git cannot be found, or would be the shim itself: a
//     "sluice: …" line on stderr and exit 127.
//
// Warnings go to $SLUICE_SHIM_LOG when set, else as one syslog datagram to
// /dev/log (tag sluice-shim, facility user), else to stderr — never to
// stderr when avoidable, because it may reach the git client.
// The shim has one busy goroutine and lives for one git command: it needs no
// GOMAXPROCS derived from cgroup CPU limits, nor the runtime's periodic
// GOMAXPROCS updates.
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/gitwrap"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

// Exit codes of the shim itself (git's own codes pass through).
const (
	exitTempFail = 75  // EX_TEMPFAIL: rejected, or unavailable with fail_mode closed
	exitNoGit    = 127 // the real git cannot be found or run
)

// dialTimeout bounds connect(2) on the agent's socket (it blocks only when
// the listen backlog is full).
const dialTimeout = 50 * time.Millisecond

func main() {
	os.Exit(run(os.Args))
}

func run(argv []string) int {
	inv := gitwrap.Parse(argv)
	refusing = &inv
	if inv.ShimVersion {
		os.Stdout.WriteString("sluice-shim " + version + " " + runtime.Version() + "\n")
		return 0
	}
	sock := shimproto.SocketPath("")
	setup := shimproto.LoadShimConfig(sock)
	cfg := setup.Config
	git, err := gitwrap.FindRealGit(os.Getenv, cfg.GitBin)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return exitNoGit
	}
	gitArgv := gitwrap.GitArgv(&inv)
	matched := cfg.Matches(inv.Subcommand)
	if setup.Problem != nil && (!matched || !setup.NoDial) {
		// A matched command that may not dial reports it once, below.
		warn("shim config: " + setup.Problem.Error())
	}
	var pc *packCache // pack cache (packcache.go): a hit ends here
	if inv.Hook && cfg.PackCache && !setup.NoDial && packCacheable(&inv) {
		var code int
		var done bool
		if pc, code, done = packCacheLookup(sock, &inv); done {
			return code
		}
	}
	if !matched {
		if pc.writer() {
			return pc.write(nil, git, gitArgv, os.Environ())
		}
		return execGit(git, gitArgv, os.Environ())
	}

	// Matched: ask for admission.
	cwd, err := syscall.Getwd()
	if err != nil {
		cwd = "/"
	}
	env := os.Environ()
	corr, generated := gitwrap.CorrelationID(os.Getenv)
	if generated {
		env = gitwrap.SetEnv(env, gitwrap.CorrelationEnv, corr)
	}
	req := shimproto.AdmitRequest{
		Command:       inv.Command,
		Subcommand:    inv.Subcommand,
		Repo:          []byte(gitwrap.Repo(&inv, cwd, os.Getenv)),
		RemoteIP:      gitwrap.RemoteIP(os.Getenv),
		User:          gitwrap.User(os.Getenv),
		CorrelationID: corr,
		Hook:          inv.Hook,
		CanExec:       !pc.writer(), // a cache writer tees pack-objects' stdout
	}
	// Fit what argv and the environment gave into the agent's bounds, so
	// an odd CORRELATION_ID or user name never turns into a rejection.
	req.Clamp()
	if setup.NoDial {
		return unavailable(&setup, sock, setup.Problem, git, gitArgv, env, corr)
	}
	// Dial, ask and wait; a restarting agent is waited for (reconnect.go).
	conn, rep, err := admitRetrying(&setup, sock, &req)
	if err != nil {
		return unavailable(&setup, sock, err, git, gitArgv, env, corr)
	}
	if !rep.Admitted {
		conn.Close()
		line, detail := rejection(&rep, inv.Subcommand, corr)
		return refuse(&inv, line, detail)
	}

	if pc.writer() && !rep.Exec {
		return pc.write(conn, git, gitArgv, env)
	}
	if rep.Exec {
		// Exec mode: the agent follows this very process to its exit in
		// the kernel, so git takes over the pid and nothing stays
		// resident. The connection is close-on-exec.
		return execGit(git, gitArgv, env)
	}

	// Supervise locks this goroutine to its thread for good (Pdeathsig is
	// tied to the forking thread). Not in init: a thread locked at start-up
	// makes the runtime start an extra template thread, which the unmatched
	// path would pay for.
	res, err := gitwrap.Supervise(git, gitArgv, env)
	if err != nil {
		conn.Close()
		os.Stderr.WriteString(err.Error() + "\n")
		return exitNoGit
	}
	if err := conn.Finish(&shimproto.Finished{
		ExitCode:   res.ExitCode(),
		Signal:     res.Signal(),
		UserUsec:   res.UserUsec(),
		SystemUsec: res.SystemUsec(),
		MaxRSSKiB:  res.MaxRSSKiB(),
		RealUsec:   res.Real.Microseconds(),
	}); err != nil {
		warn("send Finished to " + sock + ": " + err.Error() + " (correlation_id " + corr + ")")
	}
	conn.Close()
	gitwrap.ExitLike(res.Status)
	return exitNoGit // not reached
}

// execGit replaces the shim with git; it returns only when exec failed.
func execGit(git string, argv, env []string) int {
	err := gitwrap.Exec(git, argv, env)
	os.Stderr.WriteString(err.Error() + "\n")
	return exitNoGit
}

// unavailable applies the fail mode when the agent cannot give an answer.
// setup.FailWhy says where the fail mode came from (shim.conf, the socket
// directory's sticky bit, or an untrusted place that forces "closed").
func unavailable(setup *shimproto.ShimSetup, sock string, reason error, git string, argv, env []string, corr string) int {
	if setup.Config.FailClosed {
		return refuse(refusing, failClosedLine(corr), "sluice: admission service unavailable at "+sock+" ("+reason.Error()+
			"); "+setup.FailWhy+": try again in "+failClosedRetry+" (correlation id "+corr+")")
	}
	warn("admission service unavailable at " + sock + " (" + reason.Error() +
		"); running git without a lease (fail_mode open), correlation_id " + corr)
	return execGit(git, argv, env)
}

// rejectLine makes the agent's message one line starting with "sluice: ".
func rejectLine(rep *shimproto.Reply, subcommand string) string {
	msg, _, _ := strings.Cut(rep.Message, "\n")
	msg = strings.TrimSpace(strings.ReplaceAll(msg, "\r", ""))
	if msg == "" {
		msg = "sluice: " + subcommand + " rejected"
		if rep.Limit != "" {
			msg += " by limit " + rep.Limit
		}
		msg += "; try again later"
	}
	if !strings.HasPrefix(msg, "sluice: ") {
		msg = "sluice: " + msg
	}
	return msg
}
