package main

import (
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/gitwrap"
)

// What a refused client sees.
//
// The shim refuses before git has written anything, so when it stands in
// for upload-pack, receive-pack or upload-archive, stdout is the protocol
// stream and still empty: the refusal goes there as one "ERR <line>"
// pkt-line, which every git client prints as
//
//	fatal: remote error: sluice: <reason> (limit "<name>"); try again in <N>s (correlation id <id>)
//
// on git://, ssh, file:// and smart HTTP (git-http-backend relays stdout
// as the response body, after its "# service=…" header in v0/v1), protocol
// v0, v1 and v2. The line also goes to stderr — git daemon's and the web
// server's log — except over ssh, where stderr reaches the client and git
// would print it a second time. Hook mode (pack-objects) and any other
// subcommand only have stderr, which upload-pack relays as "remote: …".
//
// upload-archive's client sends its arguments before it reads the answer,
// and an HTTP POST carries a request body: that input is read (bounded by
// drainMax and drainFor) so that git-http-backend does not fail writing it
// and a git:// socket is not reset with the answer unread. A push's POST
// (receive-pack --stateless-rpc) that asked for side-band gets its refusal
// as a band 3 packet — its client demultiplexes the answer and would read
// a bare ERR as "protocol error: bad band #69" — printed as
// "remote: sluice: …"; the ref advertisement before it (GET info/refs) is
// never multiplexed and gets the ERR.
const (
	drainMax = 64 << 20
	drainFor = 5 * time.Second
	// failClosedRetry is the retry hint when the agent could not be asked:
	// long enough for a restarted agent to be back.
	failClosedRetry = "5s"
)

// refusing is the invocation being served, for unavailable's refusal (the
// shim runs one command on one goroutine).
var refusing *gitwrap.Invocation

// refuse tells the client why it may not run git and returns the shim's
// exit code. line is the one-line "sluice: …" reason for the ERR packet;
// detail is the stderr line (it may name paths or uids the ERR packet
// leaves out).
func refuse(inv *gitwrap.Invocation, line, detail string) int {
	st := gitwrap.ClientStream(inv)
	// A client that already hung up must not turn the refusal into death
	// by SIGPIPE (the Go runtime raises it for EPIPE on fd 1 and 2): the
	// shim still exits 75.
	signal.Ignore(syscall.SIGPIPE)
	switch {
	case st.DrainEOF:
		// An HTTP POST: read the request first (its first line says
		// whether a push's answer is multiplexed), then answer.
		first := gitwrap.Drain(0, false, drainMax, time.Now().Add(drainFor))
		if inv.Subcommand == "receive-pack" && gitwrap.SidebandRequested(first) {
			os.Stdout.Write(gitwrap.AppendBand3Pkt(nil, line))
		} else {
			os.Stdout.Write(gitwrap.AppendErrPkt(nil, line))
		}
	case st.ERR:
		os.Stdout.Write(gitwrap.AppendErrPkt(nil, line))
		if st.DrainFlush {
			gitwrap.Drain(0, true, drainMax, time.Now().Add(drainFor))
		}
	}
	if !st.ERR || os.Getenv("SSH_CONNECTION") == "" || detail != line {
		os.Stderr.WriteString(detail + "\n")
	}
	return exitTempFail
}

// rejection returns the client's line and the stderr line for a rejection:
// the agent's line with the correlation id the agent logs. Rejections that
// are about the server's own configuration (a caller not allowed by
// admit_users, an invalid request) name no files or uids in the ERR packet.
func rejection(rep *shimproto.Reply, subcommand, corr string) (line, detail string) {
	detail = withCorrelation(rejectLine(rep, subcommand), corr)
	switch rep.Reason {
	case shimproto.ReasonPermission, shimproto.ReasonInvalid:
		return withCorrelation("sluice: the server's admission check refused "+subcommand+
			" (a server configuration problem); tell the operator", corr), detail
	}
	return detail, detail
}

// withCorrelation appends the correlation id to a client line.
func withCorrelation(line, corr string) string {
	if corr == "" {
		return line
	}
	return line + " (correlation id " + corr + ")"
}

// failClosedLine is the client's line when fail_mode is "closed" and the
// agent gave no answer; the socket path and error stay in the detail.
func failClosedLine(corr string) string {
	return withCorrelation("sluice: admission service unavailable (fail_mode closed); try again in "+failClosedRetry, corr)
}
