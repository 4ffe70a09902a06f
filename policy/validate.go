package policy

import (
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bounds of rule settings.
const (
	maxQueueSize = 100000
	maxLimit     = 100000
	maxQueueWait = time.Hour
	maxNameLen   = 64
	maxBuckets   = 65536
	maxKillGrace = time.Minute
	maxFeedback  = time.Hour
	// Bounds of the adaptive loop's periods: sampling faster than
	// minSample costs the agent a core and sees nothing new (cgroup stats
	// change at the kernel's own pace); slower than a minute misses an OOM
	// storm.
	minSample      = 50 * time.Millisecond
	maxSample      = time.Minute
	minCalibration = time.Second
	maxCalibration = time.Hour
	maxCooldown    = 10 * time.Minute
	// A negotiation timeout under 100ms cuts off every clone (the
	// advertisement alone takes longer); over a day it bounds nothing.
	minNegotiation = 100 * time.Millisecond
	maxNegotiation = 24 * time.Hour
	maxRuntime     = 30 * 24 * time.Hour
	// maxConnections bounds [agent] max_connections: each connection costs
	// a file descriptor and two goroutines.
	maxConnections = 1000000
)

// Validate checks the whole policy and returns Errors holding every problem,
// or nil. On success it also builds the table LimitFor uses; Parse calls it,
// so only a Config built by hand needs to call it.
func (c *Config) Validate() error {
	errs := c.validate()
	if len(errs) > 0 {
		return c.finish(errs)
	}
	return nil
}

// validator collects problems, locating each at the line its key is written.
type validator struct {
	c    *Config
	errs []*Error
}

// add reports a problem with the value at key path p. value is the Go value,
// used when the file did not write it.
func (v *validator) add(p string, value any, problem, fix string) {
	e := &Error{File: v.c.Source, path: p, Problem: problem, Fix: fix}
	if pos, ok := v.c.keys[p]; ok {
		e.Line, e.Value = pos.line, pos.value
	} else {
		e.Line = v.c.keys[parentPath(p)].line
		if value != nil {
			e.Value = formatValue(value)
		}
	}
	v.errs = append(v.errs, e)
}

// parentPath is the table a key is in: "limit[1]" for "limit[1].name".
func parentPath(p string) string {
	section, _ := splitKey(p)
	return section
}

func formatValue(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case Duration:
		return strconv.Quote(v.String())
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	default:
		return fmt.Sprint(v)
	}
}

func (c *Config) validate() []*Error {
	v := &validator{c: c}
	v.agent()
	v.git()
	bySub := v.limits()
	v.cgroups()
	v.adaptive()
	v.timeouts()
	v.ebpf()
	v.budget()
	v.packCache()
	if len(v.errs) > 0 {
		c.bySub = nil
		return v.errs
	}
	c.bySub = bySub
	return nil
}

func (v *validator) agent() {
	a := &v.c.Agent
	switch {
	case a.Socket != "" && badPathChar(a.Socket):
		v.add("agent.socket", a.Socket, "contains a control character (a newline?)", `write a path such as "/run/sluice/sluice.sock" on one line`)
	case a.Socket != "" && !path.IsAbs(a.Socket):
		v.add("agent.socket", a.Socket, "must be an absolute path", `write a path such as "/run/sluice/sluice.sock", or remove the key for the default`)
	}
	if a.MetricsAddr != MetricsOff {
		if err := checkHostPort(a.MetricsAddr); err != "" {
			v.add("agent.metrics_addr", a.MetricsAddr, err, `write host:port such as "127.0.0.1:9780", or "off" to disable the HTTP listener`)
		}
	}
	switch d := a.QueueFeedbackAfter.Duration; {
	case d < 0:
		v.add("agent.queue_feedback_after", a.QueueFeedbackAfter, "must be >= 0", `set a Go duration such as "2s", or "0s" to never show the waiting message`)
	case d > maxFeedback:
		v.add("agent.queue_feedback_after", a.QueueFeedbackAfter, "must be at most 1h", `set a Go duration such as "2s", or "0s" to never show the waiting message`)
	}
	if d := a.RestartGrace.Duration; d < 0 || d > time.Minute {
		v.add("agent.restart_grace", a.RestartGrace, "must be between 0s and 1m", `set a Go duration such as "5s" (longer than the agent's restart), or "0s" to apply fail_mode at once`)
	}
	if a.FailMode != FailOpen && a.FailMode != FailClosed {
		v.add("agent.fail_mode", a.FailMode, "must be \"open\" or \"closed\"", `use "open" to run git when the agent cannot answer, "closed" to reject`)
	}
	if a.MaxConnections < 1 || a.MaxConnections > maxConnections {
		v.add("agent.max_connections", a.MaxConnections, fmt.Sprintf("must be in [1, %d]", maxConnections), fmt.Sprintf("write a number such as %d, or remove the key for the default", DefaultMaxConnections))
	}
	if n := a.MaxConnectionsPerUID; a.MaxConnections >= 1 && (n < 0 || n > a.MaxConnections) {
		v.add("agent.max_connections_per_uid", n, fmt.Sprintf("must be in [0, max_connections = %d] (0: a quarter of max_connections)", a.MaxConnections),
			fmt.Sprintf("write a number such as %d (a quarter of max_connections), or 0 or nothing for that default", DefaultMaxConnectionsPerUID(a.MaxConnections)))
	}
	for _, k := range []struct {
		key   string
		names []string
		what  string
	}{{"agent.admit_users", a.AdmitUsers, "user"}, {"agent.admit_groups", a.AdmitGroups, "group"}} {
		for _, n := range k.names {
			if n == "" || strings.ContainsAny(n, " \t\n:,") || len(n) > 256 {
				v.add(k.key, k.names, fmt.Sprintf("entry %q is not a %s name or numeric id", n, k.what), fmt.Sprintf(`write a list such as ["git", "1001"], or [] to let anyone who can open the socket admit`))
				break
			}
		}
	}
}

// checkHostPort returns what is wrong with a host:port, "" when nothing.
func checkHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "is not host:port"
	}
	if strings.ContainsAny(host, " /") {
		return "has an invalid host"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return "has an invalid port"
	}
	return ""
}

func (v *validator) git() {
	switch b := v.c.Git.Bin; {
	case b == "":
	case badPathChar(b):
		v.add("git.bin", b, "contains a control character (a newline?)", `write the real git's path on one line, such as "/usr/bin/git"`)
	case !path.IsAbs(b):
		v.add("git.bin", b, "must be an absolute path", `write the real git's path, such as "/usr/bin/git", or remove the key to search PATH`)
	}
}

func validName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validSubcommand(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// limits checks every rule and returns the subcommand → rule table.
func (v *validator) limits() map[string][]*Limit {
	c := v.c
	bySub := make(map[string][]*Limit)
	owner := make(map[string]int) // subcommand → index of the last rule matching it
	names := make(map[string]int)
	for i := range c.Limits {
		l := &c.Limits[i]
		p := fmt.Sprintf("limit[%d]", i)
		at := func(key string) string { return p + "." + key }

		switch {
		case l.Name == "":
			v.add(at("name"), nil, "is missing", `give the rule a unique name = "..." of [a-z0-9_-]; it labels the rule's metrics`)
		case !validName(l.Name):
			v.add(at("name"), l.Name, fmt.Sprintf("must be 1 to %d characters of a-z, 0-9, _ and -", maxNameLen), "rename the rule, such as \"upload-pack\"")
		default:
			if j, dup := names[l.Name]; dup {
				v.add(at("name"), l.Name, fmt.Sprintf("is also the name of limit[%d] (line %d)", j, c.keys[fmt.Sprintf("limit[%d].name", j)].line), "give each rule a unique name")
			} else {
				names[l.Name] = i
			}
		}

		if len(l.Match) == 0 {
			v.add(at("match"), l.Match, "must list at least one git subcommand", `write match = ["upload-pack"] or the subcommands this rule admits`)
		}
		for k, m := range l.Match {
			mp := fmt.Sprintf("%s[%d]", at("match"), k)
			if _, ok := c.keys[mp]; !ok {
				mp = at("match")
			}
			if !validSubcommand(m) {
				v.add(mp, m, "is not a git subcommand", `write subcommands as git names them, lowercase without "git-", such as "upload-pack"`)
				continue
			}
			if j, taken := owner[m]; taken && j == i {
				v.add(mp, m, "is listed twice in this rule", "remove the duplicate")
				continue
			}
			// Several rules may match one subcommand: a command takes a
			// slot of each, all or none (a per-address cap and a
			// per-repository cap at once, say).
			owner[m] = i
			bySub[m] = append(bySub[m], l)
		}

		parts, problem := parseKey(l.Key)
		if problem != "" {
			v.add(at("key"), l.Key, problem, `use "repo", "remote_ip", "user" or "global", or join parts with "+", such as "repo+remote_ip"`)
		} else {
			l.parts = parts
		}

		if l.QueueOrder != QueueFIFO && l.QueueOrder != QueueLIFO {
			v.add(at("queue_order"), l.QueueOrder, `must be "fifo" or "lifo"`, `use "lifo" to serve the newest waiter first under overload, or remove the key for "fifo"`)
		}
		if l.MaxQueueSize < 0 || l.MaxQueueSize > maxQueueSize {
			v.add(at("max_queue_size"), l.MaxQueueSize, fmt.Sprintf("must be between 0 and %d", maxQueueSize), "set how many requests may wait per key; 0 rejects at once when the key is full")
		}
		switch w := l.MaxQueueWait.Duration; {
		case w == 0 && !hasKey(c, at("max_queue_wait")):
			v.add(at("max_queue_wait"), nil, "is missing", `set how long a request may wait for a slot, a Go duration such as "30s"; requests never wait forever`)
		case w <= 0:
			v.add(at("max_queue_wait"), l.MaxQueueWait, "must be > 0", `set a Go duration such as "1s"`)
		case w > maxQueueWait:
			v.add(at("max_queue_wait"), l.MaxQueueWait, "must be at most 1h", `set a Go duration such as "60s"; a client waiting longer has usually given up`)
		}
		switch r := l.MaxRuntime.Duration; {
		case r < 0:
			v.add(at("max_runtime"), l.MaxRuntime, "must be >= 0", `set a Go duration such as "1h", or remove the key for no bound`)
		case r > 0 && r < time.Second:
			v.add(at("max_runtime"), l.MaxRuntime, "must be at least 1s", `set a Go duration such as "1h": a bound this short kills every command; remove the key for no bound`)
		case r > maxRuntime:
			v.add(at("max_runtime"), l.MaxRuntime, "must be at most 720h (30 days)", `set a Go duration such as "6h", or remove the key for no bound`)
		}
		v.limitBounds(l, at)
	}
	return bySub
}

func hasKey(c *Config, p string) bool {
	_, ok := c.keys[p]
	return ok
}

// ruleRef names rule i for a message: `limit "name" (line 12)`.
func ruleRef(c *Config, i int) string {
	ref := fmt.Sprintf("limit[%d]", i)
	if n := c.Limits[i].Name; validName(n) {
		ref = fmt.Sprintf("limit %q", n)
	}
	if pos, ok := c.keys[fmt.Sprintf("limit[%d]", i)]; ok && pos.line > 0 {
		ref += fmt.Sprintf(" (line %d)", pos.line)
	}
	return ref
}

// limitBounds checks the static or adaptive in-flight limits of a rule.
func (v *validator) limitBounds(l *Limit, at func(string) string) {
	if !l.Adaptive {
		if l.MaxPerKey < 1 || l.MaxPerKey > maxLimit {
			if l.MaxPerKey == 0 && !hasKey(v.c, at("max_per_key")) {
				v.add(at("max_per_key"), nil, "is missing", "set how many commands may run at once per key, such as max_per_key = 10, or set adaptive = true with min_limit, initial_limit and max_limit")
			} else {
				v.add(at("max_per_key"), l.MaxPerKey, fmt.Sprintf("must be between 1 and %d", maxLimit), "set how many commands may run at once per key")
			}
		}
		for _, f := range []struct {
			key string
			val int
		}{{"min_limit", l.MinLimit}, {"initial_limit", l.InitialLimit}, {"max_limit", l.MaxLimit}} {
			if f.val != 0 {
				v.add(at(f.key), f.val, "is only used by adaptive rules", "set adaptive = true, or remove the key")
			}
		}
		return
	}
	if l.MaxPerKey != 0 {
		v.add(at("max_per_key"), l.MaxPerKey, "is not used by adaptive rules", "remove max_per_key (initial_limit is where the adaptive limit starts), or set adaptive = false")
	}
	ok := true
	for _, f := range []struct {
		key string
		val int
	}{{"min_limit", l.MinLimit}, {"initial_limit", l.InitialLimit}, {"max_limit", l.MaxLimit}} {
		if f.val < 1 || f.val > maxLimit {
			ok = false
			if f.val == 0 && !hasKey(v.c, at(f.key)) {
				v.add(at(f.key), nil, "is missing", "adaptive rules need min_limit <= initial_limit <= max_limit, each at least 1")
			} else {
				v.add(at(f.key), f.val, fmt.Sprintf("must be between 1 and %d", maxLimit), "adaptive rules need min_limit <= initial_limit <= max_limit, each at least 1")
			}
		}
	}
	if !ok {
		return
	}
	if l.MinLimit > l.InitialLimit {
		v.add(at("min_limit"), l.MinLimit, fmt.Sprintf("is above initial_limit (%d)", l.InitialLimit), "adaptive rules need min_limit <= initial_limit <= max_limit")
	}
	if l.InitialLimit > l.MaxLimit {
		v.add(at("initial_limit"), l.InitialLimit, fmt.Sprintf("is above max_limit (%d)", l.MaxLimit), "adaptive rules need min_limit <= initial_limit <= max_limit")
	}
}

// parseKey splits and checks a rule's key; the problem is "" when valid.
func parseKey(key string) ([]string, string) {
	if key == "" {
		return nil, "is missing"
	}
	parts := strings.Split(key, "+")
	seen := make(map[string]bool)
	for _, p := range parts {
		switch p {
		case KeyRepo, KeyRemoteIP, KeyUser:
		case KeyGlobal:
			if len(parts) > 1 {
				return nil, `joins "global", which cannot be joined`
			}
		case "":
			return nil, `has an empty part`
		default:
			return nil, fmt.Sprintf("has an unknown part %q", p)
		}
		if seen[p] {
			return nil, fmt.Sprintf("names %q twice", p)
		}
		seen[p] = true
	}
	return parts, ""
}

func (v *validator) cgroups() {
	g := &v.c.Cgroups
	if !g.Enabled {
		return
	}
	if !path.IsAbs(g.Mountpoint) {
		v.add("cgroups.mountpoint", g.Mountpoint, "must be an absolute path", `write where cgroups are mounted, such as "/sys/fs/cgroup"`)
	}
	if r := g.HierarchyRoot; path.IsAbs(r) || path.Clean(r) != r || r == ".." || strings.HasPrefix(r, "../") {
		v.add("cgroups.hierarchy_root", r, "must be a clean relative path inside the agent's cgroup", `write a name such as "sluice"`)
	}
	if n := g.Repositories.Count; n < 1 || n > maxBuckets {
		v.add("cgroups.repositories.count", n, fmt.Sprintf("must be between 1 and %d", maxBuckets), "set the number of per-repository buckets, such as 64")
	}
	for _, f := range []struct {
		key string
		val int64
	}{
		{"cgroups.memory_bytes", g.MemoryBytes}, {"cgroups.cpu_shares", g.CPUShares}, {"cgroups.cpu_quota_us", g.CPUQuotaUs},
		{"cgroups.repositories.memory_bytes", g.Repositories.MemoryBytes}, {"cgroups.repositories.cpu_shares", g.Repositories.CPUShares}, {"cgroups.repositories.cpu_quota_us", g.Repositories.CPUQuotaUs},
	} {
		if f.val < 0 {
			v.add(f.key, f.val, "must not be negative", "set 0 for no limit")
		}
	}
}

func (v *validator) adaptive() {
	a := &v.c.Adaptive
	v.within("adaptive.calibration_interval", a.CalibrationInterval, minCalibration, maxCalibration, "30s")
	v.within("adaptive.sample_interval", a.SampleInterval, minSample, maxSample, "1s")
	for _, f := range []struct {
		key string
		val float64
	}{
		{"adaptive.backoff_factor", a.BackoffFactor},
		{"adaptive.memory_threshold", a.MemoryThreshold},
		{"adaptive.cpu_throttle_threshold", a.CPUThrottleThreshold},
		{"adaptive.anon_threshold", a.AnonThreshold},
		{"adaptive.psi_memory_full_threshold", a.PSIMemoryFullThreshold},
		{"adaptive.psi_cpu_some_threshold", a.PSICPUSomeThreshold},
	} {
		if !(f.val > 0 && f.val <= 1) {
			v.add(f.key, f.val, "must be a fraction in (0, 1]", "write a number such as 0.5")
		}
	}
	if !(a.IncreaseMaxPSICPU >= 0 && a.IncreaseMaxPSICPU <= 1) {
		v.add("adaptive.increase_max_psi_cpu", a.IncreaseMaxPSICPU, "must be a fraction in [0, 1]", "write a number such as 0.8, or 0 to let limits grow on a saturated CPU")
	}
	v.within("adaptive.cooldown", a.Cooldown, time.Millisecond, maxCooldown, "5s")
	if a.MemorySignal != MemoryWorkingSet && a.MemorySignal != MemoryAnon {
		v.add("adaptive.memory_signal", a.MemorySignal, "unknown memory signal", `write "working_set" or "anon"`)
	}
	seen := map[string]bool{}
	for _, w := range a.Watchers {
		switch {
		case !slices.Contains(WatcherNames, w):
			v.add("adaptive.watchers", w, fmt.Sprintf("unknown watcher %q", w), "use some of: "+strings.Join(WatcherNames, ", "))
		case seen[w]:
			v.add("adaptive.watchers", w, fmt.Sprintf("watcher %q listed twice", w), "list each watcher once")
		}
		seen[w] = true
	}
}

func (v *validator) timeouts() {
	t := &v.c.Timeouts
	for _, n := range []struct {
		key string
		d   Duration
	}{
		{"timeouts.upload_pack_negotiation", t.UploadPackNegotiation},
		{"timeouts.upload_archive_negotiation", t.UploadArchiveNegotiation},
	} {
		switch d := n.d.Duration; {
		case d < 0:
			v.add(n.key, n.d, "must be >= 0", `set a Go duration such as "10m", or "0s" to disable the timeout`)
		case d > 0 && d < minNegotiation:
			v.add(n.key, n.d, "must be at least 100ms", `set a Go duration such as "10m": a shorter one cuts off every clone; "0s" disables the timeout`)
		case d > maxNegotiation:
			v.add(n.key, n.d, "must be at most 24h", `set a Go duration such as "10m", or "0s" to disable the timeout`)
		}
	}
	switch g := t.KillGrace.Duration; {
	case g <= 0:
		v.add("timeouts.kill_grace", t.KillGrace, "must be > 0", `set a Go duration such as "5s": the time a stopped command has between SIGTERM and SIGKILL`)
	case g > maxKillGrace:
		v.add("timeouts.kill_grace", t.KillGrace, "must be at most 1m", `set a Go duration such as "5s"; a stopped command that needs longer to exit is stuck`)
	}
}

// within checks lo <= d <= hi; example is a sensible value for the fix.
func (v *validator) within(key string, d Duration, lo, hi time.Duration, example string) {
	if d.Duration < lo || d.Duration > hi {
		v.add(key, d, fmt.Sprintf("must be between %s and %s", fmtBound(lo), fmtBound(hi)), fmt.Sprintf("set a Go duration such as %q", example))
	}
}

// fmtBound writes a bound as an operator would: "50ms", "1m", "1h".
func fmtBound(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d >= time.Minute && d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return d.String()
}

// badPathChar reports whether p holds a control character: a path
// written with one is a typo, and the agent writes some paths into
// shim.conf, one per line.
func badPathChar(p string) bool {
	return strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

func (v *validator) ebpf() {
	e := &v.c.EBPF
	if e.UnwrappedScope != ScopeServers && e.UnwrappedScope != ScopeAll {
		v.add("ebpf.unwrapped_scope", e.UnwrappedScope, `must be "servers" or "all"`,
			`use "servers" to report only git run by a Git server without the shim, "all" for every git process on the host`)
	}
	for _, c := range e.ServerComms {
		if c == "" || len(c) > 15 || badPathChar(c) || strings.Contains(c, "/") {
			v.add("ebpf.server_comms", e.ServerComms, fmt.Sprintf("entry %q is not a command name", c),
				`write names as /proc/PID/comm shows them (at most 15 characters, no "/"), such as ["my-git-server"]`)
			break
		}
	}
}
