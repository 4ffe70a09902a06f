package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// testNow is the fixed "now" of the rendering tests.
var testNow = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func testStatus() *admitpb.StatusResponse {
	us := func(t time.Time) int64 { return t.UnixMicro() }
	return &admitpb.StatusResponse{
		Version:         "v1.2.3",
		StartedUnixUsec: us(testNow.Add(-(3*time.Hour + 2*time.Minute))),
		ConfigPath:      "/etc/sluice/sluice.toml",
		FailMode:        "open",
		Socket:          "/run/sluice/sluice.sock",
		Limits: []*admitpb.LimitStatus{
			{Name: "upload-pack", Match: []string{"upload-pack"}, Key: "repo", QueueOrder: "fifo", CurrentLimit: 20,
				MaxQueueSize: 100, MaxQueueWaitUsec: 30e6, InFlight: 3, Queued: 2, AdmittedTotal: 120, DroppedMaxSize: 4,
				DroppedMaxTime: 1, Keys: 2},
			{Name: "pack-objects", Match: []string{"pack-objects"}, Key: "remote_ip", QueueOrder: "lifo", Adaptive: true,
				CurrentLimit: 7, MaxQueueSize: 0, Keys: 0, LastBackoffUnixUsec: us(testNow.Add(-90 * time.Second)),
				LastBackoffReason: "memory 93% of limit"},
		},
		Leases: []*admitpb.LeaseInfo{
			{LeaseId: "a", CorrelationId: "c-old", Subcommand: "upload-pack", Repo: []byte("/srv/git/group/project.git"),
				RemoteIp: "192.0.2.10", User: "alice", State: "running", SinceUnixUsec: us(testNow.Add(-70 * time.Second)),
				WaitedUsec: 5e6, CpuUsec: 1500000},
			{LeaseId: "b", CorrelationId: "c-busy", Subcommand: "upload-pack", Repo: []byte("/srv/git/a/very/long/path/to/some/deeply/nested/repository-name.git"),
				RemoteIp: "192.0.2.11", State: "running", SinceUnixUsec: us(testNow.Add(-20 * time.Second)), WaitedUsec: 0,
				CpuUsec: 9000000, Bucket: "/sluice/repos/17"},
			{LeaseId: "c", CorrelationId: "c-queued", Subcommand: "upload-pack", Repo: []byte("/srv/git/group/project.git"),
				RemoteIp: "192.0.2.12", State: "queued", SinceUnixUsec: us(testNow.Add(-2 * time.Second))},
		},
		Cgroups: &admitpb.CgroupStatus{State: "hybrid", ParentPath: "/sluice", Buckets: 64,
			MemoryUsageBytes: 1288490189, MemoryLimitBytes: 4 << 30, CpuPeriods: 100, CpuThrottledPeriods: 3,
			OomKills: 1, PlacementFailures: 2},
		EbpfState: "running",
	}
}

func TestRenderStatus(t *testing.T) {
	var b strings.Builder
	renderStatus(&b, testStatus(), testNow)
	got := b.String()
	want := `sluiced v1.2.3, up 3h02m (since 2026-11-23 08:58:00 UTC)
config     /etc/sluice/sluice.toml
fail mode  open
socket     /run/sluice/sluice.sock
cgroups    hybrid, parent /sluice (64 buckets); memory 1.2 GiB of 4.0 GiB; CPU throttled 3 of 100 periods; 1 OOM kills; 2 placement failures
eBPF       running

RULE          MATCH         KEY        LIMIT       QUEUE          IN FLIGHT  QUEUED  KEYS  ADMITTED  DROPPED SIZE/TIME  LAST BACKOFF
upload-pack   upload-pack   repo       20 static   100, 30s fifo  3          2       2     120       4/1                -
pack-objects  pack-objects  remote_ip  7 adaptive  none           0          0       0     0         0/0                1m30s ago: memory 93% of limit

2 running, 1 queued; 'sluice top' lists them
`
	if got != want {
		gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := range max(len(gl), len(wl)) {
			if i >= len(gl) || i >= len(wl) || gl[i] != wl[i] {
				t.Errorf("status line %d differs:\n got %q\nwant %q\nwhole:\n%s", i+1, gl[min(i, len(gl)-1)], wl[min(i, len(wl)-1)], got)
				break
			}
		}
	}
}

func TestRenderStatusSparse(t *testing.T) {
	// An agent that reports no cgroups, eBPF or socket yet, and no rules.
	var b strings.Builder
	renderStatus(&b, &admitpb.StatusResponse{StartedUnixUsec: testNow.UnixMicro()}, testNow)
	got := b.String()
	for _, want := range []string{"sluiced -, up 0ms", "cgroups    not reported", "eBPF       not reported",
		"no rules: every git command runs unlimited", "0 running, 0 queued"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
}

func TestCgroupLine(t *testing.T) {
	tests := []struct {
		c    *admitpb.CgroupStatus
		want string
	}{
		{nil, "not reported"},
		{&admitpb.CgroupStatus{State: "disabled"}, "disabled"},
		{&admitpb.CgroupStatus{State: "unavailable: no memory controller", PlacementFailures: 3}, "unavailable: no memory controller, 3 placement failures"},
		{&admitpb.CgroupStatus{State: "v1", MemoryUsageBytes: 512, MemoryLimitBytes: 9223372036854771712},
			"v1; memory 512 B of no limit; CPU throttled 0 of 0 periods; 0 OOM kills; 0 placement failures"},
	}
	for _, tt := range tests {
		if got := cgroupLine(tt.c); got != tt.want {
			t.Errorf("cgroupLine(%v) = %q, want %q", tt.c, got, tt.want)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	st := testStatus()
	st.Leases[2].Repo = []byte("/srv/git/caf\xe9/\x00x.git") // Latin-1 é and a NUL: not UTF-8
	b, err := statusJSON(st)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Version string `json:"version"`
		Limits  []struct {
			Name           string `json:"name"`
			InFlight       int64  `json:"in_flight"`
			Queued         int64  `json:"queued"`
			DroppedMaxSize uint64 `json:"dropped_max_size"`
			DroppedMaxTime uint64 `json:"dropped_max_time"`
			Adaptive       bool   `json:"adaptive"`
		} `json:"limits"`
		Leases []struct {
			CorrelationID string `json:"correlation_id"`
			Repo          string `json:"repo"`
			CPUUsec       int64  `json:"cpu_usec"`
			Bucket        string `json:"bucket"`
		} `json:"leases"`
		Cgroups struct {
			OomKills uint64 `json:"oom_kills"`
		} `json:"cgroups"`
		EbpfState string `json:"ebpf_state"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if got.Version != "v1.2.3" || len(got.Limits) != 2 || got.Limits[0].InFlight != 3 || got.Limits[0].Queued != 2 ||
		got.Limits[0].DroppedMaxSize != 4 || got.Limits[0].DroppedMaxTime != 1 || !got.Limits[1].Adaptive ||
		got.Leases[1].CPUUsec != 9000000 || got.Leases[1].Bucket != "/sluice/repos/17" || got.Cgroups.OomKills != 1 ||
		got.EbpfState != "running" || got.Leases[0].Repo != "/srv/git/group/project.git" {
		t.Errorf("decoded %+v from\n%s", got, b)
	}
	if want := `/srv/git/caf\xe9/` + "\x00x.git"; got.Leases[2].Repo != want {
		t.Errorf("non-UTF-8 repo = %q, want %q", got.Leases[2].Repo, want)
	}
	// Numbers are JSON numbers, zero values are present (scripts need no
	// defaults), and no field is base64 or a quoted number.
	for _, want := range []string{`"in_flight": 0`, `"in_flight": 3`, `"last_backoff_reason": ""`, `"cpu_usec": 9000000`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s missing:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), `"in_flight": "`) {
		t.Errorf("a count is a string:\n%s", b)
	}
	// The output is stable: the same status encodes to the same bytes.
	if b2, _ := statusJSON(st); !bytes.Equal(b, b2) {
		t.Error("two encodings of one status differ")
	}
}

// TestStatusJSONJq does what a script does: arithmetic in jq on the counts.
func TestStatusJSONJq(t *testing.T) {
	jq, err := exec.LookPath("jq")
	if err != nil {
		t.Skip("jq is not installed (apt-get install jq; the README's test command installs it)")
	}
	b, err := statusJSON(testStatus())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(jq, "-r", `[.limits[].in_flight] | add | . > 2 and . < 100`)
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("jq: %v", err)
	}
	if strings.TrimSpace(string(out)) != "true" {
		t.Errorf("jq: sum of in_flight in (2,100) = %s, want true; input:\n%s", out, b)
	}
	cmd = exec.Command(jq, "-r", `.leases[0].repo`)
	cmd.Stdin = bytes.NewReader(b)
	if out, err = cmd.Output(); err != nil || strings.TrimSpace(string(out)) != "/srv/git/group/project.git" {
		t.Errorf("jq .leases[0].repo = %q, %v", out, err)
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                           "0ms",
		850 * time.Millisecond:                 "850ms",
		1234 * time.Millisecond:                "1.2s",
		42 * time.Second:                       "42s",
		4*time.Minute + 5*time.Second:          "4m05s",
		3*time.Hour + 2*time.Minute:            "3h02m",
		52*time.Hour + 10*time.Minute:          "2d04h",
		59*time.Minute + 59*time.Second:        "59m59s",
		47*time.Hour + 59*time.Minute:          "47h59m",
		999*time.Millisecond + time.Nanosecond: "999ms",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestFmtBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := fmtBytes(n); got != want {
			t.Errorf("fmtBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestStatusShowsPackCache(t *testing.T) {
	var b strings.Builder
	renderStatus(&b, &admitpb.StatusResponse{PackCache: &admitpb.PackCacheStatus{
		Dir: "/var/cache/sluice/packs", MaxAgeUsec: 300e6, MaxBytes: 10 << 30, MinOccurrences: 1,
		Entries: 2, SizeBytes: 3 << 20, Hits: 30, Joins: 17, Misses: 3, Fills: 3, ServedBytes: 47 << 20,
		WrittenBytes: 3 << 20, EvictionsSize: 1, BypassDisk: 2,
	}}, time.Now())
	for _, want := range []string{"pack cache: /var/cache/sluice/packs: 2 entries, 3.0 MiB of 10.0 GiB", "30 hits + 17 joins of 50 (94%)", "3 fills (0 failed)", "evicted 1 by size", "2 disk"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}
