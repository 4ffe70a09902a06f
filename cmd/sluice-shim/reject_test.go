package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/gitwrap"
)

const fullMsg = `sluice: too many upload-pack requests for this repository: 1 running and this rule does not queue (limit "upload-pack"); try again in 10s`

func rejectWith(reason int32, msg string) func(shimproto.AdmitRequest) []shimproto.ServerMsg {
	return func(shimproto.AdmitRequest) []shimproto.ServerMsg {
		return []shimproto.ServerMsg{{Kind: shimproto.ServerRejected, Reply: shimproto.Reply{Reason: reason, Limit: "upload-pack", Message: msg}}}
	}
}

// errPkt is what the client must read: one ERR pkt-line.
func errPkt(line string) string { return string(gitwrap.AppendErrPkt(nil, line)) }

// refusedRun runs the shim as argv with stdin from a file holding input and
// returns stdout, stderr and how many bytes of input the shim read.
func refusedRun(t *testing.T, e *env, argv []string, input string, extra ...string) (stdout, stderr string, read int64) {
	t.Helper()
	in := filepath.Join(t.TempDir(), "stdin")
	if err := os.WriteFile(in, []byte(input), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := e.cmd(argv, append([]string{"FAKE_GIT=exit:0", "CORRELATION_ID=c0ffee"}, extra...)...)
	var out bytes.Buffer
	c.Stdin, c.Stdout = f, &out
	res := runCmd(t, c)
	if !res.ws.Exited() || res.ws.ExitStatus() != exitTempFail {
		t.Errorf("%q: %s, want exit %d", argv, describe(res.ws), exitTempFail)
	}
	if _, ran := e.gitRan(); ran {
		t.Errorf("%q: git ran although refused", argv)
	}
	off, _ := f.Seek(0, io.SeekCurrent)
	return out.String(), res.stderr, off
}

func TestRefusalOnEachStream(t *testing.T) {
	e := newEnv(t)
	startAgent(t, e.sock, rejectWith(shimproto.ReasonMaxSize, fullMsg))
	line := fullMsg + " (correlation id c0ffee)"
	archiveArgs := "0012argument HEAD\n" + "0000"
	post := "0032want 0123456789012345678901234567890123456789\n00000009done\n"
	cmd := "0000000000000000000000000000000000000000 0123456789012345678901234567890123456789 refs/heads/x\x00"
	push := string(gitwrap.AppendFlush(must(gitwrap.AppendPktString(nil, cmd+" report-status side-band-64k")))) + "PACK…"
	pushPlain := string(gitwrap.AppendFlush(must(gitwrap.AppendPktString(nil, cmd+" report-status")))) + "PACK…"
	for _, c := range []struct {
		name       string
		argv       []string
		extra      []string
		input      string
		wantStdout string
		wantStderr string
		wantRead   int64
	}{
		// git daemon and file://: ERR on stdout, the line on stderr (the
		// daemon's log); nothing read (the client waits for the server).
		{"daemon upload-pack", []string{"git", "upload-pack", "--strict", "--timeout=0", "."}, nil, "", errPkt(line), line + "\n", 0},
		{"receive-pack", []string{"git-receive-pack", "."}, nil, "", errPkt(line), line + "\n", 0},
		// upload-archive reads its arguments (up to the flush: see
		// gitwrap's TestDrain; from a file one read takes all).
		{"upload-archive", []string{"git-upload-archive", "."}, nil, archiveArgs + "more", errPkt(line), line + "\n", int64(len(archiveArgs + "more"))},
		// ssh: stderr reaches the client, which prints the ERR: no copy.
		{"ssh upload-pack", []string{"git-upload-pack", "."}, []string{"SSH_CONNECTION=127.0.0.1 5 127.0.0.1 22"}, "", errPkt(line), "", 0},
		// git-http-backend: info/refs reads nothing, the POST body is read.
		{"http info/refs", []string{"git", "upload-pack", "--stateless-rpc", "--advertise-refs", "."}, nil, "body", errPkt(line), line + "\n", 0},
		{"http POST", []string{"git", "upload-pack", "--stateless-rpc", "."}, nil, post, errPkt(line), line + "\n", int64(len(post))},
		// A push's POST that asked for side-band: a band 3 packet.
		{"http push POST", []string{"git", "receive-pack", "--stateless-rpc", "."}, nil, push, string(gitwrap.AppendBand3Pkt(nil, line)), line + "\n", int64(len(push))},
		{"http push POST without side-band", []string{"git", "receive-pack", "--stateless-rpc", "."}, nil, pushPlain, errPkt(line), line + "\n", int64(len(pushPlain))},
		// Hook mode: stdout is pack data for upload-pack; stderr only.
		{"hook pack-objects", []string{"sluice-shim", "git", "pack-objects", "--revs", "--stdout"}, []string{"GIT_DIR=."}, "", "", line + "\n", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.Remove(e.out)
			stdout, stderr, read := refusedRun(t, e, c.argv, c.input, c.extra...)
			if stdout != c.wantStdout {
				t.Errorf("stdout %q, want %q", stdout, c.wantStdout)
			}
			if stderr != c.wantStderr {
				t.Errorf("stderr %q, want %q", stderr, c.wantStderr)
			}
			if read != c.wantRead {
				t.Errorf("read %d bytes of stdin, want %d", read, c.wantRead)
			}
		})
	}
}

// A caller refused by admit_users gets no uid or file name in the ERR
// packet; the detail stays on stderr.
func TestRefusalPermissionHidesDetail(t *testing.T) {
	e := newEnv(t)
	detail := "sluice: permission denied: uid 65534 (gid 65534) may not ask for admission ([agent] admit_users / admit_groups in /etc/sluice/sluice.toml); add the Git server's user or group there"
	startAgent(t, e.sock, rejectWith(shimproto.ReasonPermission, detail))
	stdout, stderr, _ := refusedRun(t, e, []string{"git-upload-pack", "."}, "")
	if strings.Contains(stdout, "65534") || strings.Contains(stdout, "/etc/sluice") ||
		!strings.Contains(stdout, "ERR sluice: the server's admission check refused upload-pack") || !strings.Contains(stdout, "(correlation id c0ffee)") {
		t.Errorf("stdout %q", stdout)
	}
	if stderr != detail+" (correlation id c0ffee)\n" {
		t.Errorf("stderr %q", stderr)
	}
}

// fail_mode closed: the client hears why without the socket path.
func TestRefusalFailClosed(t *testing.T) {
	e := newEnv(t)
	e.config(shimproto.ShimConfig{FailClosed: true, Match: []string{"upload-pack"}})
	stdout, stderr, _ := refusedRun(t, e, []string{"git-upload-pack", "."}, "")
	if want := errPkt("sluice: admission service unavailable (fail_mode closed); try again in 5s (correlation id c0ffee)"); stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	if !strings.Contains(stderr, e.sock) {
		t.Errorf("stderr %q lacks the socket", stderr)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// A client gone before the refusal is written: still exit 75, not SIGPIPE.
func TestRefusalClientGone(t *testing.T) {
	e := newEnv(t)
	startAgent(t, e.sock, rejectWith(shimproto.ReasonMaxSize, fullMsg))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	defer w.Close()
	c := e.cmd([]string{"git-upload-pack", "."}, "FAKE_GIT=exit:0")
	c.Stdout = w
	res := runCmd(t, c)
	if !res.ws.Exited() || res.ws.ExitStatus() != exitTempFail {
		t.Errorf("%s, want exit %d", describe(res.ws), exitTempFail)
	}
}
