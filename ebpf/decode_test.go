package ebpf

import (
	"os"
	"reflect"
	"testing"
	"time"
)

func TestCputimeAdjust(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		utime, stime, rtime        uint64
		prevU, prevS, wantU, wantS uint64
	}{
		{"scaled to runtime", 300, 100, 1000, 0, 0, 750, 250},
		{"no system ticks", 4, 0, 1000, 0, 0, 1000, 0},
		{"no user ticks", 0, 4, 1000, 0, 0, 0, 1000},
		{"no ticks at all", 0, 0, 1000, 0, 0, 1000, 0},
		{"previous report is a floor", 300, 100, 1000, 100, 400, 600, 400},
		{"runtime below previous report", 300, 100, 500, 300, 300, 300, 300},
		{"user floor", 100, 300, 1000, 600, 0, 600, 400},
		{"large values do not overflow", 1 << 40, 1 << 40, 1 << 62, 0, 0, 1 << 61, 1 << 61},
	} {
		u, s := cputimeAdjust(tc.utime, tc.stime, tc.rtime, tc.prevU, tc.prevS)
		if u != tc.wantU || s != tc.wantS {
			t.Errorf("%s: cputimeAdjust = %d, %d; want %d, %d", tc.name, u, s, tc.wantU, tc.wantS)
		}
	}
}

func TestWaitCPUAddsChildren(t *testing.T) {
	u, s := waitCPU(rawCPU{utime: 3, stime: 1, runtime: 400, cutime: 1000, cstime: 20})
	if u != 1300*time.Nanosecond || s != 120*time.Nanosecond {
		t.Errorf("waitCPU = %v, %v; want 1.3µs, 120ns", u, s)
	}
}

func TestWaitStatus(t *testing.T) {
	for _, tc := range []struct {
		name          string
		flags         uint32
		group, leader int32
		code, sig     int
	}{
		{"exit_group(3)", signalGroupExit, 3 << 8, 0, 3, 0},
		{"SIGKILL", signalGroupExit, 9, 0, -1, 9},
		{"SIGSEGV with core", signalGroupExit, 11 | 0x80, 0, -1, 11},
		{"every thread called exit(2)", 0, 0, 5 << 8, 5, 0},
		{"exit 255", signalGroupExit, 255 << 8, 0, 255, 0},
	} {
		code, sig := waitStatus(tc.flags, tc.group, tc.leader)
		if code != tc.code || sig != tc.sig {
			t.Errorf("%s: waitStatus = %d, %d; want %d, %d", tc.name, code, sig, tc.code, tc.sig)
		}
	}
}

func TestMaxRSSKiB(t *testing.T) {
	if got := maxRSSKiB(4096, 10, 300, 20, 5); got != 1200 {
		t.Errorf("maxRSSKiB = %d, want 1200", got)
	}
}

func TestSplitArgv(t *testing.T) {
	for in, want := range map[string][]string{
		"":                        nil,
		"git\x00--version\x00":    {"git", "--version"},
		"git\x00pack-obj":         {"git", "pack-obj"}, // cut by the bound
		"git\x00\x00-x\x00\x00":   {"git", "", "-x"},
		"\x00\x00\x00":            nil,
		"/usr/bin/git\x00a b\x00": {"/usr/bin/git", "a b"},
	} {
		if got := splitArgv([]byte(in)); !reflect.DeepEqual(got, want) {
			t.Errorf("splitArgv(%q) = %q, want %q", in, got, want)
		}
	}
	if got := cString([]byte("git\x00junk")); got != "git" {
		t.Errorf("cString = %q", got)
	}
}

func TestRingSize(t *testing.T) {
	page := os.Getpagesize()
	for in, want := range map[int]int{0: DefaultRingBufferBytes, 1: page, page + 1: 2 * page, 1 << 20: 1 << 20} {
		if got := ringSize(in); got != want {
			t.Errorf("ringSize(%d) = %d, want %d", in, got, want)
		}
	}
}
