package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func requireNoSwap(t *testing.T) {
	t.Helper()
	for _, line := range strings.Split(readTrim(t, "/proc/meminfo"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "SwapTotal:" && f[1] != "0" {
			t.Skipf("swap is on (%s): a small memory limit without a memsw limit would swap, not OOM-kill", line)
		}
	}
}

// TestEventsV1OOMKill: a hog placed in a 64 MiB bucket is OOM-killed, and
// the eventfd registered on the bucket's memory.oom_control delivers an
// EventOOM; the parent's vmpressure registration sees the reclaim that
// precedes it (vmpressure propagates up). Real kernel, cgroup v1.
func TestEventsV1OOMKill(t *testing.T) {
	requireNoSwap(t)
	m := newTestManager(t, Config{Buckets: 2, Bucket: Limits{MemoryBytes: 64 << 20}})
	if m.Mode() == ModeUnified {
		t.Skip("v1 eventfd notifications need a cgroup v1 memory controller; this host is unified (see TestEventsInotify)")
	}
	targets := EventTargets(m, []string{"medium", "critical"})
	if len(targets) != 3 || !targets[0].OOM || len(targets[0].PressureLevels) != 2 || !targets[2].OOM {
		t.Fatalf("EventTargets = %+v, want parent (OOM + 2 levels) and 2 buckets (OOM)", targets)
	}
	l, errs := ListenEvents(targets)
	if len(errs) > 0 {
		t.Fatalf("ListenEvents: %v", errs)
	}
	defer l.Close()
	if n := l.Registrations(); n != 5 {
		t.Fatalf("registrations = %d, want 5 (3 OOM + 2 pressure levels)", n)
	}
	c := startChild(t, "hog", nil)
	if err := m.Place(c.pid(), 1); err != nil {
		t.Fatal(err)
	}
	c.goOn(t)
	bucket := targets[2].Dir
	kinds := map[string]int{}
	var oomAt time.Time
	var killsAtEvent uint64
	deadline := time.After(30 * time.Second)
	for oomAt.IsZero() {
		select {
		case ev := <-l.C():
			kinds[fmt.Sprintf("%v %s %s", ev.Kind, filepath.Base(ev.Dir), ev.Level)]++
			if ev.Kind == EventOOM {
				if ev.Dir != bucket {
					t.Errorf("OOM event for %s, want the bucket %s", ev.Dir, bucket)
				}
				oomAt = time.Now()
				st, _ := m.BucketStats(1)
				killsAtEvent = st.OOMKills
			}
		case <-deadline:
			t.Fatalf("no OOM event within 30s; events: %v", kinds)
		}
	}
	c.cmd.Wait()
	ws, _ := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("hog: status %v, want killed by SIGKILL", ws)
	}
	st, err := m.BucketStats(1)
	if err != nil || st.OOMKills < 1 {
		t.Fatalf("bucket oom_kill = %d (%v), want >= 1", st.OOMKills, err)
	}
	t.Logf("events: %v; bucket oom_kill was %d when the OOM event was read, %d after the hog's exit", kinds, killsAtEvent, st.OOMKills)
}

// TestEventsInotify: the v2 path (inotify IN_MODIFY on memory.events and
// memory.events.local) on ordinary files, since this host's cgroup2 tree
// has no memory controller; where it has one, also on the real file.
func TestEventsInotify(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"memory.events", "memory.events.local"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("oom_kill 0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l, errs := ListenEvents([]EventTarget{{Dir: dir, V2: true}})
	if len(errs) > 0 || l == nil {
		t.Fatalf("ListenEvents: %v", errs)
	}
	defer l.Close()
	if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte("oom_kill 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-l.C():
		if ev.Kind != EventMemoryEvents || ev.Dir != dir {
			t.Fatalf("event %+v, want memory.events for %s", ev, dir)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no inotify event within 10s of writing memory.events")
	}
	// Missing files: every registration fails, no listener.
	if l2, errs := ListenEvents([]EventTarget{{Dir: filepath.Join(dir, "missing"), V2: true}}); l2 != nil || len(errs) != 2 {
		t.Fatalf("missing memory.events: listener %v, errors %v; want nil and 2 errors", l2, errs)
	}
}

// TestEventsRegistrationFailure: a directory that is not a cgroup cannot
// take a v1 registration; the error names the file.
func TestEventsRegistrationFailure(t *testing.T) {
	dir := t.TempDir()
	l, errs := ListenEvents([]EventTarget{{Dir: dir, OOM: true, PressureLevels: []string{"critical"}}})
	if l != nil || len(errs) != 2 || !strings.Contains(errs[0].Error(), filepath.Join(dir, "memory.oom_control")) {
		t.Fatalf("listener %v, errors %v; want nil and 2 errors naming the files", l, errs)
	}
}

// TestFindOwnCgroup: the nearest memory-limited cgroup on the path from
// the agent's cgroup up is watched; none at all means the host.
func TestFindOwnCgroup(t *testing.T) {
	requireRoot(t)
	own := ownCgroup(t)
	memBase, ok := own["memory"]
	if !ok {
		t.Skip("no cgroup v1 memory hierarchy in /proc/self/cgroup (FindOwnCgroup's v1 path)")
	}
	hier := filepath.Join(defaultMountpoint, "memory")
	if lim := readTrim(t, filepath.Join(hier, memBase, "memory.limit_in_bytes")); lim != "9223372036854771712" {
		t.Skipf("the test's own memory cgroup %s already has a limit (%s); the fixture needs an unlimited one", memBase, lim)
	}
	limited := filepath.Join(memBase, fmt.Sprintf("sluice-own-%d", os.Getpid()))
	child := filepath.Join(limited, "child")
	if err := os.MkdirAll(filepath.Join(hier, child), 0o755); err != nil {
		t.Skipf("cannot create a v1 memory cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.Remove(filepath.Join(hier, child))
		os.Remove(filepath.Join(hier, limited))
	})
	if err := os.WriteFile(filepath.Join(hier, limited, "memory.limit_in_bytes"), []byte(strconv.Itoa(200<<20)), 0); err != nil {
		t.Fatal(err)
	}
	fixture := func(memPath string) string {
		p := filepath.Join(t.TempDir(), "cgroup")
		os.WriteFile(p, []byte("4:memory:"+memPath+"\n2:cpu,cpuacct:/\n0::/\n"), 0o644)
		return p
	}
	for _, c := range []struct {
		from, want string
	}{{child, limited}, {limited, limited}} {
		o, err := FindOwnCgroup("", fixture(c.from))
		if err != nil || o == nil {
			t.Fatalf("from %s: %+v, %v", c.from, o, err)
		}
		if o.Path != c.want || o.Limit != 200<<20 || o.V2 {
			t.Errorf("from %s: %+v, want path %s, limit 200 MiB, v1", c.from, o, c.want)
		}
		s, err := o.Stats()
		if err != nil || s.MemoryLimit != 200<<20 {
			t.Errorf("Stats: limit %d, %v", s.MemoryLimit, err)
		}
		if ts := o.EventTargets([]string{"critical"}); len(ts) != 1 || !ts[0].OOM || ts[0].Dir != filepath.Join(hier, c.want) {
			t.Errorf("EventTargets = %+v", ts)
		}
	}
	if o, err := FindOwnCgroup("", fixture(memBase)); err != nil || o != nil {
		t.Errorf("unlimited own cgroup: %+v, %v; want nil (watch the host)", o, err)
	}
}
