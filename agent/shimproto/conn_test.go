package shimproto

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeAgent serves one connection with handle.
func fakeAgent(t *testing.T, handle func(c net.Conn, r *bufio.Reader)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "sluice.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		handle(c, bufio.NewReader(c))
	}()
	return sock
}

func readAdmit(t *testing.T, r *bufio.Reader) AdmitRequest {
	magic := make([]byte, len(Magic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != Magic {
		t.Errorf("magic = %q, %v", magic, err)
		return AdmitRequest{}
	}
	f, err := ReadFrame(r, nil)
	if err != nil {
		t.Errorf("admit frame: %v", err)
		return AdmitRequest{}
	}
	m, err := DecodeClientMsg(f)
	if err != nil || m.Kind != ClientAdmit {
		t.Errorf("admit msg: %+v %v", m, err)
	}
	return m.Admit
}

func TestConnAdmitQueuedThenAdmitted(t *testing.T) {
	finished := make(chan ClientMsg, 1)
	sock := fakeAgent(t, func(c net.Conn, r *bufio.Reader) {
		req := readAdmit(t, r)
		if req.Subcommand != "upload-pack" || string(req.Repo) != "/r" {
			t.Errorf("request %+v", req)
		}
		var out []byte
		for pos := int32(2); pos >= 1; pos-- {
			out = AppendFrame(out, AppendServerMsg(nil, &ServerMsg{Kind: ServerQueued, Queued: Queued{Limit: "l", Position: pos, QueueLength: 2}}))
		}
		out = AppendFrame(out, AppendServerMsg(nil, &ServerMsg{Kind: ServerAdmitted, Reply: Reply{Admitted: true, LeaseID: "lease-1", Limit: "l", QueuedUsec: 5}}))
		c.Write(out)
		f, err := ReadFrame(r, nil)
		if err != nil {
			t.Errorf("finished frame: %v", err)
			close(finished)
			return
		}
		m, _ := DecodeClientMsg(f)
		finished <- m
		if _, err := r.ReadByte(); err != io.EOF {
			t.Errorf("after Finished: %v, want EOF", err)
		}
	})
	c, err := Dial(sock, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(c.Fd()), syscall.F_GETFD, 0)
	if errno != 0 || flags&syscall.FD_CLOEXEC == 0 {
		t.Errorf("socket not close-on-exec: flags %d %v", flags, errno)
	}
	var queued []int32
	rep, err := c.Admit(&AdmitRequest{Subcommand: "upload-pack", Repo: []byte("/r")}, time.Now().Add(time.Minute), func(q Queued) { queued = append(queued, q.Position) })
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Admitted || rep.LeaseID != "lease-1" || rep.QueuedUsec != 5 || len(queued) != 2 || queued[0] != 2 {
		t.Errorf("reply %+v queued %v", rep, queued)
	}
	if err := c.Finish(&Finished{ExitCode: 3, RealUsec: 7}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	m := <-finished
	if m.Kind != ClientFinished || m.Finished.ExitCode != 3 || m.Finished.RealUsec != 7 {
		t.Errorf("finished = %+v", m)
	}
}

func TestConnAdmitRejected(t *testing.T) {
	sock := fakeAgent(t, func(c net.Conn, r *bufio.Reader) {
		readAdmit(t, r)
		c.Write(AppendFrame(nil, AppendServerMsg(nil, &ServerMsg{Kind: ServerRejected, Reply: Reply{Reason: 1, Message: "sluice: full"}})))
	})
	c, err := Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rep, err := c.Admit(&AdmitRequest{}, time.Now().Add(time.Minute), nil)
	if err != nil || rep.Admitted || rep.Reason != 1 || rep.Message != "sluice: full" {
		t.Errorf("reply %+v, %v", rep, err)
	}
}

func TestConnAdmitHungAgentIsBounded(t *testing.T) {
	release := make(chan struct{})
	sock := fakeAgent(t, func(c net.Conn, r *bufio.Reader) {
		readAdmit(t, r)
		<-release // accept, read, never answer
	})
	defer close(release)
	c, err := Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The deadline is an hour away, but the first answer is due within FirstReplyTimeout.
	_, err = c.Admit(&AdmitRequest{}, time.Now().Add(time.Hour), nil)
	if err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("err = %v, want no answer", err)
	}
}

func TestConnAdmitAgentClosesAndGarbage(t *testing.T) {
	sock := fakeAgent(t, func(c net.Conn, r *bufio.Reader) { readAdmit(t, r) })
	c, err := Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = c.Admit(&AdmitRequest{}, time.Now().Add(time.Minute), nil); err == nil {
		t.Error("EOF before an answer is not an error")
	}
	c.Close()

	sock = fakeAgent(t, func(c net.Conn, r *bufio.Reader) {
		readAdmit(t, r)
		c.Write([]byte{0xff, 0xff, 0xff, 0xff})
	})
	c, err = Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = c.Admit(&AdmitRequest{}, time.Now().Add(time.Minute), nil); err == nil {
		t.Error("oversized frame is not an error")
	}
	c.Close()
}

func TestDialNowhere(t *testing.T) {
	if _, err := Dial(filepath.Join(t.TempDir(), "none.sock"), 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("err = %v", err)
	}
}

// TestConnAdmitTicking: once queued, the caller is woken while no answer
// arrives, and a frame that arrives after ticks is still read whole.
func TestConnAdmitTicking(t *testing.T) {
	release := make(chan struct{})
	sock := fakeAgent(t, func(c net.Conn, r *bufio.Reader) {
		readAdmit(t, r)
		c.Write(AppendFrame(nil, AppendServerMsg(nil, &ServerMsg{Kind: ServerQueued, Queued: Queued{Limit: "l", Position: 1, QueueLength: 1}})))
		<-release
		c.Write(AppendFrame(nil, AppendServerMsg(nil, &ServerMsg{Kind: ServerAdmitted, Reply: Reply{Admitted: true, LeaseID: "lease-2"}})))
	})
	c, err := Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ticks := 0
	rep, err := c.AdmitTicking(&AdmitRequest{}, time.Now().Add(time.Minute), nil, 5*time.Millisecond, func() {
		ticks++
		if ticks == 3 {
			close(release)
		}
	})
	if err != nil || !rep.Admitted || rep.LeaseID != "lease-2" {
		t.Fatalf("reply %+v, %v", rep, err)
	}
	if ticks < 3 {
		t.Errorf("%d ticks, want at least 3", ticks)
	}
}
