package main

import (
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// Riding out an agent restart.
//
// A deploy (`systemctl restart sluiced`) during a storm is exactly when
// protection is needed, yet every command queued at that moment used to
// lose its connection and run without a lease (fail_mode open) or be
// refused (closed). Now the shim tells a restart from a missing agent and
// waits it out for restart_grace (shim.conf, [agent] restart_grace,
// default 5s, reloadable):
//
//   - Evidence of a restart: the agent answered Rejected UNAVAILABLE (it
//     says that only while shutting down; connection caps answer
//     otherwise), or closed a connection that was waiting for an answer
//     (a crash or SIGKILL: systemd restarts it), or the socket is missing
//     or refuses connections while the agent's stopping mark (written when
//     it begins to stop, removed when its successor is ready:
//     agent.StoppingMark) is younger than the grace.
//   - Then the shim reconnects every restartPoll (one connect(2) on a Unix
//     socket: cheap; the new agent's listen backlog holds it until the
//     agent has adopted the running commands and serves) and sends its
//     request again, until the grace of the restart it is riding out is
//     over, then applies fail_mode as before. A timeout or a malformed
//     answer is not a restart: fail_mode at once.
//   - Each restart has its own grace: from its mark, or from the moment an
//     agent that was serving said it is stopping or dropped the waiting
//     connection. A shim that rode out one restart, queued again and then
//     meets the next one (deploys in a row, a restart loop) gets the grace
//     again rather than what was left of the first one (the soak that
//     restarts the agent every 2 s showed shims giving up after 5 s of
//     waiting across three restarts). The admission timeout still bounds
//     the whole wait.
//   - Place in the queue: a re-sent request says when it was first sent
//     (queued_since_unix_nano), and the new agent queues it by that time
//     (agent/requeue.go): waiters keep their old order among themselves
//     and stay ahead of fresh arrivals, whatever order their reconnects
//     land in. Only a waiter that reconnects after a slot was free and
//     taken (the limit had room) can be passed: FIFO, as far as a queue
//     that is rebuilt can keep it.
//   - A crash (SIGKILL, OOM) leaves no mark: shims that were waiting ride
//     it out (their connection dropped), but one arriving while no agent
//     listens sees a socket nobody accepts on and cannot tell a crash
//     that systemd will restart from an agent that is gone for good, so
//     it applies fail_mode at once, as before (waiting there would cost
//     every command restart_grace for as long as the agent stays dead).
//   - Nothing runs without a lease meanwhile: the commands that were
//     running were adopted from the state directory before the first
//     admission, so the limit counts them from the new agent's start.
const restartPoll = 25 * time.Millisecond

// admitRetrying asks for admission, riding out a restart as described
// above. It returns the connection holding the lease and the answer, or
// an error for the fail mode (never a Rejected UNAVAILABLE answer).
func admitRetrying(setup *shimproto.ShimSetup, sock string, req *shimproto.AdmitRequest) (*shimproto.Conn, shimproto.Reply, error) {
	cfg := &setup.Config
	deadline := time.Now().Add(cfg.AdmitTimeout)
	var fb *feedback
	if cfg.QueueFeedbackAfter > 0 {
		fb = newFeedback(cfg.QueueFeedbackAfter, req.Repo)
	}
	var graceEnd time.Time
	first := time.Now() // when the request was first sent: its place in the queue
	tries := 0
	for {
		tries++
		if tries > 1 && !graceEnd.IsZero() {
			req.QueuedSince = first.UnixNano()
		}
		var rep shimproto.Reply
		// fresh: an agent that was serving just said it stops, or dropped
		// us: the evidence of a restart beginning now.
		restarting, fresh := false, false
		conn, err := shimproto.Dial(sock, dialTimeout)
		if err != nil {
			if errors.Is(err, syscall.EACCES) {
				err = errors.New("permission denied connecting as uid " + strconv.Itoa(syscall.Geteuid()) + "; " + shimproto.GroupFix(setup.SocketGID))
			} else if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
				if mark, ok := stoppingMark(sock); ok {
					restarting = true
					if end := mark.Add(cfg.RestartGrace); end.After(graceEnd) {
						graceEnd = end // this restart's grace
					}
				} else if !graceEnd.IsZero() {
					restarting = true // already riding out a restart
				}
			}
		} else {
			if fb != nil {
				rep, err = conn.AdmitTicking(req, deadline, fb.queuedAt, feedbackTick, fb.tick)
			} else {
				rep, err = conn.Admit(req, deadline, nil)
			}
			if err == nil && (rep.Admitted || rep.Reason != shimproto.ReasonUnavailable) {
				if fb != nil {
					fb.done(rep.Admitted)
				}
				return conn, rep, nil
			}
			conn.Close()
			if err == nil {
				why := strings.TrimPrefix(rep.Message, "sluice: ")
				if why == "" {
					why = "agent shutting down"
				}
				err = errors.New(why)
				restarting, fresh = true, true
			} else if dropped(err) {
				restarting, fresh = true, true
			}
		}
		now := time.Now()
		if restarting && (graceEnd.IsZero() || fresh && now.Add(cfg.RestartGrace).After(graceEnd)) {
			graceEnd = now.Add(cfg.RestartGrace)
		}
		if !restarting || cfg.RestartGrace <= 0 || now.After(graceEnd) || now.After(deadline) {
			if fb != nil {
				fb.done(false)
			}
			if restarting && cfg.RestartGrace > 0 {
				err = errors.New(err.Error() + "; the agent was not back within restart_grace " + seconds(cfg.RestartGrace) + " (" + strconv.Itoa(tries) + " attempts)")
			}
			return nil, shimproto.Reply{}, err
		}
		time.Sleep(restartPoll)
	}
}

// dropped reports whether an Admit error means the agent went away
// mid-conversation (as opposed to a timeout or a malformed answer).
func dropped(err error) bool {
	s := err.Error()
	return strings.Contains(s, "agent closed the connection") || strings.HasPrefix(s, "send admit request") ||
		strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
}

// stoppingMark returns the time the agent left its stopping mark next to
// the socket, and whether it is there and younger than a minute
// (restart_grace's upper bound).
func stoppingMark(sock string) (time.Time, bool) {
	var st syscall.Stat_t
	if syscall.Stat(filepath.Join(filepath.Dir(sock), "stopping"), &st) != nil {
		return time.Time{}, false
	}
	t := time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	return t, time.Since(t) < time.Minute
}
