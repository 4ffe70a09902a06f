package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gdamore/tcell/v2"
	"golang.org/x/term"

	"github.com/sluicehq/sluice/agent/admitpb"
)

const topUsage = `usage: sluice top [--once] [--sort cpu|age] [--interval 1s] [--socket S]

List the git commands sluiced is running and queueing: correlation id,
subcommand, repository, client address, user, state, time waited in the
queue, running time, CPU so far (the command's whole process tree) and cgroup
bucket, under a header with each rule's in-flight and queued counts.

Live mode fills the terminal and refreshes every --interval; keys: q quit,
c sort by CPU, a sort by age. --once prints one plain snapshot for scripts
and logs: as wide as $COLUMNS when set, else 120 columns on a terminal and
every column at full width into a pipe or file. Columns that do not fit are
named in a last line, never dropped silently.

Needs root or membership of [agent] admin_group.

flags:
`

// Sort orders of top.
const (
	sortCPU = "cpu" // most CPU first
	sortAge = "age" // oldest first
)

// defaultTopWidth is the width of `top --once` on a terminal without $COLUMNS.
const defaultTopWidth = 120

func runTop(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	once := fs.Bool("once", false, "print one snapshot and exit (no terminal control)")
	sortBy := fs.String("sort", sortCPU, "order: cpu (most CPU first) or age (oldest first)")
	interval := fs.Duration("interval", time.Second, "refresh interval of the live view")
	socket := fs.String("socket", "", "agent socket (default: $SLUICE_SOCKET, else /run/sluice/sluice.sock as root)")
	if code, ok := parseFlags(fs, topUsage, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sluice top: takes no arguments; run 'sluice top -h'")
		return 2
	}
	if *sortBy != sortCPU && *sortBy != sortAge {
		fmt.Fprintf(stderr, "sluice top: --sort %q: use cpu or age\n", *sortBy)
		return 2
	}
	if *interval < 100*time.Millisecond {
		fmt.Fprintf(stderr, "sluice top: --interval %v is too short: use 100ms or more\n", *interval)
		return 2
	}
	c, err := dialAdmin(resolveSocket(*socket))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer c.Close()
	fetch := func() (*admitpb.StatusResponse, error) { return c.Status(context.Background()) }

	if *once {
		st, err := fetch()
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		// A terminal gets $COLUMNS (or 120); a pipe or file gets every
		// column at full width, for logs and scripts.
		width := defaultTopWidth
		if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
			width = n
		} else if f, ok := stdout.(*os.File); !ok || !term.IsTerminal(int(f.Fd())) {
			width = 0
		}
		io.WriteString(stdout, strings.Join(topLines(st, time.Now(), width, *sortBy), "\n")+"\n")
		return 0
	}

	// Fail before taking over the terminal when the agent cannot answer.
	if _, err := fetch(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	scr, err := tcell.NewScreen()
	if err == nil {
		err = scr.Init()
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice top: cannot use the terminal (%v); use --once\n", err)
		return 1
	}
	topLive(scr, fetch, *interval, *sortBy, time.Now)
	scr.Fini()
	return 0
}

// topLive runs the live view on an initialised screen until the user quits
// (q, Esc, Ctrl-C) or the screen is finalised. It refreshes every interval
// and at once on a key or resize; a failed fetch keeps the last snapshot
// and shows the error.
func topLive(scr tcell.Screen, fetch func() (*admitpb.StatusResponse, error), interval time.Duration, sortBy string, now func() time.Time) {
	events := make(chan tcell.Event, 16)
	quit := make(chan struct{})
	defer close(quit)
	go scr.ChannelEvents(events, quit)
	tick := time.NewTicker(interval)
	defer tick.Stop()

	var st *admitpb.StatusResponse
	var fetchErr error
	refresh := func() {
		s, err := fetch()
		fetchErr = err
		if err == nil {
			st = s
		}
	}
	refresh()
	for {
		drawTop(scr, st, fetchErr, now(), sortBy)
		select {
		case <-tick.C:
			refresh()
		case ev, ok := <-events:
			if !ok {
				return
			}
			switch ev := ev.(type) {
			case *tcell.EventKey:
				switch {
				case ev.Key() == tcell.KeyEscape || ev.Key() == tcell.KeyCtrlC:
					return
				case ev.Key() == tcell.KeyRune:
					switch ev.Rune() {
					case 'q', 'Q':
						return
					case 'c', 'C':
						sortBy = sortCPU
					case 'a', 'A':
						sortBy = sortAge
					}
				}
			case *tcell.EventResize:
				scr.Sync()
			}
		}
	}
}

// drawTop paints one frame: the snapshot's lines cut to the screen, and a
// last line with the keys (or the fetch error).
func drawTop(scr tcell.Screen, st *admitpb.StatusResponse, fetchErr error, now time.Time, sortBy string) {
	w, h := scr.Size()
	scr.Clear()
	var lines []string
	if st != nil {
		lines = topLines(st, now, w, sortBy)
	}
	foot := fmt.Sprintf("sorted by %s; keys: q quit, c sort by CPU, a sort by age", sortBy)
	if fetchErr != nil {
		foot = "last refresh failed: " + fetchErr.Error()
	}
	if h < 1 {
		return
	}
	if len(lines) > h-1 {
		more := len(lines) - (h - 2)
		if h >= 2 {
			lines = append(lines[:h-2:h-2], fmt.Sprintf("… %d more", more))
		} else {
			lines = nil
		}
	}
	bold := tcell.StyleDefault.Bold(true)
	for y, line := range lines {
		style := tcell.StyleDefault
		if strings.HasPrefix(line, colHeaderStart) {
			style = tcell.StyleDefault.Reverse(true)
		}
		putLine(scr, y, fitRight(line, w), style)
	}
	putLine(scr, h-1, fitRight(foot, w), bold)
	scr.Show()
}

func putLine(scr tcell.Screen, y int, s string, style tcell.Style) {
	x := 0
	for _, r := range s {
		scr.SetContent(x, y, r, nil, style)
		x++
	}
}

// topColumn is one column of the lease table.
type topColumn struct {
	title string
	width int
	left  bool // shorten from the left (paths), else from the right
	cell  func(l *admitpb.LeaseInfo, now time.Time) string
}

// colHeaderStart begins the column header line.
const colHeaderStart = "CORRELATION ID"

// minRepoWidth is the narrowest the repository column gets: below it,
// columns are dropped (bucket, user, remote IP, waited), then lines are cut.
const minRepoWidth = 24

// topLines renders a snapshot for a terminal width: header lines with the
// agent and each rule's counts, the column header, and one line per
// command, sorted by sortBy. No line is wider than width (in runes; 0 means
// no limit). Columns a narrow width cannot hold are named in a last line. The
// repository column takes the width the fixed columns leave, paths
// shortened from the left; the bucket column appears only when some
// command has a bucket and the terminal is wide enough.
func topLines(st *admitpb.StatusResponse, now time.Time, width int, sortBy string) []string {
	limited := width > 0
	if !limited {
		width = math.MaxInt32
	}
	var lines []string
	running, queued := 0, 0
	for _, l := range st.Leases {
		if l.State == "queued" {
			queued++
		} else {
			running++
		}
	}
	started := time.UnixMicro(st.StartedUnixUsec)
	lines = append(lines, fmt.Sprintf("sluiced %s up %s: %d running, %d queued", orDash(st.Version), fmtDuration(now.Sub(started)), running, queued))
	for _, r := range st.Limits {
		keys := "keys"
		if r.Keys == 1 {
			keys = "key"
		}
		lines = append(lines, fmt.Sprintf("  %s: %d in flight, %d queued (limit %d per %s; %d %s)", r.Name, r.InFlight, r.Queued, r.CurrentLimit, r.Key, r.Keys, keys))
	}
	lines = append(lines, "")

	cols := []topColumn{
		{title: colHeaderStart, width: 16, cell: func(l *admitpb.LeaseInfo, _ time.Time) string { return l.CorrelationId }},
		{title: "SUBCOMMAND", width: 12, cell: func(l *admitpb.LeaseInfo, _ time.Time) string { return l.Subcommand }},
		{title: "REPOSITORY", left: true, cell: func(l *admitpb.LeaseInfo, _ time.Time) string {
			return strings.ToValidUTF8(string(l.Repo), "?")
		}},
		{title: "REMOTE IP", width: 15, cell: func(l *admitpb.LeaseInfo, _ time.Time) string { return l.RemoteIp }},
		{title: "USER", width: 8, cell: func(l *admitpb.LeaseInfo, _ time.Time) string { return l.User }},
		{title: "STATE", width: 7, cell: func(l *admitpb.LeaseInfo, _ time.Time) string { return l.State }},
		{title: "WAITED", width: 7, cell: func(l *admitpb.LeaseInfo, now time.Time) string { return fmtDuration(leaseWaited(l, now)) }},
		{title: "RUNNING", width: 7, cell: func(l *admitpb.LeaseInfo, now time.Time) string {
			if l.State == "queued" {
				return "-"
			}
			return fmtDuration(leaseRunning(l, now))
		}},
		{title: "CPU", width: 7, cell: func(l *admitpb.LeaseInfo, _ time.Time) string {
			if l.State == "queued" {
				return "-"
			}
			return fmtDuration(time.Duration(l.CpuUsec) * time.Microsecond)
		}},
	}
	for _, l := range st.Leases {
		if l.Bucket != "" {
			cols = append(cols, topColumn{title: "BUCKET", width: 18, left: true,
				cell: func(l *admitpb.LeaseInfo, _ time.Time) string { return l.Bucket }})
			break
		}
	}
	// The repository column needs the longest path, or minRepoWidth when
	// paths are longer; narrow terminals lose the least telling columns
	// before it gets less, and it never gets wider than the longest path,
	// so a wide terminal does not push the other columns away.
	longest := len("REPOSITORY")
	for _, l := range st.Leases {
		longest = max(longest, utf8.RuneCountInString(strings.ToValidUTF8(string(l.Repo), "?")))
	}
	need := min(longest, minRepoWidth)
	repoWidth := 0
	var hidden []string
	for _, drop := range []string{"", "BUCKET", "USER", "REMOTE IP", "WAITED"} {
		for i, c := range cols {
			if c.title == drop {
				cols = append(cols[:i:i], cols[i+1:]...)
				hidden = append(hidden, drop)
				break
			}
		}
		fixed := len(cols) - 1 // one space between columns
		for _, c := range cols {
			fixed += c.width
		}
		repoWidth = min(max(width-fixed, need), longest)
		if width-fixed >= need {
			break
		}
	}
	for i := range cols {
		if cols[i].title == "REPOSITORY" {
			cols[i].width = repoWidth
		}
	}

	row := func(cell func(c topColumn) string) string {
		var b strings.Builder
		for i, c := range cols {
			if i > 0 {
				b.WriteByte(' ')
			}
			s := cell(c)
			if c.left {
				s = fitLeft(s, c.width)
			} else {
				s = fitRight(s, c.width)
			}
			b.WriteString(s)
			if i < len(cols)-1 {
				b.WriteString(strings.Repeat(" ", c.width-utf8.RuneCountInString(s)))
			}
		}
		return fitRight(strings.TrimRight(b.String(), " "), width)
	}
	lines = append(lines, row(func(c topColumn) string { return c.title }))
	leases := append([]*admitpb.LeaseInfo(nil), st.Leases...)
	sortLeases(leases, sortBy)
	for _, l := range leases {
		lines = append(lines, row(func(c topColumn) string {
			s := c.cell(l, now)
			if s == "" {
				s = "-"
			}
			return s
		}))
	}
	if len(leases) == 0 {
		lines = append(lines, "(no git commands in flight)")
	}
	if len(hidden) > 0 && limited {
		lines = append(lines, fmt.Sprintf("(%s hidden at %d columns: widen the terminal, set COLUMNS, or see sluice status)",
			strings.Join(hidden, ", "), width))
	}
	for i := range lines {
		lines[i] = fitRight(lines[i], width)
	}
	return lines
}

// sortLeases orders leases for top: by CPU (most first, then oldest) or by
// age (oldest first). Ties keep a stable order by lease id.
func sortLeases(ls []*admitpb.LeaseInfo, sortBy string) {
	sort.SliceStable(ls, func(i, j int) bool {
		a, b := ls[i], ls[j]
		if sortBy == sortCPU && a.CpuUsec != b.CpuUsec {
			return a.CpuUsec > b.CpuUsec
		}
		if a.SinceUnixUsec != b.SinceUnixUsec {
			return a.SinceUnixUsec < b.SinceUnixUsec
		}
		return a.LeaseId < b.LeaseId
	})
}

// leaseWaited is how long l waited (running) or has waited so far (queued).
func leaseWaited(l *admitpb.LeaseInfo, now time.Time) time.Duration {
	if l.State == "queued" {
		return now.Sub(time.UnixMicro(l.SinceUnixUsec))
	}
	return time.Duration(l.WaitedUsec) * time.Microsecond
}

// leaseRunning is how long l has been running.
func leaseRunning(l *admitpb.LeaseInfo, now time.Time) time.Duration {
	return now.Sub(time.UnixMicro(l.SinceUnixUsec + l.WaitedUsec))
}

// fitRight cuts s to width runes, marking a cut with "…".
func fitRight(s string, width int) string {
	if width <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width-1]) + "…"
}

// fitLeft cuts s to width runes from the left ("…" + the end), so a path
// keeps its most telling part.
func fitLeft(s string, width int) string {
	if width <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return "…" + string(r[len(r)-(width-1):])
}
