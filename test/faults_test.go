package test

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
)

// faultRules limit clones and pushes to one at a time per repository, so
// a second one queues.
var faultRules = limitRule("upload-pack", "repo", 1, 5, "3s") + `

[[limit]]
name = "receive-pack"
match = ["receive-pack"]
key = "repo"
max_per_key = 1
max_queue_size = 5
max_queue_wait = "3s"
`

// gateGit writes a wrapper the shim runs as "the real git": it leaves a
// marker file, waits (bounded: 15 s) until the go file exists, then execs
// the real git. It holds an admitted command at a known point.
func gateGit(t *testing.T, dir string) (wrapper, marks, goFile string) {
	t.Helper()
	marks = filepath.Join(dir, "marks")
	if err := os.MkdirAll(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	goFile = filepath.Join(dir, "go")
	wrapper = filepath.Join(dir, "gate-git")
	script := fmt.Sprintf(`#!/bin/sh
: > %q/started.$$
i=0
while [ ! -e %q ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
exec %q "$@"
`, marks, goFile, bins.realGit)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper, marks, goFile
}

// bgCmd is a git command running in the background.
type bgCmd struct {
	name string
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
}

func startBG(t *testing.T, name, dir string, env []string, argv ...string) *bgCmd {
	t.Helper()
	b := &bgCmd{name: name, cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	b.cmd.Dir, b.cmd.Env = dir, env
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			b.cmd.Process.Kill()
			<-b.done
		}
	})
	return b
}

// wait returns the exit code; bound is a hang detector, not a performance
// assertion.
func (b *bgCmd) wait(t *testing.T, bound time.Duration) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(bound):
		t.Fatalf("%s still running %v after the fault:\n%s", b.name, bound, b.out.String())
	}
	return b.cmd.ProcessState.ExitCode()
}

func countFiles(dir string) int {
	ents, _ := os.ReadDir(dir)
	return len(ents)
}

// TestFaultsWithGitInFlight injects agent faults while clones and pushes
// run through the shim, and checks that running commands complete, queued
// and new ones get the fail mode's clean outcome, the server repository
// passes git fsck --strict, and every pushed ref is at its old or its new
// value.
//
// Faults: SIGTERM (graceful shutdown), SIGKILL (crash), hung (SIGSTOP: the
// agent accepts connections but never answers), and a fake listener on
// the socket path that accepts and never answers.
func TestFaultsWithGitInFlight(t *testing.T) {
	for _, fault := range []string{"sigterm", "sigkill", "sigstop", "hung-listener"} {
		for _, mode := range []string{"open", "closed"} {
			t.Run(fault+"/"+mode, func(t *testing.T) { testFault(t, fault, mode) })
		}
	}
}

func testFault(t *testing.T, fault, mode string) {
	a := startAgent(t, faultRules, mode)
	wrapper, marks, goFile := gateGit(t, a.dir)
	repo := makeRepo(t, a.dir, "server", 4)
	plain := baseEnv(a.dir)
	// A working clone with a new commit on b1, b2 and b3, which the
	// server has at the old commit.
	work := filepath.Join(a.dir, "work")
	git(t, a.dir, plain, "clone", "-q", repo, work)
	old := git(t, work, plain, "rev-parse", "HEAD")
	for _, b := range []string{"b1", "b2", "b3"} {
		git(t, work, plain, "push", "-q", "origin", "HEAD:refs/heads/"+b)
	}
	if err := os.WriteFile(filepath.Join(work, "new.txt"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, work, plain, "add", "new.txt")
	git(t, work, plain, "commit", "-q", "-m", "new")
	newRev := git(t, work, plain, "rev-parse", "HEAD")

	env := a.env("SLUICE_REAL_GIT=" + wrapper)
	up := filepath.Join(a.shimBin, "git-upload-pack")
	rp := filepath.Join(a.shimBin, "git-receive-pack")
	clone := func(name string) *bgCmd {
		return startBG(t, name, a.dir, env, bins.realGit, "clone", "-q", "--upload-pack="+up, "file://"+repo, filepath.Join(a.dir, name))
	}
	push := func(name, branch string) *bgCmd {
		return startBG(t, name, work, env, bins.realGit, "push", "-q", "--receive-pack="+rp, "file://"+repo, "HEAD:refs/heads/"+branch)
	}

	// Running: one clone and one push, admitted and held at the gate.
	running := []*bgCmd{clone("clone-running")}
	waitFor(t, 10*time.Second, "running clone admitted", func() bool { return countFiles(marks) == 1 })
	running = append(running, push("push-running", "b1"))
	waitFor(t, 10*time.Second, "running push admitted", func() bool { return countFiles(marks) == 2 })
	// Queued: one more of each on the same repository.
	queued := []*bgCmd{clone("clone-queued"), push("push-queued", "b2")}
	waitFor(t, 10*time.Second, "both queued", func() bool {
		m := a.scrape()
		return m[`sluice_concurrency_limiting_queued{limit="upload-pack"}`] == 1 && m[`sluice_concurrency_limiting_queued{limit="receive-pack"}`] == 1
	})

	pid := a.Pid()
	switch fault {
	case "sigterm":
		syscall.Kill(pid, syscall.SIGTERM)
		<-a.Done()
	case "sigkill":
		syscall.Kill(pid, syscall.SIGKILL)
		<-a.Done()
	case "sigstop":
		syscall.Kill(pid, syscall.SIGSTOP)
		defer syscall.Kill(pid, syscall.SIGCONT)
	case "hung-listener":
		syscall.Kill(pid, syscall.SIGKILL)
		<-a.Done()
		os.Remove(a.socket)
		ln, err := net.Listen("unix", a.socket)
		if err != nil {
			t.Fatal(err)
		}
		var held []net.Conn
		accepted := make(chan struct{})
		go func() {
			defer close(accepted)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				held = append(held, c) // accept, never read, never answer
			}
		}()
		defer func() {
			ln.Close()
			<-accepted
			for _, c := range held {
				c.Close()
			}
		}()
	}
	// New arrivals after the fault.
	arrivals := []*bgCmd{clone("clone-new"), push("push-new", "b3")}
	// Open the gate: the running commands carry on.
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	// Bounds are hang detectors: max_queue_wait (3 s) + the shim's 2 s
	// slack + git, with a wide margin.
	const bound = 30 * time.Second
	for _, b := range running {
		if code := b.wait(t, bound); code != 0 {
			t.Errorf("%s did not complete after the %s: exit %d\n%s", b.name, fault, code, b.out.String())
		}
	}
	for _, b := range append(queued, arrivals...) {
		code := b.wait(t, bound)
		out := b.out.String()
		switch mode {
		case "open":
			if code != 0 {
				t.Errorf("%s with fail_mode open: exit %d, want git to run anyway\n%s", b.name, code, out)
			}
		case "closed":
			if code == 0 || !strings.Contains(out, "sluice: admission service unavailable") || !strings.Contains(out, `fail_mode is "closed"`) {
				t.Errorf("%s with fail_mode closed: exit %d, want a failure with a sluice: line\n%s", b.name, code, out)
			}
		}
	}

	// The server repository is intact and no ref is half-updated.
	fsck := exec.Command(bins.realGit, "fsck", "--strict", "--no-progress")
	fsck.Dir, fsck.Env = repo, plain
	if out, err := fsck.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("git fsck --strict after %s/%s: %v\n%s", fault, mode, err, out)
	}
	for branch, pushed := range map[string]bool{"b1": true, "b2": mode == "open", "b3": mode == "open"} {
		got := git(t, repo, plain, "rev-parse", "refs/heads/"+branch)
		want := old
		if pushed {
			want = newRev
		}
		if got != old && got != newRev {
			t.Errorf("refs/heads/%s = %s: neither the old %s nor the new %s", branch, got, old, newRev)
		} else if got != want {
			t.Errorf("refs/heads/%s = %s, want %s (pushed: %v)", branch, got, want, pushed)
		}
	}
	for _, name := range []string{"clone-running", "clone-queued", "clone-new"} {
		d := filepath.Join(a.dir, name)
		if _, err := os.Stat(d); err != nil {
			continue // a refused clone leaves nothing (git removes it)
		}
		if got := git(t, d, plain, "rev-parse", "HEAD"); got != old {
			t.Errorf("%s: HEAD %s, want %s", name, got, old)
		}
	}

	if fault == "sigstop" {
		// The agent wakes up, sees every connection gone, and is idle.
		syscall.Kill(pid, syscall.SIGCONT)
		waitFor(t, 10*time.Second, "agent idle after SIGCONT", func() bool {
			m := a.scrape()
			return m[`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`] == 0 &&
				m[`sluice_concurrency_limiting_queued{limit="upload-pack"}`] == 0 &&
				m[`sluice_concurrency_limiting_in_progress{limit="receive-pack"}`] == 0 &&
				m[`sluice_concurrency_limiting_queued{limit="receive-pack"}`] == 0
		})
	}
}
