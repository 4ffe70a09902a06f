package main

import (
	"context"
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

// TestRawFetch runs the discarding client against a real git daemon: a
// full clone, a shallow clone and a fetch with a have each receive a
// pack, smaller in that order; the server's ERR line is the failure's text.
func TestRawFetch(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	dir := t.TempDir()
	g := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir, "GIT_AUTHOR_NAME=a", "GIT_AUTHOR_EMAIL=a@a",
			"GIT_COMMITTER_NAME=a", "GIT_COMMITTER_EMAIL=a@a")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	work := filepath.Join(dir, "work")
	g("init", "-q", "-b", "main", work)
	var first string
	for i := 0; i < 20; i++ {
		os.WriteFile(filepath.Join(work, fmt.Sprintf("f%d", i)), []byte(strings.Repeat(fmt.Sprintf("line %d\n", i), 2000)), 0o644)
		g("-C", work, "add", ".")
		g("-C", work, "commit", "-q", "-m", fmt.Sprint(i))
		if i == 0 {
			first = g("-C", work, "rev-parse", "HEAD")
		}
	}
	g("clone", "-q", "--bare", work, filepath.Join(dir, "srv", "r.git"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	d := exec.Command("git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", fmt.Sprintf("--port=%d", port),
		"--base-path="+filepath.Join(dir, "srv"), filepath.Join(dir, "srv"))
	d.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	// git runs git-daemon as its child: kill the whole process group.
	d.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-d.Process.Pid, syscall.SIGKILL); d.Wait() })
	url := fmt.Sprintf("git://127.0.0.1:%d/r.git", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("git daemon not listening: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx := context.Background()
	full, err := rawFetch(ctx, url, "127.0.0.2", nil, 0)
	if err != nil || full == 0 {
		t.Fatalf("clone: %d bytes, %v", full, err)
	}
	shallow, err := rawFetch(ctx, url, "127.0.0.3", nil, 1)
	if err != nil || shallow == 0 || shallow >= full {
		t.Fatalf("shallow: %d bytes (full %d), %v", shallow, full, err)
	}
	fetch, err := rawFetch(ctx, url, "127.0.0.4", []string{first}, 0)
	if err != nil || fetch == 0 || fetch >= full {
		t.Fatalf("fetch: %d bytes (full %d), %v", fetch, full, err)
	}
	t.Logf("pack bytes: clone %d, shallow %d, fetch %d", full, shallow, fetch)
	_, oc, msg, _ := rawOp(ctx, 10*time.Second, fmt.Sprintf("git://127.0.0.1:%d/missing.git", port), "127.0.0.5", nil, 0)
	if oc != failed || !strings.Contains(msg, "remote error: access denied or repository not exported") {
		t.Errorf("missing repository: %s (%s), want %s with git daemon's ERR text", oc, msg, failed)
	}
}
