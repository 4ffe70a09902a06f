package shimproto

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// trustDir makes dir/run with a shim.conf saying fail_mode=closed and
// git_bin=/usr/bin/git, and returns the socket path in it (no socket yet).
func trustDir(t *testing.T) string {
	t.Helper()
	run := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(run, 0o750); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(run, "sluice.sock")
	if err := WriteShimConfig(ShimConfigPath(sock), ShimConfig{FailClosed: true, GitBin: "/usr/bin/git", Match: []string{"upload-pack"}}); err != nil {
		t.Fatal(err)
	}
	return sock
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to other owners (chown)")
	}
}

func listenAt(t *testing.T, sock string) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

func TestLoadShimConfigTrusted(t *testing.T) {
	sock := trustDir(t)
	s := loadShimConfig(sock, 0, 0)
	if s.Problem != nil || s.NoDial || !s.Config.FailClosed || s.Config.GitBin != "/usr/bin/git" || s.FailWhy != `fail_mode is "closed"` {
		t.Fatalf("trusted shim.conf: %+v", s)
	}
}

func TestLoadShimConfigRelative(t *testing.T) {
	s := loadShimConfig("run/sluice.sock", 0, 0)
	if s.Problem == nil || !s.NoDial || !s.Config.FailClosed || !strings.Contains(s.Problem.Error(), "must be an absolute path") {
		t.Fatalf("relative socket path: %+v", s)
	}
}

func TestLoadShimConfigMissing(t *testing.T) {
	s := loadShimConfig(filepath.Join(t.TempDir(), "nope", "sluice.sock"), 1000, 1000)
	if s.Problem != nil || s.NoDial || s.Config.FailClosed || s.Config.GitBin != "" {
		t.Fatalf("no directory: %+v, want defaults, fail open", s)
	}
	sock := trustDir(t)
	os.Remove(ShimConfigPath(sock))
	if s := loadShimConfig(sock, 0, 0); s.Problem != nil || s.NoDial || !s.Config.FailClosed {
		// WriteShimConfig left the sticky bit for "closed".
		t.Fatalf("no shim.conf, sticky directory: %+v, want defaults failing closed", s)
	}
}

// TestLoadShimConfigUntrusted plants what another user could: shim.conf
// or its directory owned by someone else or writable by others, a symbolic
// link, a FIFO. Each is refused, fails closed and is not dialled, and the
// message names the path, owner and mode.
func TestLoadShimConfigUntrusted(t *testing.T) {
	needRoot(t)
	const mallory = 54321
	for _, tt := range []struct {
		name  string
		plant func(t *testing.T, sock string)
		want  []string
	}{
		{"file owned by another user", func(t *testing.T, sock string) {
			os.Chown(ShimConfigPath(sock), mallory, mallory)
		}, []string{"not trusting " + "RUN/shim.conf", "owner uid 54321", "mode 0644"}},
		{"file world-writable", func(t *testing.T, sock string) {
			os.Chmod(ShimConfigPath(sock), 0o666)
		}, []string{"not trusting RUN/shim.conf", "owner uid 0", "mode 0666"}},
		{"file group-writable", func(t *testing.T, sock string) {
			os.Chmod(ShimConfigPath(sock), 0o664)
		}, []string{"mode 0664"}},
		{"directory world-writable", func(t *testing.T, sock string) {
			syscall.Chmod(filepath.Dir(sock), 0o1777)
		}, []string{"not trusting RUN:", "mode 1777"}},
		{"directory owned by another user", func(t *testing.T, sock string) {
			os.Chown(filepath.Dir(sock), mallory, mallory)
		}, []string{"not trusting RUN:", "owner uid 54321"}},
		{"symbolic link", func(t *testing.T, sock string) {
			evil := filepath.Join(filepath.Dir(filepath.Dir(sock)), "evil.conf")
			os.WriteFile(evil, []byte("git_bin=/tmp/evil\nfail_mode=open\n"), 0o644)
			os.Remove(ShimConfigPath(sock))
			os.Symlink(evil, ShimConfigPath(sock))
		}, []string{"not trusting RUN/shim.conf: it is a symbolic link"}},
		{"fifo", func(t *testing.T, sock string) {
			os.Remove(ShimConfigPath(sock))
			syscall.Mkfifo(ShimConfigPath(sock), 0o644)
		}, []string{"not trusting RUN/shim.conf", "mode 0644", "regular file"}},
		{"socket owned by another user does not vouch for root's file", func(t *testing.T, sock string) {
			listenAt(t, sock)
			os.Chown(sock, mallory, mallory)
			os.Chown(ShimConfigPath(sock), 777, 777)
		}, []string{"owner uid 777"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sock := trustDir(t)
			// Mallory's file says: run her binary, fail open.
			os.WriteFile(ShimConfigPath(sock), []byte("git_bin=/tmp/evil\nfail_mode=open\n"), 0o644)
			tt.plant(t, sock)
			s := loadShimConfig(sock, 1000, 1000)
			if s.Problem == nil || !s.NoDial || !s.Config.FailClosed || s.Config.GitBin != "" {
				t.Fatalf("planted config accepted: %+v", s)
			}
			msg := s.Problem.Error()
			for _, w := range tt.want {
				w = strings.ReplaceAll(w, "RUN", filepath.Dir(sock))
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if !strings.Contains(s.FailWhy, "failing closed") {
				t.Errorf("FailWhy %q", s.FailWhy)
			}
		})
	}
}

// TestLoadShimConfigAgentUID: a non-root agent's directory and shim.conf
// are trusted because the socket in it belongs to the same uid.
func TestLoadShimConfigAgentUID(t *testing.T) {
	needRoot(t)
	const agent = 4711
	sock := trustDir(t)
	listenAt(t, sock)
	for _, p := range []string{filepath.Dir(sock), sock, ShimConfigPath(sock)} {
		if err := os.Chown(p, agent, agent); err != nil {
			t.Fatal(err)
		}
	}
	s := loadShimConfig(sock, 1000, 1000)
	if s.Problem != nil || s.NoDial || s.Config.GitBin != "/usr/bin/git" || s.SocketGID != agent {
		t.Fatalf("agent-owned directory with the agent's socket: %+v", s)
	}
	os.Remove(sock) // without the socket, uid 4711 vouches for nothing
	if s := loadShimConfig(sock, 1000, 1000); s.Problem == nil || !s.NoDial {
		t.Fatalf("directory of uid 4711 without its socket: %+v, want untrusted", s)
	}
	if s := loadShimConfig(sock, agent, agent); s.Problem != nil {
		t.Fatalf("the directory's owner running the shim: %v", s.Problem)
	}
}

func TestWriteShimConfigMarksFailMode(t *testing.T) {
	sock := trustDir(t)
	dir := filepath.Dir(sock)
	sticky := func() bool {
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o777 != 0o750 {
			t.Fatalf("permission bits changed: %o", st.Mode&0o7777)
		}
		return st.Mode&syscall.S_ISVTX != 0
	}
	if !sticky() {
		t.Fatal("fail_mode closed: no sticky bit")
	}
	if err := WriteShimConfig(ShimConfigPath(sock), ShimConfig{}); err != nil {
		t.Fatal(err)
	}
	if sticky() {
		t.Fatal("fail_mode open: sticky bit still set")
	}
}

func TestLookupID(t *testing.T) {
	passwd := []byte("root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\n:x:5:\ngit:x:998:998::/home/git:/usr/bin/git-shell\nodd name:x:7:7\nlast:x:1000")
	for id, want := range map[int]string{0: "root", 998: "git", 1000: "last", 5: "", 7: "", 42: ""} {
		if got := LookupID(passwd, id); got != want {
			t.Errorf("LookupID(%d) = %q, want %q", id, got, want)
		}
	}
}

func FuzzLookupID(f *testing.F) {
	f.Add([]byte("root:x:0:0:root:/root:/bin/bash\ngit:x:998:998::/:/bin/sh\n"), 998)
	f.Add([]byte("a:b:c\n::\n:::\n\n"), 0)
	f.Fuzz(func(t *testing.T, data []byte, id int) {
		name := LookupID(data, id)
		if len(name) > 64 || strings.ContainsAny(name, ": \n\t\x00") {
			t.Fatalf("LookupID returned %q", name)
		}
		if name != "" && !strings.Contains(string(data), name+":") {
			t.Fatalf("name %q not in the input", name)
		}
	})
}
