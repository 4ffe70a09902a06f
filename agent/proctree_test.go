package agent

import (
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/internal/procfs"
)

func TestGitSubcommand(t *testing.T) {
	for _, tt := range []struct {
		argv []string
		want string
	}{
		{[]string{"git", "pack-objects", "--revs", "--thin", "--stdout"}, "pack-objects"},
		{[]string{"/usr/bin/git", "upload-pack", "--strict", "--timeout=0", "."}, "upload-pack"},
		{[]string{"/usr/lib/git-core/git-upload-pack", "/srv/r.git"}, "upload-pack"},
		{[]string{"git", "--shallow-file", "", "pack-objects", "--revs"}, "pack-objects"},
		{[]string{"git", "-c", "core.x=y", "-C", "/r", "upload-archive--writer"}, "upload-archive--writer"},
		{[]string{"/usr/bin/sluice-shim", "git", "pack-objects", "--revs"}, "pack-objects"},
		{[]string{"sh", "-c", "git pack-objects"}, ""},
		{[]string{"git", "--version"}, ""},
		{nil, ""},
	} {
		if got := gitSubcommand(tt.argv); got != tt.want {
			t.Errorf("gitSubcommand(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
}

// startTree starts sh with a child that looks like "git-pack-objects"
// (bash's exec -a) and returns sh and the child's pid. Both are killed at
// the end of the test.
func startTree(t *testing.T, shScript string) (*exec.Cmd, int) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed (needed for exec -a): apt-get install bash")
	}
	cmd := exec.Command("sh", "-c", shScript)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	var child int
	deadline := time.Now().Add(10 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		s, err := takeSnapshot(procfs.Default)
		if err != nil {
			t.Fatal(err)
		}
		for _, pid := range s.descendants(cmd.Process.Pid) {
			if argv, _ := procfs.Default.Cmdline(pid, maxCmdline); len(argv) > 0 && argv[0] == "git-pack-objects" {
				child = pid
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	go io.Copy(io.Discard, out)
	if child == 0 {
		t.Fatal("the git-pack-objects child did not appear")
	}
	return cmd, child
}

func TestProcTreeOnRealProcesses(t *testing.T) {
	sh, child := startTree(t, `bash -c 'exec -a git-pack-objects sleep 60' & wait`)
	var seen []int
	found := ancestors(procfs.Default, child, func(pid int) bool {
		seen = append(seen, pid)
		return pid == os.Getpid()
	})
	if !found || seen[0] != sh.Process.Pid {
		t.Errorf("ancestors of %d: %v (found us: %v), want sh %d first, then us %d", child, seen, found, sh.Process.Pid, os.Getpid())
	}
	s, err := takeSnapshot(procfs.Default)
	if err != nil {
		t.Fatal(err)
	}
	if !s.findGit(sh.Process.Pid, "pack-objects", false) || !s.findGit(os.Getpid(), "pack-objects", false) {
		t.Error("findGit does not see the pack-objects child")
	}
	if s.findGit(sh.Process.Pid, "upload-archive--writer", false) || s.findGit(child, "pack-objects", false) {
		t.Error("findGit sees what is not there")
	}
	// sleep has written nothing.
	if s.findGit(sh.Process.Pid, "pack-objects", true) {
		t.Error("findGit with wrote: sees output of a process that wrote nothing")
	}
}

func TestKillTreeKillsDescendants(t *testing.T) {
	// sh ignores SIGTERM and waits for its child; SIGKILL must reach both.
	sh, child := startTree(t, `trap '' TERM; bash -c 'exec -a git-pack-objects sleep 60' & wait`)
	w := &deadlines{pid: sh.Process.Pid, pidfd: openPidfd(t, sh.Process.Pid)}
	defer unix.Close(w.pidfd)
	if err := w.signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if n, err := killTree(w); err != nil || n != 2 {
		t.Fatalf("killTree: %d processes, %v; want sh and its child", n, err)
	}
	err := sh.Wait()
	if ws, ok := sh.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("sh ended with %v, want SIGKILL", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The child was reparented; it is gone once its stat is gone or
		// says zombie.
		if s, err := procfs.Default.Stat(child); err != nil || s.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d still running after killTree", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTellStderr writes the timeout line to a process's stderr, a pipe
// and a socket, without touching the process's own file flags.
func TestTellStderr(t *testing.T) {
	for _, kind := range []string{"pipe", "socket"} {
		t.Run(kind, func(t *testing.T) {
			var r, w *os.File
			if kind == "pipe" {
				var err error
				if r, w, err = os.Pipe(); err != nil {
					t.Fatal(err)
				}
			} else {
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				r, w = os.NewFile(uintptr(fds[0]), "r"), os.NewFile(uintptr(fds[1]), "w")
			}
			defer r.Close()
			cmd := exec.Command("sleep", "60")
			cmd.Stderr = w
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.Close()
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			wt := &deadlines{pid: cmd.Process.Pid, pidfd: openPidfd(t, cmd.Process.Pid)}
			defer unix.Close(wt.pidfd)
			if err := tellStderr(wt, "sluice: hello\n"); err != nil {
				t.Skipf("pidfd_getfd refused (%v): needs CAP_SYS_PTRACE over the process", err)
			}
			buf := make([]byte, 64)
			n, err := r.Read(buf)
			if err != nil || string(buf[:n]) != "sluice: hello\n" {
				t.Errorf("read %q, %v", buf[:n], err)
			}
		})
	}
}

// openPidfd opens a pidfd of pid, a child of the test that has not been
// reaped (so the pid cannot have been reused).
func openPidfd(t *testing.T, pid int) int {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Skipf("pidfd_open: %v (needs Linux 5.3+)", err)
	}
	return fd
}
