package cgroup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func openFixture(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestParseMemoryStatV1(t *testing.T) {
	m, err := ParseMemoryStat(openFixture(t, "v1_memory.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"total_rss", "total_inactive_file", "total_active_file", "hierarchical_memory_limit", "cache"} {
		if _, ok := m[k]; !ok {
			t.Errorf("key %q missing", k)
		}
	}
	if m["hierarchical_memory_limit"] < v1UnlimitedFloor {
		t.Errorf("hierarchical_memory_limit = %d, want the v1 'unlimited' value", m["hierarchical_memory_limit"])
	}

	lim, err := ParseMemoryStat(openFixture(t, "v1_memory.stat.limited"))
	if err != nil {
		t.Fatal(err)
	}
	if got := lim["hierarchical_memory_limit"]; got != 64<<20 {
		t.Errorf("limited hierarchical_memory_limit = %d, want %d", got, 64<<20)
	}
}

func TestParseMemoryStatV2(t *testing.T) {
	m, err := ParseMemoryStat(openFixture(t, "v2_memory.stat"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"anon": 52375552, "inactive_file": 120565760, "active_file": 26976256, "pgfault": 1844761}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %d, want %d", k, m[k], v)
		}
	}
}

func TestParseOOMControlAndEvents(t *testing.T) {
	for _, tc := range []struct {
		file string
		want uint64
	}{
		{"v1_memory.oom_control", 0},
		{"v1_memory.oom_control.killed", 1},
		{"v2_memory.events", 2},
	} {
		m, err := ParseFlatKeyed(openFixture(t, tc.file))
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if got, ok := m["oom_kill"]; !ok || got != tc.want {
			t.Errorf("%s: oom_kill = %d (present %v), want %d", tc.file, got, ok, tc.want)
		}
	}
}

func TestParseCPUStat(t *testing.T) {
	v1, err := ParseCPUStat(openFixture(t, "v1_cpu.stat.throttled"))
	if err != nil {
		t.Fatal(err)
	}
	if v1["nr_periods"] != 12 || v1["nr_throttled"] != 11 || v1["throttled_time"] != 851897230 {
		t.Errorf("v1 throttled cpu.stat = %v", v1)
	}
	v2, err := ParseCPUStat(openFixture(t, "v2_cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	if v2["usage_usec"] != 1184620533 || v2["nr_throttled"] != 20877 || v2["throttled_usec"] != 612800441 {
		t.Errorf("v2 cpu.stat = %v", v2)
	}
	uni, err := ParseCPUStat(openFixture(t, "unified_cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := uni["usage_usec"]; !ok {
		t.Errorf("unified cpu.stat without usage_usec: %v", uni)
	}
	if _, ok := uni["nr_periods"]; ok {
		t.Errorf("unified cpu.stat of a tree without the cpu controller has nr_periods: %v", uni)
	}
}

func TestParseFlatKeyedErrors(t *testing.T) {
	for _, in := range []string{"novalue\n", "key notanumber\n", "key -1\n"} {
		if _, err := ParseFlatKeyed(strings.NewReader(in)); err == nil {
			t.Errorf("ParseFlatKeyed(%q): no error", in)
		}
	}
	m, err := ParseFlatKeyed(strings.NewReader("\na 1\n\nb 2\n"))
	if err != nil || m["a"] != 1 || m["b"] != 2 {
		t.Errorf("blank lines: %v, %v", m, err)
	}
}

func TestParsePSI(t *testing.T) {
	p, err := ParsePSI(openFixture(t, "v2_memory.pressure"))
	if err != nil {
		t.Fatal(err)
	}
	want := PSI{SomeAvg10: 12.45, SomeAvg60: 4.03, FullAvg10: 9.80, FullAvg60: 3.11,
		SomeTotal: 38291145 * time.Microsecond, FullTotal: 30120877 * time.Microsecond}
	if p != want {
		t.Errorf("ParsePSI = %+v, want %+v", p, want)
	}
	for _, f := range []string{"proc_pressure_cpu", "proc_pressure_memory", "proc_pressure_io", "unified_cpu.pressure", "unified_memory.pressure"} {
		if _, err := ParsePSI(openFixture(t, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	// Kernels before 5.13 have no "full" line in cpu pressure.
	p, err = ParsePSI(strings.NewReader("some avg10=1.50 avg60=0.25 avg300=0.00 total=42\n"))
	if err != nil || p.SomeAvg10 != 1.5 || p.SomeTotal != 42*time.Microsecond || p.FullAvg10 != 0 {
		t.Errorf("some-only: %+v, %v", p, err)
	}
	for _, in := range []string{"", "full avg10=0.00 total=0\n", "some avg10=x\n", "some avg10\n", "other avg10=1\n"} {
		if _, err := ParsePSI(strings.NewReader(in)); err == nil {
			t.Errorf("ParsePSI(%q): no error", in)
		}
	}
}

func TestReadV1StatsFixtureLimit(t *testing.T) {
	// readUintFile normalises v2 "max" and v1's huge "unlimited" is caught by
	// readV1Stats; check both on files.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte("max\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := readUintFile(filepath.Join(dir, "memory.max")); err != nil || n != 0 {
		t.Errorf("memory.max \"max\" = %d, %v; want 0", n, err)
	}
	if n, err := readUintFile(filepath.Join(dir, "missing")); err != nil || n != 0 {
		t.Errorf("missing file = %d, %v; want 0, nil", n, err)
	}
}

func TestSharesToWeight(t *testing.T) {
	for _, tc := range []struct{ shares, weight uint64 }{
		{2, 1}, {1024, 39}, {262144, 10000}, {512, 20}, {1, 1}, {1 << 20, 10000},
	} {
		if got := sharesToWeight(tc.shares); got != tc.weight {
			t.Errorf("sharesToWeight(%d) = %d, want %d", tc.shares, got, tc.weight)
		}
	}
}
