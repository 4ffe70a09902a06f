package main

// The shim's half of the pack cache (issue 18; design in agent/packcache's
// package doc). Only `sluice-shim git pack-objects … --stdout …` (hook mode)
// with pack_cache=1 in shim.conf comes here.

import (
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/gitwrap"
)

// packCacheTimeout bounds sending the lookup and reading the answer.
const packCacheTimeout = 2 * time.Second

// packCache is a lookup that did not end the shim: the caller runs
// pack-objects (as the writer when conn is set), with stdin replayed from a
// memfd already on fd 0.
type packCache struct {
	conn     *shimproto.Conn // writer only
	wfd      int
	maxBytes int64
}

func (p *packCache) writer() bool { return p != nil && p.conn != nil }

// packCacheable reports whether inv writes its pack to stdout (the only
// output the cache can hold).
func packCacheable(inv *gitwrap.Invocation) bool {
	for _, a := range inv.SubArgs {
		if a == "--stdout" {
			return true
		}
	}
	return false
}

// packCacheLookup reads stdin, asks the agent and serves a hit. done
// reports that the shim must exit with code; otherwise pack-objects is to
// run as usual (a writer when p.writer()).
func packCacheLookup(sock string, inv *gitwrap.Invocation) (p *packCache, code int, done bool) {
	stdin, big, err := readStdin()
	if err != nil {
		os.Stderr.WriteString("sluice: pack cache: " + err.Error() + "\n")
		return nil, exitTempFail, true
	}
	if big {
		return nil, 0, false // stdin is on fd 0 again, whole
	}
	objdir := objectDir()
	if objdir == "" {
		return nil, 0, false
	}
	l := shimproto.PackLookup{ObjDir: []byte(objdir)}
	for _, a := range inv.Args {
		if shimproto.PackKeyArg(a) {
			l.Args = append(l.Args, []byte(a))
		}
	}
	for _, e := range os.Environ() {
		if shimproto.PackKeyEnv(e) {
			l.Env = append(l.Env, []byte(e))
		}
	}
	// A reader whose writer failed before it sent a byte asks once more:
	// one of the requests that were waiting becomes the new writer and the
	// others join it, instead of each running its own pack-objects.
	for attempt := 0; ; attempt++ {
		p, code, done, retry := lookupOnce(sock, &l, stdin, attempt > 0)
		if !retry || attempt > 0 {
			return p, code, done
		}
	}
}

// lookupOnce is one lookup; retry reports a writer that failed before this
// reader sent anything (last: do not ask again, run pack-objects).
func lookupOnce(sock string, l *shimproto.PackLookup, stdin []byte, last bool) (p *packCache, code int, done, retry bool) {
	conn, err := shimproto.Dial(sock, dialTimeout)
	if err != nil {
		return nil, 0, false, false // the admission path applies the fail mode
	}
	ans, fd, err := conn.PackCacheLookup(l, stdin, packCacheTimeout)
	if err != nil {
		conn.Close()
		warn("pack cache at " + sock + ": " + err.Error() + "; running pack-objects uncached")
		return nil, 0, false, false
	}
	switch {
	case (ans.Kind == shimproto.PackHit || ans.Kind == shimproto.PackJoin) && fd >= 0:
		sent, code, why := streamEntry(fd, conn, ans.Kind == shimproto.PackHit, ans.Size)
		syscall.Close(fd)
		conn.Close()
		if why == "" {
			return nil, code, true, false
		}
		if sent > 0 {
			os.Stderr.WriteString("sluice: the shared pack for this fetch failed (" + why + "); try again\n")
			return nil, exitTempFail, true, false
		}
		if last {
			warn("pack cache: shared pack failed before its first byte (" + why + "); running pack-objects")
		}
		return nil, 0, false, true
	case ans.Kind == shimproto.PackWrite && fd >= 0:
		return &packCache{conn: conn, wfd: fd, maxBytes: ans.MaxBytes}, 0, false, false
	}
	if fd >= 0 {
		syscall.Close(fd)
	}
	conn.Close()
	return nil, 0, false, false
}

// readStdin reads all of fd 0 and puts it back on fd 0 as a memfd, so
// whatever runs next (exec'd git, or the writer's child) reads it again.
// big reports stdin over shimproto.MaxPackStdin: the memfd then holds all of it
// but stdin is not returned.
func readStdin() (stdin []byte, big bool, err error) {
	name := [...]byte{'s', 'l', 'u', 'i', 'c', 'e', '-', 's', 't', 'd', 'i', 'n', 0}
	mfd, _, errno := syscall.Syscall(sysMemfdCreate, uintptr(unsafe.Pointer(&name[0])), 1 /* MFD_CLOEXEC */, 0)
	if errno != 0 {
		return nil, false, errno
	}
	fd := int(mfd)
	defer syscall.Close(fd)
	buf := make([]byte, 0, 16<<10)
	chunk := make([]byte, 64<<10)
	for {
		n, err := syscall.Read(0, chunk)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if n == 0 {
			break
		}
		if err := writeAll(fd, chunk[:n]); err != nil {
			return nil, false, err
		}
		if !big {
			buf = append(buf, chunk[:n]...)
			if len(buf) > shimproto.MaxPackStdin {
				big, buf = true, nil
			}
		}
	}
	if _, err := syscall.Seek(fd, 0, 0); err != nil {
		return nil, false, err
	}
	if err := syscall.Dup3(fd, 0, 0); err != nil {
		return nil, false, err
	}
	return buf, big, nil
}

// objectDir is the resolved object directory pack-objects will read.
func objectDir() string {
	cwd, err := syscall.Getwd()
	if err != nil {
		return ""
	}
	abs := func(p string) string {
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		return p
	}
	dir := os.Getenv("GIT_OBJECT_DIRECTORY")
	if dir == "" {
		gd := os.Getenv("GIT_DIR")
		if gd == "" {
			gd = "."
		}
		dir = filepath.Join(abs(gd), "objects")
	}
	r, err := filepath.EvalSymlinks(abs(dir))
	if err != nil {
		return ""
	}
	return r
}

// streamEntry copies a cache entry to stdout from offset 0. complete/size:
// a hit; otherwise it waits on conn for the writer's end. why is "" on
// success (code is then the exit code), else why the entry failed and
// sent how many bytes already went out.
func streamEntry(fd int, conn *shimproto.Conn, complete bool, size int64) (sent int64, code int, why string) {
	final := int64(-1)
	if complete {
		final = size
	}
	var buf []byte // only when sendfile(2) cannot write to our stdout
	wait := time.Millisecond
	for {
		if final >= 0 && sent >= final {
			return sent, 0, ""
		}
		want := 1 << 20
		if final >= 0 && final-sent < int64(want) {
			want = int(final - sent)
		}
		var n int
		var err error
		if buf == nil {
			// In-kernel copy from the page cache to upload-pack's pipe.
			off := sent
			n, err = syscall.Sendfile(1, fd, &off, want)
			if err == syscall.EINVAL || err == syscall.ENOSYS {
				buf = make([]byte, 256<<10)
				continue
			}
			if err == syscall.EPIPE {
				return sent, 1, "" // upload-pack is gone: so is its client
			}
		} else {
			n, err = syscall.Pread(fd, buf[:min(want, len(buf))], sent)
			if n > 0 && err == nil {
				if werr := writeAll(1, buf[:n]); werr != nil {
					return sent, 1, ""
				}
			}
		}
		if err == syscall.EAGAIN { // a non-blocking stdout is full
			time.Sleep(time.Millisecond)
			continue
		}
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return sent, 0, "read cache file: " + err.Error()
		}
		if n > 0 {
			sent += int64(n)
			wait = time.Millisecond
			continue
		}
		if final >= 0 {
			return sent, 0, "cache file shorter than " + strconv.FormatInt(final, 10) + " bytes"
		}
		s, ready, err := conn.PackStatusWait(wait)
		switch {
		case err != nil:
			return sent, 0, "agent connection lost: " + err.Error()
		case ready && s.OK:
			final = s.Size
		case ready:
			return sent, 0, s.Message
		default:
			wait = min(2*wait, 50*time.Millisecond)
		}
	}
}

// writeAll writes p to fd (raw write: EPIPE is an error, never SIGPIPE's
// death, which os.Stdout would choose).
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := syscall.Write(fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// write runs pack-objects as the cache writer: its stdout goes to our
// stdout and to the cache file; its stderr (progress) is ours. adm is the
// admission lease (nil when pack-objects is not matched); Finished goes
// there. It never returns.
func (p *packCache) write(adm *shimproto.Conn, git string, argv, env []string) int {
	// The writer must outlive its first client: SIGHUP/SIGINT/SIGTERM
	// from upload-pack's side are caught and not forwarded (SIGKILL still
	// ends it, and pack-objects with it).
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE)
	runtime.LockOSThread()
	var pfd [2]int
	if err := syscall.Pipe2(pfd[:], syscall.O_CLOEXEC); err != nil {
		os.Stderr.WriteString("sluice: pipe: " + err.Error() + "\n")
		return exitNoGit
	}
	start := time.Now()
	pid, err := syscall.ForkExec(git, argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, uintptr(pfd[1]), 2},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	syscall.Close(pfd[1])
	if err != nil {
		p.conn.SendPackStatus(&shimproto.PackStatus{Message: "start " + git + ": " + err.Error()})
		os.Stderr.WriteString("sluice: start " + git + ": " + err.Error() + "\n")
		return exitNoGit
	}
	clientOK, cacheOK := true, true
	why := ""
	var written int64
	buf := make([]byte, 256<<10)
	for {
		n, err := syscall.Read(pfd[0], buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n == 0 {
			break
		}
		if clientOK && writeAll(1, buf[:n]) != nil {
			clientOK = false // keep draining into the cache for joined readers
		}
		if cacheOK {
			switch {
			case p.maxBytes > 0 && written+int64(n) > p.maxBytes:
				cacheOK, why = false, "pack larger than [pack_cache] max_bytes "+strconv.FormatInt(p.maxBytes, 10)
			default:
				if err := writeAll(p.wfd, buf[:n]); err != nil {
					cacheOK, why = false, "write cache file (disk): "+err.Error()
				} else {
					written += int64(n)
				}
			}
		}
	}
	var r gitwrap.Result
	for {
		_, err := syscall.Wait4(pid, &r.Status, 0, &r.Rusage)
		if err != syscall.EINTR {
			break
		}
	}
	r.Real = time.Since(start)
	syscall.Close(p.wfd)
	st := shimproto.PackStatus{OK: cacheOK && r.Status.Exited() && r.Status.ExitStatus() == 0, Size: written, Message: why}
	if !st.OK && why == "" {
		st.Message = "pack-objects " + exitText(r.Status)
	}
	p.conn.SendPackStatus(&st)
	p.conn.Close()
	if adm != nil {
		adm.Finish(&shimproto.Finished{
			ExitCode: r.ExitCode(), Signal: r.Signal(), UserUsec: r.UserUsec(), SystemUsec: r.SystemUsec(),
			MaxRSSKiB: r.MaxRSSKiB(), RealUsec: r.Real.Microseconds(),
		})
		adm.Close()
	}
	gitwrap.ExitLike(r.Status)
	return exitNoGit
}

func exitText(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by signal " + strconv.Itoa(int(ws.Signal()))
	}
	return "exited with " + strconv.Itoa(ws.ExitStatus())
}
