package agent

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/policy"
)

// fakeTree is a process tree where a pack either runs or does not.
type fakeTree struct {
	mu    sync.Mutex
	packs map[int]string // root pid → git subcommand running under it
	wrote map[int]bool   // root pid → that subcommand has written output
	scans int
}

func (f *fakeTree) findGit(root int, sub string, wrote bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scans++
	return f.packs[root] == sub && (!wrote || f.wrote[root])
}

func (f *fakeTree) start(root int, sub string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.packs[root] = sub
}

func (f *fakeTree) write(root int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wrote[root] = true
}

// procRecorder records what the watcher does to processes.
type procRecorder struct {
	mu    sync.Mutex
	calls []string
	told  []string
}

func (r *procRecorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
}

func (r *procRecorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// timeoutObserver counts timeouts by limit/kind.
type timeoutObserver struct {
	nopObserver
	mu     sync.Mutex
	counts map[string]int
}

func (o *timeoutObserver) Timeout(limit, kind string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.counts[limit+"/"+kind]++
}

func (o *timeoutObserver) get(k string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.counts[k]
}

// fakePID is above the kernel's pid_max, so no real process is touched.
const fakePID = 1 << 23

func testWatcher(t *testing.T) (*timekeeper, *fakeTree, *procRecorder, *timeoutObserver) {
	tree := &fakeTree{packs: map[int]string{}, wrote: map[int]bool{}}
	rec := &procRecorder{}
	obs := &timeoutObserver{counts: map[string]int{}}
	wr := newTimekeeper(zaptest.NewLogger(t), obs, procOps{
		snapshot: func() (treeView, error) { return tree, nil },
		tell: func(w *deadlines, msg string) error {
			rec.mu.Lock()
			rec.told = append(rec.told, msg)
			rec.mu.Unlock()
			rec.add("tell")
			return nil
		},
		term: func(w *deadlines) error { rec.add("term"); return nil },
		kill: func(w *deadlines) (int, error) { rec.add("kill"); return 1, nil },
	})
	return wr, tree, rec, obs
}

func timeoutsConfig(uploadPack, grace time.Duration) *policy.Config {
	return &policy.Config{Timeouts: policy.Timeouts{
		UploadPackNegotiation:    policy.Duration{Duration: uploadPack},
		UploadArchiveNegotiation: policy.Duration{Duration: time.Minute},
		KillGrace:                policy.Duration{Duration: grace},
	}}
}

func testLease(sub string, pid int) *Lease {
	return &Lease{CorrelationID: "corr-1", Subcommand: sub, Limit: sub, Peer: PeerCred{PID: int32(pid), pidfd: -1}}
}

func TestNegotiationTimeoutStopsThenKills(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wr, tree, rec, obs := testWatcher(t)
		w := wr.arm(testLease("upload-pack", fakePID), nil, timeoutsConfig(time.Second, 5*time.Second))
		if w == nil {
			t.Fatal("nothing armed for upload-pack")
		}
		time.Sleep(999 * time.Millisecond)
		synctest.Wait()
		if got := rec.get(); len(got) != 0 {
			t.Fatalf("acted before the timeout: %v", got)
		}
		tree.mu.Lock()
		scans := tree.scans
		tree.mu.Unlock()
		if scans == 0 {
			t.Error("no scan while the negotiation was pending")
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if got := strings.Join(rec.get(), ","); got != "tell,term" {
			t.Fatalf("at the timeout: %s, want tell,term", got)
		}
		want := "sluice: upload-pack exceeded upload_pack_negotiation = 1s; the client's request was not complete in time, so the server stopped it (correlation id corr-1)\n"
		if rec.told[0] != want {
			t.Errorf("message %q\nwant    %q", rec.told[0], want)
		}
		if obs.get("upload-pack/"+KindUploadPackNegotiation) != 1 {
			t.Errorf("timeouts counted: %v", obs.counts)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := strings.Join(rec.get(), ","); got != "tell,term,kill" {
			t.Errorf("after the grace: %s, want tell,term,kill", got)
		}
		w.disarm()
		time.Sleep(10 * time.Second) // the scan loop ends
	})
}

func TestNegotiationEndSeenByScan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wr, tree, rec, _ := testWatcher(t)
		w := wr.arm(testLease("upload-pack", fakePID), &policy.Limit{Name: "upload-pack"}, timeoutsConfig(time.Second, time.Second))
		time.Sleep(500 * time.Millisecond)
		tree.start(fakePID, "pack-objects")
		// The transfer outlasts the negotiation timeout many times over.
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := rec.get(); len(got) != 0 {
			t.Errorf("a pack in progress was stopped: %v", got)
		}
		wr.mu.Lock()
		n := len(wr.pending)
		wr.mu.Unlock()
		if n != 0 {
			t.Errorf("%d negotiations still pending after the pack started", n)
		}
		w.disarm()
	})
}

func TestNegotiationEndSeenAtExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wr, tree, rec, _ := testWatcher(t)
		// Archive writer under upload-archive: it starts at once (which
		// ends nothing: it reads the client's arguments itself), and writes
		// just before expiry, between two scans of the 1m timeout.
		w := wr.arm(testLease("upload-archive", fakePID), nil, timeoutsConfig(time.Second, time.Second))
		tree.start(fakePID, "upload-archive--writer")
		wr.noteRoot(fakePID, "upload-archive--writer", "exec tracer")
		time.Sleep(time.Minute - time.Millisecond)
		if w.negOverNow() {
			t.Fatal("the writer's start ended the negotiation")
		}
		tree.write(fakePID)
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := rec.get(); len(got) != 0 {
			t.Errorf("stopped although the writer ran at expiry: %v", got)
		}
		w.disarm()
	})
}

func TestExecTracerEndsNegotiationAndMaxRuntimeStillApplies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wr, _, rec, obs := testWatcher(t)
		rule := &policy.Limit{Name: "upload-pack", MaxRuntime: policy.Duration{Duration: 3 * time.Second}}
		w := wr.arm(testLease("upload-pack", fakePID), rule, timeoutsConfig(time.Second, time.Second))
		// pack-objects under another process ends nothing.
		wr.noteRoot(fakePID+1, "pack-objects", "test")
		// The archive writer does not end an upload-pack's negotiation.
		wr.noteRoot(fakePID, "upload-archive--writer", "test")
		time.Sleep(100 * time.Millisecond)
		wr.noteRoot(fakePID, "pack-objects", "exec tracer")
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := rec.get(); len(got) != 0 {
			t.Fatalf("acted after the negotiation ended: %v", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := strings.Join(rec.get(), ","); got != "tell,term" {
			t.Fatalf("at max_runtime: %s", got)
		}
		if !strings.Contains(rec.told[0], `exceeded max_runtime = 3s of limit "upload-pack"`) {
			t.Errorf("message %q", rec.told[0])
		}
		if obs.get("upload-pack/"+KindMaxRuntime) != 1 {
			t.Errorf("timeouts counted: %v", obs.counts)
		}
		// The command exits on SIGTERM; the sweep at the end of the grace
		// still runs once (it kills what is left of the tree, if anything).
		w.disarm()
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := strings.Join(rec.get(), ","); got != "tell,term,kill" {
			t.Errorf("after disarm: %s", got)
		}
	})
}

func TestNothingArmed(t *testing.T) {
	wr, _, _, _ := testWatcher(t)
	for _, tt := range []struct {
		sub  string
		rule *policy.Limit
		cfg  *policy.Config
	}{
		{"receive-pack", &policy.Limit{Name: "receive-pack"}, timeoutsConfig(time.Second, time.Second)},
		{"upload-pack", nil, timeoutsConfig(0, time.Second)}, // "0s" disables it
		{"pack-objects", &policy.Limit{Name: "pack-objects"}, timeoutsConfig(time.Second, time.Second)},
	} {
		if w := wr.arm(testLease(tt.sub, fakePID), tt.rule, tt.cfg); w != nil {
			w.disarm()
			t.Errorf("%s: armed a watch, want none", tt.sub)
		}
	}
	var w *deadlines
	w.disarm() // a nil watch is a no-op
}

// TestPackObjectsAdmissionEndsNegotiation: a pack-objects whose process
// descends from the lease's peer ends the negotiation (the ppid walk on
// real processes: the peer is this test process, the pack-objects a child).
func TestPackObjectsAdmissionEndsNegotiation(t *testing.T) {
	wr, _, rec, _ := testWatcher(t)
	var told []*Lease // what the state directory would be told (recovery.go)
	wr.negotiated = func(l *Lease) { told = append(told, l) }
	l := testLease("upload-pack", os.Getpid())
	w := wr.arm(l, nil, timeoutsConfig(time.Hour, time.Second))
	defer w.disarm()
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	wr.noteStart(child.Process.Pid, "receive-pack", "admission") // not a marker
	if w.negOverNow() {
		t.Fatal("receive-pack ended the negotiation")
	}
	wr.noteStart(child.Process.Pid, "pack-objects", "admission")
	if !w.negOverNow() {
		t.Fatal("a descendant's pack-objects did not end the negotiation")
	}
	if len(told) != 1 || told[0] != l {
		t.Errorf("negotiation end reported %d times, want once for the lease", len(told))
	}
	if got := rec.get(); len(got) != 0 {
		t.Errorf("acted: %v", got)
	}
}

func (w *deadlines) negOverNow() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.negOver
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Minute: "10m", time.Hour: "1h", 90 * time.Second: "1m30s",
		1500 * time.Millisecond: "1.5s", time.Second: "1s", 2*time.Hour + time.Minute: "2h1m",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestTimeoutChangesOnReload(t *testing.T) {
	old := timeoutsConfig(10*time.Minute, 5*time.Second)
	old.Limits = []policy.Limit{{Name: "upload-pack"}}
	cfg := timeoutsConfig(0, 5*time.Second)
	cfg.Agent.QueueFeedbackAfter = policy.Duration{Duration: time.Second}
	cfg.Limits = []policy.Limit{{Name: "upload-pack", MaxRuntime: policy.Duration{Duration: time.Hour}}}
	got := strings.Join(timeoutChanges(old, cfg), "\n")
	for _, want := range []string{
		"upload_pack_negotiation 10m -> 0s",
		"queue_feedback_after 0s -> 1s",
		"upload-pack: max_runtime 0s -> 1h",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("changes lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "kill_grace") || strings.Contains(got, "upload_archive") {
		t.Errorf("unchanged keys reported:\n%s", got)
	}
}

func TestArchiveWriterMustWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wr, tree, rec, obs := testWatcher(t)
		cfg := timeoutsConfig(time.Second, time.Second)
		cfg.Timeouts.UploadArchiveNegotiation = policy.Duration{Duration: 2 * time.Second}
		w := wr.arm(testLease("upload-archive", fakePID), nil, cfg)
		tree.start(fakePID, "upload-archive--writer") // waiting for arguments
		time.Sleep(2500 * time.Millisecond)
		synctest.Wait()
		if got := strings.Join(rec.get(), ","); got != "tell,term" {
			t.Errorf("a writer that never wrote: %s, want tell,term", got)
		}
		if obs.get("upload-archive/"+KindUploadArchiveNegotiation) != 1 {
			t.Errorf("timeouts counted: %v", obs.counts)
		}
		w.disarm()
		time.Sleep(2 * time.Second)
	})
}

// TestArmAtKeepsDeadlineAcrossRestart: a lease armed as if since an
// earlier admission (an adopted lease) fires at the original deadline, and
// at once when that passed while no agent ran.
func TestArmAtKeepsDeadlineAcrossRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wr, _, rec, obs := testWatcher(t)
		neg := negotiationOf("upload-pack", &timeoutsConfig(4*time.Second, time.Second).Timeouts)
		w := wr.armAt(testLease("upload-pack", fakePID), neg, 0, time.Second, time.Now().Add(-3*time.Second), -1)
		time.Sleep(999 * time.Millisecond)
		synctest.Wait()
		if got := rec.get(); len(got) != 0 {
			t.Fatalf("acted before the recorded deadline: %v", got)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if got := strings.Join(rec.get(), ","); got != "tell,term" {
			t.Fatalf("at the recorded deadline: %q, want tell,term", got)
		}
		w.disarm()

		w = wr.armAt(testLease("upload-pack", fakePID+1), negotiation{}, 6*time.Second, time.Second, time.Now().Add(-time.Minute), -1)
		synctest.Wait()
		if obs.get("upload-pack/"+KindMaxRuntime) != 1 {
			t.Errorf("a max_runtime that passed during the restart did not fire at once: %v", obs.counts)
		}
		w.disarm()
		time.Sleep(10 * time.Second) // the scan loop ends
	})
}
