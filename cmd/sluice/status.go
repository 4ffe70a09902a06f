package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
)

const statusUsage = `usage: sluice status [--json] [--socket S]

Show what sluiced is doing: its version, uptime, policy file, fail mode and
socket; for every rule the limit in force, requests in flight and queued,
keys, admissions and drops, and the last adaptive backoff; cgroup and eBPF
state.

--json prints the admin API's StatusResponse as JSON for scripts: field
names as in admit.proto, every field present (zeros too), counts and sizes
as JSON numbers, repository paths as UTF-8 strings (a byte that is not
UTF-8 shows as \xNN). docs/status-json.md lists
the fields.

Needs root or membership of [agent] admin_group.

Exit status: 0 ok, 1 the agent could not be asked, 2 usage error.

flags:
`

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the StatusResponse as JSON")
	socket := fs.String("socket", "", "agent socket (default: $SLUICE_SOCKET, else /run/sluice/sluice.sock as root)")
	if code, ok := parseFlags(fs, statusUsage, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sluice status: takes no arguments; run 'sluice status -h'")
		return 2
	}
	c, err := dialAdmin(resolveSocket(*socket))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if *asJSON {
		b, err := statusJSON(st)
		if err != nil {
			fmt.Fprintf(stderr, "sluice status: %v\n", err)
			return 1
		}
		stdout.Write(b)
		return 0
	}
	renderStatus(stdout, st, time.Now())
	return 0
}

// renderStatus writes the human status report; times are shown in now's
// location.
func renderStatus(w io.Writer, st *admitpb.StatusResponse, now time.Time) {
	var b strings.Builder
	started := time.UnixMicro(st.StartedUnixUsec).In(now.Location())
	fmt.Fprintf(&b, "sluiced %s, up %s (since %s)\n", orDash(st.Version), fmtDuration(now.Sub(started)), started.Format("2006-01-02 15:04:05 MST"))
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "config\t%s\n", orDash(st.ConfigPath))
	fmt.Fprintf(tw, "fail mode\t%s\n", orDash(st.FailMode))
	fmt.Fprintf(tw, "socket\t%s\n", orDash(st.Socket))
	fmt.Fprintf(tw, "cgroups\t%s\n", cgroupLine(st.Cgroups))
	ebpf := st.EbpfState
	if ebpf == "" {
		ebpf = "not reported"
	}
	fmt.Fprintf(tw, "eBPF\t%s\n", ebpf)
	// Shown only when something is wrong: a restart would forget commands.
	if st.LeaseStateProblem != "" || st.LeaseStateErrors > 0 {
		line := fmt.Sprintf("%d state files not written (sluice_lease_state_errors_total)", st.LeaseStateErrors)
		if st.LeaseStateProblem != "" {
			line = st.LeaseStateProblem + "; " + line
		}
		fmt.Fprintf(tw, "restart state\t%s\n", line)
	}
	tw.Flush()
	if st.PackCache != nil {
		b.WriteString("pack cache: " + packCacheLine(st.PackCache) + "\n") // packcache.go
	}

	b.WriteString("\n")
	if len(st.Limits) == 0 {
		b.WriteString("no rules: every git command runs unlimited\n")
	} else {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RULE\tMATCH\tKEY\tLIMIT\tQUEUE\tIN FLIGHT\tQUEUED\tKEYS\tADMITTED\tDROPPED SIZE/TIME\tLAST BACKOFF")
		for _, l := range st.Limits {
			kind := "static"
			if l.Adaptive {
				kind = "adaptive"
			}
			queue := "none"
			if l.MaxQueueSize > 0 {
				queue = fmt.Sprintf("%d, %s %s", l.MaxQueueSize, fmtDuration(time.Duration(l.MaxQueueWaitUsec)*time.Microsecond), l.QueueOrder)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d %s\t%s\t%d\t%d\t%d\t%d\t%d/%d\t%s\n",
				l.Name, strings.Join(l.Match, ","), l.Key, l.CurrentLimit, kind, queue,
				l.InFlight, l.Queued, l.Keys, l.AdmittedTotal, l.DroppedMaxSize, l.DroppedMaxTime,
				backoffText(l, now))
		}
		tw.Flush()
	}
	renderBudget(&b, st.Budgets, now)
	running, queued := 0, 0
	for _, l := range st.Leases {
		if l.State == "queued" {
			queued++
		} else {
			running++
		}
	}
	fmt.Fprintf(&b, "\n%d running, %d queued; 'sluice top' lists them\n", running, queued)
	if len(st.Servers) > 0 {
		b.WriteString("\nGit servers seen:\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVER\tPID\tREQUESTS\tLAST REQUEST\tUNWRAPPED\tLAST UNWRAPPED")
		for _, sv := range st.Servers {
			last := "-"
			if sv.UnwrappedTotal > 0 {
				last = fmtAgo(sv.LastUnwrappedUnixUsec, now) + ": " + sv.LastUnwrapped
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\n", sv.Comm, sv.Pid, sv.RequestsTotal, fmtAgo(sv.LastRequestUnixUsec, now), sv.UnwrappedTotal, last)
		}
		tw.Flush()
		for _, sv := range st.Servers {
			if sv.UnwrappedTotal > 0 {
				fmt.Fprintf(&b, "unwrapped git under %s (pid %d): it bypasses sluice; run 'sluice check --pid %d'\n", sv.Comm, sv.Pid, sv.Pid)
			}
		}
	}
	io.WriteString(w, b.String())
}

// fmtAgo renders a time in microseconds since the epoch as "3m05s ago",
// "-" for none.
func fmtAgo(usec int64, now time.Time) string {
	if usec == 0 {
		return "-"
	}
	return fmtDuration(now.Sub(time.UnixMicro(usec))) + " ago"
}

// cgroupLine summarises the cgroup state in one line.
func cgroupLine(c *admitpb.CgroupStatus) string {
	if c == nil || c.State == "" {
		return "not reported"
	}
	if c.State == "disabled" || strings.HasPrefix(c.State, "unavailable") {
		s := c.State
		if c.PlacementFailures > 0 {
			s += fmt.Sprintf(", %d placement failures", c.PlacementFailures)
		}
		return s
	}
	parts := []string{c.State}
	if c.ParentPath != "" {
		parts[0] += fmt.Sprintf(", parent %s (%d buckets)", c.ParentPath, c.Buckets)
	}
	limit := "no limit"
	if c.MemoryLimitBytes > 0 && c.MemoryLimitBytes < 1<<62 { // v1 says "unlimited" with a huge number
		limit = fmtBytes(c.MemoryLimitBytes)
	}
	parts = append(parts, fmt.Sprintf("memory %s of %s", fmtBytes(c.MemoryUsageBytes), limit))
	parts = append(parts, fmt.Sprintf("CPU throttled %d of %d periods", c.CpuThrottledPeriods, c.CpuPeriods))
	parts = append(parts, fmt.Sprintf("%d OOM kills", c.OomKills))
	parts = append(parts, fmt.Sprintf("%d placement failures", c.PlacementFailures))
	return strings.Join(parts, "; ")
}

// backoffText describes a rule's last adaptive backoff.
func backoffText(l *admitpb.LimitStatus, now time.Time) string {
	if l.LastBackoffUnixUsec == 0 {
		return "-"
	}
	ago := now.Sub(time.UnixMicro(l.LastBackoffUnixUsec))
	s := fmtDuration(ago) + " ago"
	if l.LastBackoffReason != "" {
		s += ": " + l.LastBackoffReason
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// fmtDuration prints d compactly for a column: 850ms, 12.3s, 4m05s, 3h02m, 2d04h.
func fmtDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// fmtBytes prints n in binary units.
func fmtBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
