package main

import (
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gdamore/tcell/v2"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// leaseRows returns the correlation ids of the lease lines, in order.
func leaseRows(lines []string) []string {
	var ids []string
	inTable := false
	for _, l := range lines {
		if strings.HasPrefix(l, colHeaderStart) {
			inTable = true
			continue
		}
		if inTable && l != "" && !strings.HasPrefix(l, "(") {
			ids = append(ids, strings.Fields(l)[0])
		}
	}
	return ids
}

// header is the column header line of top's output.
func header(lines []string) string {
	for _, l := range lines {
		if strings.HasPrefix(l, colHeaderStart) {
			return l
		}
	}
	return ""
}

func TestTopLines(t *testing.T) {
	lines := topLines(testStatus(), testNow, 120, sortCPU)
	for i, l := range lines {
		if n := utf8.RuneCountInString(l); n > 120 {
			t.Errorf("line %d is %d runes wide: %q", i, n, l)
		}
	}
	got := strings.Join(lines, "\n")
	for _, s := range []string{
		"sluiced v1.2.3 up 3h02m: 2 running, 1 queued",
		"  upload-pack: 3 in flight, 2 queued (limit 20 per repo; 2 keys)",
		"  pack-objects: 0 in flight, 0 queued (limit 7 per remote_ip; 0 keys)",
		"CORRELATION ID   SUBCOMMAND   REPOSITORY",
		"/srv/git/group/project.git",
		"c-old            upload-pack  /srv/git/group/project.git",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("missing %q in:\n%s", s, got)
		}
	}
	if ids := leaseRows(lines); strings.Join(ids, " ") != "c-busy c-old c-queued" {
		t.Errorf("cpu order = %v, want most CPU first, queued (no CPU) last", ids)
	}
	// The old lease waited 5s and has run 65s; the queued one has waited
	// 2s so far and shows no running time or CPU.
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "c-old":
			if strings.Join(f[len(f)-3:], " ") != "5.0s 1m05s 1.5s" {
				t.Errorf("c-old row %q", l)
			}
		case "c-queued":
			if !strings.Contains(l, "queued  2.0s    -       -") {
				t.Errorf("c-queued row %q", l)
			}
		}
	}

	if ids := leaseRows(topLines(testStatus(), testNow, 120, sortAge)); strings.Join(ids, " ") != "c-old c-busy c-queued" {
		t.Errorf("age order = %v, want oldest first", ids)
	}
}

func TestTopLinesWidths(t *testing.T) {
	st := testStatus()
	long := "/srv/git/a/very/long/path/to/some/deeply/nested/repository-name.git"
	for _, width := range []int{20, 60, 80, 100, 120, 160, 250} {
		lines := topLines(st, testNow, width, sortCPU)
		for i, l := range lines {
			if n := utf8.RuneCountInString(l); n > width {
				t.Errorf("width %d: line %d is %d runes: %q", width, i, n, l)
			}
		}
		got := strings.Join(lines, "\n")
		switch {
		case width >= 250:
			if !strings.Contains(got, long+" 192.0.2.11") || !strings.Contains(got, "/sluice/repos/17") {
				t.Errorf("width %d: full repository path (and the next column right after it) or bucket missing:\n%s", width, got)
			}
		case width >= 160:
			if !strings.Contains(got, "/sluice/repos/17") {
				t.Errorf("width %d: bucket missing:\n%s", width, got)
			}
		case width >= 100:
			// Shortened from the left: the repository's name survives;
			// the bucket column gives way to it.
			if strings.Contains(got, long) || !strings.Contains(got, "…") || !strings.Contains(got, "repository-name.git") || strings.Contains(header(lines), "BUCKET") {
				t.Errorf("width %d: repository not shortened from the left:\n%s", width, got)
			}
		}
	}
	// A dropped column is named, never silently gone; without a width
	// limit every column shows.
	if got := topLines(st, testNow, 120, sortCPU); !strings.Contains(got[len(got)-1], "BUCKET hidden at 120 columns") {
		t.Errorf("width 120: last line %q does not name the hidden column", got[len(got)-1])
	}
	if got := topLines(st, testNow, 0, sortCPU); !strings.Contains(header(got), "BUCKET") || !strings.Contains(strings.Join(got, "\n"), long) ||
		strings.Contains(strings.Join(got, "\n"), "hidden") {
		t.Errorf("width 0 (no limit) hides something:\n%s", strings.Join(got, "\n"))
	}
	// Without buckets the column goes away.
	for _, l := range st.Leases {
		l.Bucket = ""
	}
	if got := strings.Join(topLines(st, testNow, 200, sortCPU), "\n"); strings.Contains(got, "BUCKET") {
		t.Errorf("bucket column without buckets:\n%s", got)
	}
	st.Leases = nil
	// At 80 columns CPU still shows: less telling columns give way.
	if got := strings.Join(topLines(testStatus(), testNow, 80, sortCPU), "\n"); !strings.Contains(got, "c-busy           upload-pack  …ested/repository-name.git running 20s     9.0s") {
		t.Errorf("width 80:\n%s", got)
	}
	if got := strings.Join(topLines(st, testNow, 100, sortCPU), "\n"); !strings.Contains(got, "REMOTE IP") || !strings.Contains(got, "USER") {
		t.Errorf("width 100 without long paths dropped columns:\n%s", got)
	}
	if got := strings.Join(topLines(st, testNow, 80, sortCPU), "\n"); !strings.Contains(got, "(no git commands in flight)") {
		t.Errorf("empty table:\n%s", got)
	}
}

func TestFit(t *testing.T) {
	for _, tt := range []struct {
		s           string
		w           int
		right, left string
	}{
		{"abcdef", 10, "abcdef", "abcdef"},
		{"abcdef", 6, "abcdef", "abcdef"},
		{"abcdef", 4, "abc…", "…def"},
		{"/srv/ü/x.git", 6, "/srv/…", "…x.git"},
		{"abc", 0, "", ""},
	} {
		if got := fitRight(tt.s, tt.w); got != tt.right {
			t.Errorf("fitRight(%q, %d) = %q, want %q", tt.s, tt.w, got, tt.right)
		}
		if got := fitLeft(tt.s, tt.w); got != tt.left {
			t.Errorf("fitLeft(%q, %d) = %q, want %q", tt.s, tt.w, got, tt.left)
		}
	}
}

// lockedScreen lets the test read a simulation screen while topLive draws:
// tcell's GetContents hands out the live front buffer, which only Show and
// Sync change.
type lockedScreen struct {
	tcell.SimulationScreen
	mu sync.Mutex // guards the front buffer of SimulationScreen
}

func (s *lockedScreen) Show() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.SimulationScreen.Show()
}

func (s *lockedScreen) Sync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.SimulationScreen.Sync()
}

// text returns the screen's rows as strings.
func (s *lockedScreen) text() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	cells, w, h := s.GetContents()
	rows := make([]string, h)
	for y := range h {
		var b strings.Builder
		for x := range w {
			c := cells[y*w+x]
			if len(c.Runes) > 0 {
				b.WriteRune(c.Runes[0])
			} else {
				b.WriteByte(' ')
			}
		}
		rows[y] = strings.TrimRight(b.String(), " ")
	}
	return rows
}

func (s *lockedScreen) setSize(w, h int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.SetSize(w, h)
}

// TestTopLive drives the live view on a simulated terminal: it fills the
// screen, re-sorts on 'a' and 'c', and quits on 'q'.
func TestTopLive(t *testing.T) {
	scr := &lockedScreen{SimulationScreen: tcell.NewSimulationScreen("UTF-8")}
	if err := scr.Init(); err != nil {
		t.Fatal(err)
	}
	defer scr.Fini()
	scr.setSize(140, 12)
	var mu sync.Mutex // guards fetches
	fetches := 0
	fetch := func() (*admitpb.StatusResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		fetches++
		return testStatus(), nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		topLive(scr, fetch, time.Hour, sortCPU, func() time.Time { return testNow })
	}()
	waitScreen := func(what string, cond func(rows []string) bool) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			rows := scr.text()
			if cond(rows) {
				return rows
			}
			if time.Now().After(deadline) {
				t.Fatalf("screen never showed %s:\n%s", what, strings.Join(rows, "\n"))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	order := func(want string) func([]string) bool {
		return func(rows []string) bool { return strings.Join(leaseRows(rows[:len(rows)-1]), " ") == want }
	}
	rows := waitScreen("the CPU order", order("c-busy c-old c-queued"))
	if !strings.HasPrefix(rows[0], "sluiced v1.2.3 up 3h02m") || !strings.Contains(rows[len(rows)-1], "keys: q quit, c sort by CPU, a sort by age") {
		t.Errorf("screen:\n%s", strings.Join(rows, "\n"))
	}
	scr.InjectKey(tcell.KeyRune, 'a', tcell.ModNone)
	waitScreen("the age order", order("c-old c-busy c-queued"))
	scr.InjectKey(tcell.KeyRune, 'c', tcell.ModNone)
	waitScreen("the CPU order again", order("c-busy c-old c-queued"))

	// A small terminal shows what fits and says how much is cut.
	scr.setSize(140, 7)
	scr.PostEvent(tcell.NewEventResize(140, 7))
	waitScreen("a cut list", func(rows []string) bool { return len(rows) == 7 && strings.HasPrefix(rows[5], "… ") })

	scr.InjectKey(tcell.KeyRune, 'q', tcell.ModNone)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("q did not quit")
	}
}
