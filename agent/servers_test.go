package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/procfs"
)

// fakeProc writes a /proc with the given processes: pid → comm, ppid, argv.
type fakeProcess struct {
	comm string
	ppid int
	argv []string
}

func fakeProcFS(t *testing.T, procs map[int]fakeProcess) procfs.FS {
	t.Helper()
	root := t.TempDir()
	for pid, p := range procs {
		dir := filepath.Join(root, strconv.Itoa(pid))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "comm"), []byte(p.comm+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(strconv.Itoa(pid)+" ("+p.comm+") S "+strconv.Itoa(p.ppid)+" 1 1 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0"), 0o644)
		os.WriteFile(filepath.Join(dir, "cmdline"), []byte(strings.Join(p.argv, "\x00")+"\x00"), 0o644)
	}
	return procfs.FS{Root: root}
}

func TestServerOf(t *testing.T) {
	fs := fakeProcFS(t, map[int]fakeProcess{
		// git daemon: listener 10, forked child 11, upload-pack 12.
		10: {"git-daemon", 1, []string{"/usr/lib/git-core/git-daemon"}},
		11: {"git-daemon", 10, []string{"/usr/lib/git-core/git-daemon"}},
		12: {"git-upload-pack", 11, []string{"git-upload-pack", "."}},
		// sshd: listener 20, session 21, git-shell's git 22.
		20: {"sshd", 1, []string{"sshd: /usr/sbin/sshd -D [listener]"}},
		21: {"sshd", 20, []string{"sshd: git [priv]"}},
		22: {"git-upload-pack", 21, []string{"git-upload-pack", "/srv/a.git"}},
		// an operator's login: sshd 21 → bash 30 (interactive) → git 31.
		30: {"bash", 21, []string{"-bash"}},
		31: {"git", 30, []string{"git", "upload-pack", "."}},
		// a forced command through sh -c is not interactive.
		40: {"sh", 21, []string{"sh", "-c", "git-upload-pack '/srv/a.git'"}},
		41: {"git-upload-pack", 40, []string{"git-upload-pack", "/srv/a.git"}},
		// cron: no server at all.
		50: {"cron", 1, []string{"/usr/sbin/cron"}},
		51: {"git", 50, []string{"git", "pack-objects"}},
		// a custom server named in [ebpf] server_comms.
		60: {"my-git-server", 1, []string{"my-git-server"}},
		61: {"git", 60, []string{"git", "upload-pack"}},
	})
	tab := newServerTable(fs)
	for _, tt := range []struct {
		pid   int
		extra []string
		want  serverID
		ok    bool
	}{
		{12, nil, serverID{"git-daemon", 10}, true},
		{22, nil, serverID{"sshd", 20}, true},
		{31, nil, serverID{}, false},
		{41, nil, serverID{"sshd", 20}, true},
		{51, nil, serverID{}, false},
		{61, nil, serverID{}, false},
		{61, []string{"my-git-server"}, serverID{"my-git-server", 60}, true},
		{999, nil, serverID{}, false}, // gone
	} {
		got, ok := tab.serverOf(tt.pid, tt.extra)
		if got != tt.want || ok != tt.ok {
			t.Errorf("serverOf(%d, %v) = %v, %v; want %v, %v", tt.pid, tt.extra, got, ok, tt.want, tt.ok)
		}
	}
}

// TestUnwrappedAggregation: a server's first unwrapped exec is logged at
// once, the next ones once per unwrappedLogEvery with their count, and
// every one is counted.
func TestUnwrappedAggregation(t *testing.T) {
	tab := newServerTable(procfs.FS{Root: t.TempDir()})
	id := serverID{"git-daemon", 10}
	now := time.Unix(1000, 0)
	if ok, n := tab.noteUnwrapped(id, "a", now); !ok || n != 1 {
		t.Fatalf("first: log %v count %d, want true 1", ok, n)
	}
	for i := range 5 {
		if ok, _ := tab.noteUnwrapped(id, "b", now.Add(time.Duration(i+1)*time.Second)); ok {
			t.Fatal("logged again within the interval")
		}
	}
	if ok, _ := tab.noteUnwrapped(serverID{"fcgiwrap", 20}, "c", now.Add(time.Second)); !ok {
		t.Error("another server's first exec not logged at once")
	}
	if ok, n := tab.noteUnwrapped(id, "d", now.Add(unwrappedLogEvery)); !ok || n != 6 {
		t.Errorf("after the interval: log %v count %d, want true 6 (5 held back and this one)", ok, n)
	}
	snap := tab.snapshot()
	if len(snap) != 2 || snap[0].PID != 10 || snap[0].Unwrapped != 7 || snap[0].LastUnwrappedCmd != "d" {
		t.Errorf("snapshot = %+v", snap)
	}
}

func TestServerTableBounded(t *testing.T) {
	tab := newServerTable(procfs.FS{Root: t.TempDir()})
	now := time.Unix(1000, 0)
	for i := range maxServers + 10 {
		tab.noteUnwrapped(serverID{"git-daemon", i + 2}, "x", now.Add(time.Duration(i)*time.Second))
	}
	snap := tab.snapshot()
	if len(snap) != maxServers || snap[0].PID != 12 {
		t.Errorf("%d servers kept, first pid %d; want %d, the oldest forgotten", len(snap), snap[0].PID, maxServers)
	}
}
