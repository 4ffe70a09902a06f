package packcache

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// harness serves a Cache on a real Unix socket; clients speak the real
// protocol through shimproto.Conn, as the shim does.
type harness struct {
	t    *testing.T
	c    *Cache
	sock string
	obj  string
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	dir := t.TempDir()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(dir, "cache")
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = time.Minute
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 1 << 30
	}
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, c: c, sock: filepath.Join(dir, "s.sock"), obj: filepath.Join(dir, "objects")}
	os.Mkdir(h.obj, 0o755)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: h.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			conn, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go func() {
				var first [1]byte
				if _, err := conn.Read(first[:]); err != nil {
					conn.Close()
					return
				}
				raw, _ := conn.SyscallConn()
				var cred *unix.Ucred
				raw.Control(func(fd uintptr) { cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
				if cred == nil {
					conn.Close()
					return
				}
				c.ServeConn(conn, cred.Uid, cred.Gid)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); c.Close() })
	return h
}

type client struct {
	conn *shimproto.Conn
	ans  shimproto.PackAnswer
	fd   int
}

func (h *harness) lookup(stdin string) *client {
	h.t.Helper()
	conn, err := shimproto.Dial(h.sock, time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	l := shimproto.PackLookup{ObjDir: []byte(h.obj), Args: [][]byte{[]byte("pack-objects"), []byte("--stdout"), []byte("--progress")}}
	ans, fd, err := conn.PackCacheLookup(&l, []byte(stdin), time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	cl := &client{conn: conn, ans: ans, fd: fd}
	h.t.Cleanup(func() {
		conn.Close()
		if fd >= 0 {
			syscall.Close(fd)
		}
	})
	return cl
}

func (cl *client) write(t *testing.T, data []byte) {
	t.Helper()
	if _, err := syscall.Write(cl.fd, data); err != nil {
		t.Fatal(err)
	}
}

func (cl *client) finish(t *testing.T, ok bool, size int64) {
	t.Helper()
	if err := cl.conn.SendPackStatus(&shimproto.PackStatus{OK: ok, Size: size}); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, fd int) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 4096)
	for off := int64(0); ; {
		n, err := syscall.Pread(fd, buf, off)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
		out = append(out, buf[:n]...)
		off += int64(n)
	}
}

func waitStatus(t *testing.T, cl *client) shimproto.PackStatus {
	t.Helper()
	s, ready, err := cl.conn.PackStatusWait(5 * time.Second)
	if err != nil || !ready {
		t.Fatalf("no status: ready %v, %v", ready, err)
	}
	return s
}

func TestWriteThenHit(t *testing.T) {
	h := newHarness(t, Config{})
	w := h.lookup("want a\n")
	if w.ans.Kind != shimproto.PackWrite || w.fd < 0 {
		t.Fatalf("first lookup: %+v fd %d, want write", w.ans, w.fd)
	}
	pack := bytes.Repeat([]byte("PACK"), 1000)
	w.write(t, pack)
	w.finish(t, true, int64(len(pack)))
	// The agent completes the entry after reading the status.
	var r *client
	deadline := time.Now().Add(5 * time.Second)
	for {
		r = h.lookup("want a\n")
		if r.ans.Kind == shimproto.PackHit || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r.ans.Kind != shimproto.PackHit || r.ans.Size != int64(len(pack)) {
		t.Fatalf("second lookup: %+v, want hit of %d bytes", r.ans, len(pack))
	}
	if got := readAll(t, r.fd); !bytes.Equal(got, pack) {
		t.Fatalf("hit read %d bytes, want the %d written", len(got), len(pack))
	}
	// A read-only descriptor: a reader cannot corrupt the entry.
	if _, err := syscall.Write(r.fd, []byte("x")); err == nil {
		t.Fatal("a hit's descriptor is writable")
	}
	// A different stdin is a different key.
	if o := h.lookup("want b\n"); o.ans.Kind != shimproto.PackWrite {
		t.Fatalf("other stdin: %+v, want write", o.ans)
	}
	// --progress is not in the key, any other argument is.
	st := h.c.Stats()
	if st.Hits != 1 || st.Writes != 2 || st.BytesWritten != uint64(len(pack)) || st.Entries != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Owner-only permissions.
	fi, err := os.Stat(h.c.cfg.Dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir mode %v, %v", fi.Mode(), err)
	}
	ents, _ := os.ReadDir(h.c.cfg.Dir)
	for _, e := range ents {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("cache file %s mode %v", e.Name(), fi.Mode())
		}
	}
}

func TestJoinStreamsWhileWriting(t *testing.T) {
	h := newHarness(t, Config{})
	w := h.lookup("want j\n")
	if w.ans.Kind != shimproto.PackWrite {
		t.Fatalf("%+v", w.ans)
	}
	w.write(t, []byte("first half;"))
	r := h.lookup("want j\n")
	if r.ans.Kind != shimproto.PackJoin || r.fd < 0 {
		t.Fatalf("join: %+v", r.ans)
	}
	if got := string(readAll(t, r.fd)); got != "first half;" {
		t.Fatalf("joined reader sees %q", got)
	}
	if _, ready, _ := r.conn.PackStatusWait(20 * time.Millisecond); ready {
		t.Fatal("status before the writer finished")
	}
	w.write(t, []byte("second half"))
	w.finish(t, true, 22)
	s := waitStatus(t, r)
	if !s.OK || s.Size != 22 {
		t.Fatalf("status %+v", s)
	}
	if got := string(readAll(t, r.fd)); got != "first half;second half" {
		t.Fatalf("joined reader sees %q", got)
	}
	if st := h.c.Stats(); st.Joins != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWriterDiesReadersToldAndEntryGone(t *testing.T) {
	h := newHarness(t, Config{})
	w := h.lookup("want d\n")
	w.write(t, []byte("partial"))
	r := h.lookup("want d\n")
	if r.ans.Kind != shimproto.PackJoin {
		t.Fatalf("%+v", r.ans)
	}
	w.conn.Close() // killed: no status
	s := waitStatus(t, r)
	if s.OK || s.Message == "" {
		t.Fatalf("status after the writer died: %+v", s)
	}
	// The next request writes afresh; the failed file is gone.
	if n := h.lookup("want d\n"); n.ans.Kind != shimproto.PackWrite {
		t.Fatalf("after failure: %+v", n.ans)
	}
	ents, _ := os.ReadDir(h.c.cfg.Dir)
	if len(ents) != 1 {
		t.Fatalf("%d files in the cache dir, want the new writer's only", len(ents))
	}
	// A status whose size does not match the file fails too.
	w2 := h.lookup("want e\n")
	w2.write(t, []byte("abc"))
	w2.finish(t, true, 99)
	waitFor(t, func() bool { return h.c.Stats().WriterFailures == 2 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) fill(stdin string, size int) {
	h.t.Helper()
	w := h.lookup(stdin)
	if w.ans.Kind != shimproto.PackWrite {
		h.t.Fatalf("fill %q: %+v", stdin, w.ans)
	}
	w.write(h.t, bytes.Repeat([]byte{'x'}, size))
	n := h.c.Stats().Writes - h.c.Stats().WriterFailures
	w.finish(h.t, true, int64(size))
	waitFor(h.t, func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return uint64(h.c.lru.Len())+h.c.evictSize.Load() >= n
	})
}

func TestEvictsLeastRecentlyUsedFirst(t *testing.T) {
	h := newHarness(t, Config{MaxBytes: 3000})
	h.fill("a", 1000)
	h.fill("b", 1000)
	h.fill("c", 1000)
	// Use a: b is now the least recently used.
	if r := h.lookup("a"); r.ans.Kind != shimproto.PackHit {
		t.Fatalf("%+v", r.ans)
	}
	h.fill("d", 1000) // over the cap by 1000: b goes
	kinds := map[string]int32{}
	for _, k := range []string{"a", "c", "d", "b"} {
		kinds[k] = h.lookup(k).ans.Kind
	}
	if kinds["a"] != shimproto.PackHit || kinds["c"] != shimproto.PackHit || kinds["d"] != shimproto.PackHit || kinds["b"] != shimproto.PackWrite {
		t.Fatalf("after eviction: %v (1 hit, 3 write)", kinds)
	}
	st := h.c.Stats()
	if st.EvictionsSize != 1 || st.SizeBytes != 3000 {
		t.Fatalf("stats %+v", st)
	}
	// An entry alone over the cap is not kept.
	h2 := newHarness(t, Config{MaxBytes: 500})
	h2.fill("big", 600)
	if r := h2.lookup("big"); r.ans.Kind != shimproto.PackWrite {
		t.Fatalf("entry over max_bytes kept: %+v", r.ans)
	}
}

func TestMaxAgeExpires(t *testing.T) {
	h := newHarness(t, Config{MaxAge: 200 * time.Millisecond})
	h.fill("old", 10)
	if r := h.lookup("old"); r.ans.Kind != shimproto.PackHit {
		t.Fatalf("%+v", r.ans)
	}
	time.Sleep(300 * time.Millisecond)
	if r := h.lookup("old"); r.ans.Kind != shimproto.PackWrite {
		t.Fatalf("after max_age: %+v", r.ans)
	}
	if st := h.c.Stats(); st.EvictionsAge != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMinOccurrences(t *testing.T) {
	h := newHarness(t, Config{MinOccurrences: 2})
	if r := h.lookup("m"); r.ans.Kind != shimproto.PackBypass {
		t.Fatalf("first of min_occurrences 2: %+v", r.ans)
	}
	if r := h.lookup("m"); r.ans.Kind != shimproto.PackWrite {
		t.Fatalf("second: %+v", r.ans)
	}
	if st := h.c.Stats(); st.BypassCold != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestKeyExcludesCallerButNotContent(t *testing.T) {
	l := shimproto.PackLookup{ObjDir: []byte("/r/objects"), Args: [][]byte{[]byte("pack-objects"), []byte("--stdout")},
		Env: [][]byte{[]byte("GIT_PROTOCOL=version=2")}}
	base := Key(1000, 1000, 1, 2, &l, []byte("want x\n"))
	same := l
	same.Args = append(append([][]byte{}, l.Args...), []byte("--progress"))
	same.Env = append(append([][]byte{}, l.Env...), []byte("GIT_TRACE2_PARENT_SID=abc"), []byte("REMOTE_ADDR=10.0.0.1"), []byte("CORRELATION_ID=x"))
	if Key(1000, 1000, 1, 2, &same, []byte("want x\n")) != base {
		t.Error("progress, trace ids, remote address or correlation id changed the key")
	}
	for name, k := range map[string][32]byte{
		"uid":     Key(1001, 1000, 1, 2, &l, []byte("want x\n")),
		"inode":   Key(1000, 1000, 1, 3, &l, []byte("want x\n")),
		"stdin":   Key(1000, 1000, 1, 2, &l, []byte("want x\nhave y\n")),
		"filter":  Key(1000, 1000, 1, 2, &shimproto.PackLookup{ObjDir: l.ObjDir, Args: append(append([][]byte{}, l.Args...), []byte("--filter=blob:none")), Env: l.Env}, []byte("want x\n")),
		"proto":   Key(1000, 1000, 1, 2, &shimproto.PackLookup{ObjDir: l.ObjDir, Args: l.Args}, []byte("want x\n")),
		"objdir":  Key(1000, 1000, 1, 2, &shimproto.PackLookup{ObjDir: []byte("/s/objects"), Args: l.Args, Env: l.Env}, []byte("want x\n")),
		"replace": Key(1000, 1000, 1, 2, &shimproto.PackLookup{ObjDir: l.ObjDir, Args: l.Args, Env: append(append([][]byte{}, l.Env...), []byte("GIT_NO_REPLACE_OBJECTS=1"))}, []byte("want x\n")),
	} {
		if k == base {
			t.Errorf("%s is not in the key", name)
		}
	}
}

func TestStartClearsAndRefusesBadDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "pc-old.pack"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "keep.txt"), []byte("x"), 0o600)
	c, err := New(Config{Dir: dir, MaxAge: time.Minute, MaxBytes: 1 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := os.Stat(filepath.Join(dir, "pc-old.pack")); !os.IsNotExist(err) {
		t.Error("old cache file survived the start")
	}
	if _, err := os.Stat(filepath.Join(dir, "keep.txt")); err != nil {
		t.Error("a file that is not a cache file was removed")
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode())
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(dir, link)
	if _, err := New(Config{Dir: link, MaxAge: time.Minute, MaxBytes: 1 << 20}, nil); err == nil {
		t.Error("a symbolic link was accepted as the cache dir")
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(t.TempDir(), "other")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		if _, err := New(Config{Dir: other, MaxAge: time.Minute, MaxBytes: 1 << 20}, nil); err == nil {
			t.Error("a directory owned by nobody was accepted")
		}
	}
}

// TestOtherUserNeverGetsAPack plays a local user in the socket group: the
// test binary re-run as uid 65534 asks for exactly the key root's entry
// was written under (same object directory, arguments and stdin). The
// uid is in the key, so it must be told to write its own, never handed
// root's pack; and it cannot open the cache files.
func TestOtherUserNeverGetsAPack(t *testing.T) {
	if os.Getenv("PACKCACHE_ATTACKER") != "" {
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another uid")
	}
	h := newHarness(t, Config{})
	h.fill("want secret\n", 100)
	if r := h.lookup("want secret\n"); r.ans.Kind != shimproto.PackHit {
		t.Fatalf("root's own lookup: %+v", r.ans)
	}
	os.Chmod(filepath.Dir(h.sock), 0o755)
	os.Chmod(h.sock, 0o777)
	// The test binary lives in a private build directory: copy it where
	// uid 65534 can run it.
	bin := filepath.Join(filepath.Dir(h.sock), "packcache.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(h.sock); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	cmd := exec.Command(bin, "-test.run=^TestAttackerLookup$", "-test.v")
	cmd.Env = append(os.Environ(), "PACKCACHE_ATTACKER="+h.sock, "PACKCACHE_OBJ="+h.obj, "PACKCACHE_DIR="+h.c.cfg.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ATTACKER-RESULT kind=3") {
		t.Fatalf("attacker run: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "ATTACKER-OPEN denied") {
		t.Fatalf("attacker could read the cache directory:\n%s", out)
	}
}

// TestAttackerLookup is the attacker's half (runs only as the child).
func TestAttackerLookup(t *testing.T) {
	sock := os.Getenv("PACKCACHE_ATTACKER")
	if sock == "" {
		t.Skip("helper for TestOtherUserNeverGetsAPack")
	}
	conn, err := shimproto.Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l := shimproto.PackLookup{ObjDir: []byte(os.Getenv("PACKCACHE_OBJ")), Args: [][]byte{[]byte("pack-objects"), []byte("--stdout"), []byte("--progress")}}
	ans, fd, err := conn.PackCacheLookup(&l, []byte("want secret\n"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if fd >= 0 {
		defer syscall.Close(fd)
	}
	if fd >= 0 && ans.Kind != shimproto.PackWrite {
		buf := make([]byte, 200)
		n, _ := syscall.Pread(fd, buf, 0)
		fmt.Printf("ATTACKER-READ %d bytes\n", n)
	}
	fmt.Printf("ATTACKER-RESULT kind=%d\n", ans.Kind)
	if _, err := os.ReadDir(os.Getenv("PACKCACHE_DIR")); err != nil {
		fmt.Println("ATTACKER-OPEN denied")
	}
}
