package policy

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Values of Agent.FailMode.
const (
	FailOpen   = "open"
	FailClosed = "closed"
)

// Values of Limit.QueueOrder.
const (
	QueueFIFO = "fifo"
	QueueLIFO = "lifo"
)

// Parts of Limit.Key. Join parts with "+": "repo+remote_ip". KeyGlobal cannot
// be joined.
const (
	KeyRepo     = "repo"
	KeyRemoteIP = "remote_ip"
	KeyUser     = "user"
	KeyGlobal   = "global"
)

// MetricsOff as Agent.MetricsAddr disables the HTTP listener.
const MetricsOff = "off"

// DefaultPath is where sluiced and sluice look for the policy.
const DefaultPath = "/etc/sluice/sluice.toml"

// DefaultSource is Config.Source for the embedded default policy.
const DefaultSource = "<default>"

// unknownPart replaces a key part the request does not carry.
const unknownPart = "unknown"

// keySep joins key parts; it cannot appear in an IP address or a user name a
// server would pass, and is unlikely in a repository path.
const keySep = "\x1f"

// Config is a parsed policy. Parse fills it and builds the lookup tables
// LimitFor uses; do not modify it afterwards (it is then safe for concurrent
// readers). To change a policy, parse a new one.
type Config struct {
	// Agent configures sluiced itself.
	Agent Agent `toml:"agent"`
	// Git says where the real git is.
	Git Git `toml:"git"`
	// Limits are the admission rules, one per [[limit]] table. Nil means no
	// rule: every command is admitted at once.
	Limits []Limit `toml:"limit"`
	// Cgroups configures resource isolation of admitted commands.
	Cgroups Cgroups `toml:"cgroups"`
	// Adaptive configures the AIMD calibrator of adaptive rules.
	Adaptive Adaptive `toml:"adaptive"`
	// EBPF configures exec/exit tracing of git processes.
	EBPF EBPF `toml:"ebpf"`
	// Timeouts bounds phases of git commands.
	Timeouts Timeouts `toml:"timeouts"`
	// Budget is the host budget of expensive work and its fair shares
	// (issue 17; budget.go).
	Budget Budget `toml:"budget"`
	// Keys says how request keys are derived (client networks).
	Keys Keys `toml:"keys"`
	// Classes weight clients' fair shares of the budget, one per [[class]].
	Classes []Class `toml:"class"`
	// PackCache configures the pack-objects cache (packcache.go).
	PackCache PackCache `toml:"pack_cache"`

	// Source is the file name the policy was read from, DefaultSource for
	// the embedded default policy; "" for a Config built by hand.
	Source string `toml:"-"`
	// DefaultLimits is true when the file defined no [[limit]] (nor an
	// explicit `limit = []`) and the embedded default rules apply.
	DefaultLimits bool `toml:"-"`

	// keys maps key paths such as "limit[1].max_queue_wait" to where they
	// are written; nil for a Config built by hand.
	keys map[string]keyPos
	// bySub maps a subcommand to the rules that match it, in file order;
	// built by Validate when the policy is valid, nil otherwise.
	bySub map[string][]*Limit
}

// Agent configures sluiced: where it listens and what the shim does when it
// cannot answer.
type Agent struct {
	// Socket is the path of the agent's Unix socket. "" means the default,
	// /run/sluice/sluice.sock, whoever runs the agent (resolved by
	// shimproto.SocketPath, shared with the shim and CLI; no per-user fallback).
	// Must be absolute when set.
	Socket string `toml:"socket"`
	// SocketGroup is the group (name or numeric gid) that owns the socket
	// (mode 0660) and its directory (mode 0750), so that a Git server running
	// as another user can reach the agent. "" means the agent's own gid.
	SocketGroup string `toml:"socket_group"`
	// MetricsAddr is the host:port of the HTTP listener for /metrics,
	// /healthz, /readyz (and /debug/pprof/ with Pprof); MetricsOff disables
	// it. "" means the default, 127.0.0.1:9780 (Parse fills it in). An
	// address beyond loopback is logged as a warning at start.
	MetricsAddr string `toml:"metrics_addr"`
	// Pprof serves Go's /debug/pprof/ on MetricsAddr. False (the default)
	// answers 404 there: a root agent's profiles and goroutine stacks are
	// not for every local user. Changing it needs a restart.
	Pprof bool `toml:"pprof"`
	// FailMode is what the shim does when the agent cannot answer: FailOpen
	// runs git anyway and logs a warning, FailClosed rejects the command.
	// "" means FailOpen.
	FailMode string `toml:"fail_mode"`
	// AdminGroup names a group whose members may use the admin API
	// (status, top, reload) besides root. "" means root only.
	AdminGroup string `toml:"admin_group"`
	// QueueFeedbackAfter is how long a command waits in a queue before the
	// shim tells the git client on stderr that it is waiting ("sluice:
	// waiting for a slot for …", refreshed every ~2 s). 0 means never; Parse
	// fills in 2s when absent; at most 1h. Passed to the shim in shim.conf.
	QueueFeedbackAfter Duration `toml:"queue_feedback_after"`
	// RestartGrace is how long a shim whose agent is restarting (its
	// waiting connection answered "shutting down" or dropped, or the agent
	// left its stopping mark) keeps reconnecting and re-queueing before its
	// fail mode applies. 0 means never; Parse fills in 5s when absent; at
	// most 1m. Passed to the shim in shim.conf (restart_grace_ms).
	RestartGrace Duration `toml:"restart_grace"`
	// AdmitUsers lists the users (names or numeric uids) whose processes may
	// ask for admission, checked against the kernel's peer credentials of
	// each connection. Root may always. Empty, with AdmitGroups empty too,
	// means anyone who can open the socket (which socket_group already
	// limits).
	AdmitUsers []string `toml:"admit_users"`
	// AdmitGroups lists groups (names or numeric gids): a process whose
	// primary or supplementary group is one of them may ask for admission.
	// Empty: see AdmitUsers.
	AdmitGroups []string `toml:"admit_groups"`
	// MaxConnections bounds the connections the agent serves at once (shims
	// queued or holding a lease, CLI calls). A connection beyond it is
	// refused at once: its shim exits 75 ("try again later") whatever
	// fail_mode says. The last few are kept for root and admin_group (see
	// agent/bounds.go). 0 means DefaultMaxConnections.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerUID bounds the connections one uid may hold at once,
	// so that one local user cannot take the connections the Git server's
	// user needs. Root, the agent's own uid and admin_group are exempt. A
	// connection beyond it is refused: its shim exits 75 whatever fail_mode
	// says. 0 means MaxConnections / 4 (see ConnectionsPerUID).
	MaxConnectionsPerUID int `toml:"max_connections_per_uid"`
}

// ConnectionsPerUID is the per-uid connection cap in force:
// MaxConnectionsPerUID, or DefaultMaxConnectionsPerUID when it is 0.
func (a *Agent) ConnectionsPerUID() int {
	if a.MaxConnectionsPerUID > 0 {
		return a.MaxConnectionsPerUID
	}
	m := a.MaxConnections
	if m <= 0 {
		m = DefaultMaxConnections
	}
	return DefaultMaxConnectionsPerUID(m)
}

// DefaultMaxConnections is Agent.MaxConnections when unset: far above the
// leases and queues of the default policy, far below the file descriptors
// sluiced's systemd unit allows (LimitNOFILE=1048576).
const DefaultMaxConnections = 10000

// DefaultMaxConnectionsPerUID is the per-uid cap when MaxConnectionsPerUID is 0: a
// quarter of max_connections (2,500 by default). A local attacker usually
// has one uid, two with a compromised service account: a quarter each
// leaves the Git server's user at least half of max_connections, and 2,500
// running or queued git processes of one user are far beyond what the
// default rules let in.
func DefaultMaxConnectionsPerUID(maxConnections int) int {
	return max(1, maxConnections/4)
}

// Git says where the real git binary is.
type Git struct {
	// Bin is the absolute path of the real git. "" means: search PATH,
	// skipping the shim (SLUICE_REAL_GIT overrides both).
	Bin string `toml:"bin"`
}

// Limit is one admission rule: the git subcommands it matches, how requests
// are grouped into keys, and how many run and wait per key.
type Limit struct {
	// Name identifies the rule in metrics (label "limit"), logs and
	// rejections. Required, unique, [a-z0-9_-]+.
	Name string `toml:"name"`
	// Match lists the git subcommands the rule admits ("upload-pack",
	// "pack-objects", ...), lowercase [a-z0-9-]+. Required; a subcommand may
	// be matched by at most one rule.
	Match []string `toml:"match"`
	// Key selects the queue a request joins: KeyRepo, KeyRemoteIP, KeyUser,
	// KeyGlobal, or parts joined with "+" ("repo+remote_ip"). Required.
	Key string `toml:"key"`
	// QueueOrder is the order waiters are admitted in: QueueFIFO or
	// QueueLIFO (under overload, LIFO serves clients that have not given up
	// yet). "" means QueueFIFO.
	QueueOrder string `toml:"queue_order"`
	// MaxQueueSize is how many requests may wait per key before new ones
	// are rejected. 0 means never queue: reject as soon as the key is at its
	// limit.
	MaxQueueSize int `toml:"max_queue_size"`
	// MaxQueueWait is the longest a request waits in the queue before it is
	// rejected. Required, in (0, 1h]: a request never waits forever.
	MaxQueueWait Duration `toml:"max_queue_wait"`
	// MaxPerKey is the static number of commands in flight per key, at least
	// 1, when Adaptive is false. Must be 0 (unset) when Adaptive is true.
	MaxPerKey int `toml:"max_per_key"`
	// Adaptive makes the per-key limit move between MinLimit and MaxLimit
	// (AIMD, see Adaptive). False means the static MaxPerKey applies.
	Adaptive bool `toml:"adaptive"`
	// MinLimit is the floor of an adaptive limit (>= 1). Must be 0 when
	// Adaptive is false.
	MinLimit int `toml:"min_limit"`
	// InitialLimit is where an adaptive limit starts, in [MinLimit,
	// MaxLimit]. Must be 0 when Adaptive is false.
	InitialLimit int `toml:"initial_limit"`
	// MaxLimit is the ceiling of an adaptive limit. Must be 0 when Adaptive
	// is false.
	MaxLimit int `toml:"max_limit"`
	// MaxRuntime bounds how long an admitted command of this rule may run:
	// past it the command gets SIGTERM, then SIGKILL after [timeouts]
	// kill_grace. 0 (the default) means no bound. Must be >= 0.
	MaxRuntime Duration `toml:"max_runtime"`

	// parts is Key split on "+", set by Validate; nil means split on use.
	parts []string
	// v4, v6 are the [keys] prefixes remote_ip parts are masked to, set
	// by Validate; 0 means the whole address.
	v4, v6 int
}

// Order returns the queue order, QueueFIFO when unset.
func (l *Limit) Order() string {
	if l.QueueOrder == "" {
		return QueueFIFO
	}
	return l.QueueOrder
}

// Limit returns the in-flight limit per key the rule starts with: MaxPerKey,
// or InitialLimit when the rule is adaptive.
func (l *Limit) Limit() int {
	if l.Adaptive {
		return l.InitialLimit
	}
	return l.MaxPerKey
}

// KeyInput is what a request says about itself for key derivation.
type KeyInput struct {
	// Repo is the absolute, cleaned repository path; empty when unknown.
	Repo []byte
	// RemoteIP is the client address without port; "" when unknown.
	RemoteIP string
	// User is the authenticated user; "" when unknown.
	User string
}

// KeyFor derives the queue key of a request under this rule: the parts named
// by Key, in the order written, joined with "\x1f"; a part the request does
// not carry becomes "unknown" (see the package doc). A "global" rule returns
// "global".
func (l *Limit) KeyFor(in KeyInput) string {
	parts := l.parts
	if parts == nil {
		parts = strings.Split(l.Key, "+")
	}
	if len(parts) == 1 {
		return l.keyPart(parts[0], in)
	}
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteString(keySep)
		}
		b.WriteString(l.keyPart(p, in))
	}
	return b.String()
}

func (l *Limit) keyPart(part string, in KeyInput) string {
	var v string
	switch part {
	case KeyGlobal:
		return KeyGlobal
	case KeyRepo:
		v = string(in.Repo)
	case KeyRemoteIP:
		v = ClientNetwork(in.RemoteIP, l.v4, l.v6)
	case KeyUser:
		v = in.User
	}
	if v == "" {
		return unknownPart
	}
	return v
}

// Cgroups configures the cgroup manager, as Gitaly's [cgroups]: a parent
// cgroup for every admitted git command, with per-repository buckets below.
type Cgroups struct {
	// Enabled turns cgroup placement on (the default). False means commands
	// run in the cgroup of the process that started them.
	Enabled bool `toml:"enabled"`
	// Required makes the agent refuse to start when cgroups are enabled but
	// cannot be set up (no cgroup file system, missing controller, no
	// permission). False (the default) logs what is missing and serves
	// admission without placement.
	Required bool `toml:"required"`
	// Mountpoint is where the cgroup file systems are mounted. "" means
	// /sys/fs/cgroup (Parse fills it in). Must be absolute when Enabled.
	Mountpoint string `toml:"mountpoint"`
	// HierarchyRoot is the parent cgroup's path relative to the agent's own
	// cgroup. "" means "sluice" (Parse fills it in).
	HierarchyRoot string `toml:"hierarchy_root"`
	// MemoryBytes limits the memory of the parent cgroup; 0 means no limit.
	MemoryBytes int64 `toml:"memory_bytes"`
	// CPUShares is the parent cgroup's CPU weight (cgroup v1 shares;
	// converted to cpu.weight on v2); 0 means not set.
	CPUShares int64 `toml:"cpu_shares"`
	// CPUQuotaUs is the parent cgroup's CPU quota in microseconds per
	// 100 ms period; 0 means no quota.
	CPUQuotaUs int64 `toml:"cpu_quota_us"`
	// Repositories configures the per-repository buckets.
	Repositories CgroupRepositories `toml:"repositories"`
}

// CgroupRepositories configures the per-repository buckets: a repository maps
// to one of Count buckets by a stable hash of its path.
type CgroupRepositories struct {
	// Count is the number of buckets, 1..65536 when cgroups are enabled.
	// 0 means the default, 64 (Parse fills it in).
	Count int `toml:"count"`
	// MemoryBytes limits each bucket's memory; 0 means no limit.
	MemoryBytes int64 `toml:"memory_bytes"`
	// CPUShares is each bucket's CPU weight; 0 means not set.
	CPUShares int64 `toml:"cpu_shares"`
	// CPUQuotaUs is each bucket's CPU quota in microseconds per 100 ms
	// period; 0 means no quota.
	CPUQuotaUs int64 `toml:"cpu_quota_us"`
}

// Adaptive configures the AIMD calibrator shared by adaptive rules.
type Adaptive struct {
	// CalibrationInterval is the additive-increase period: without
	// pressure, each adaptive limit grows by 1 per interval. Must be > 0;
	// Parse fills in 30s when absent.
	CalibrationInterval Duration `toml:"calibration_interval"`
	// SampleInterval is how often the watchers look for pressure. Must be
	// > 0; Parse fills in 1s when absent.
	SampleInterval Duration `toml:"sample_interval"`
	// BackoffFactor multiplies a limit on backoff, in (0, 1]. 0 is invalid;
	// Parse fills in 0.5 when absent.
	BackoffFactor float64 `toml:"backoff_factor"`
	// MemoryThreshold is the fraction of the memory limit above which the
	// memory watcher asks for backoff, in (0, 1]. 0 is invalid; Parse fills
	// in 0.9 when absent.
	MemoryThreshold float64 `toml:"memory_threshold"`
	// CPUThrottleThreshold is the fraction of the observation window spent
	// CPU-throttled above which the CPU watcher asks for backoff, in (0, 1].
	// 0 is invalid; Parse fills in 0.5 when absent.
	CPUThrottleThreshold float64 `toml:"cpu_throttle_threshold"`
	// MemorySignal chooses what the memory watcher compares with the
	// limit: MemoryWorkingSet (usage minus inactive page cache, against
	// MemoryThreshold: Gitaly's documented rule) or MemoryAnon (anonymous
	// memory, against AnonThreshold: Gitaly's 2026 rule). "" means
	// MemoryWorkingSet (Parse fills it in).
	//
	// The default stays working_set on data: in the clone-storm
	// benchmark's tight-memory variant (bench/storm/report/memory-signal:
	// 512 MiB host, 48 clients, each signal run twice in ABBA order) the
	// two kept the same clones (62 vs 60 completed), both had 0 OOM
	// kills, and probe p99 was mixed (438/750 ms working_set, 822/717 ms
	// anon). They differ in when they fire: anon at 307 MiB of anonymous
	// memory with 4 pack-objects running, before the limit (peak 456 MiB);
	// working_set only once the host reached its limit (working set 0.98,
	// peak 512 MiB) — late here, not early as Gitaly found on its fleet.
	// Nothing measured justifies leaving the documented rule; choose anon
	// where reaching the limit (page-cache reclaim) must be avoided.
	MemorySignal string `toml:"memory_signal"`
	// AnonThreshold is the fraction of the memory limit that anonymous
	// memory may reach with memory_signal = "anon", in (0, 1]. Parse fills
	// in 0.6 when absent.
	AnonThreshold float64 `toml:"anon_threshold"`
	// PSIMemoryFullThreshold is the share of the sample window in which
	// all tasks of the watched cgroup stalled on memory (PSI "full") above
	// which the psi_memory watcher asks for backoff, in (0, 1]. Parse
	// fills in 0.1 when absent.
	PSIMemoryFullThreshold float64 `toml:"psi_memory_full_threshold"`
	// PSICPUSomeThreshold is the share of the sample window in which some
	// task waited for a CPU (PSI "some") above which the psi_cpu watcher
	// asks for backoff, in (0, 1]. Parse fills in 0.9 when absent.
	PSICPUSomeThreshold float64 `toml:"psi_cpu_some_threshold"`
	// IncreaseMaxPSICPU holds additive increases back while the CPU is
	// saturated: when in at least half the samples since the last increase
	// some task waited for a CPU (PSI "some") for this share of the sample
	// window, the limit stays where it is (it is never lowered for it). In
	// [0, 1]; 0 turns the hold off. Parse fills in 0.8 when absent.
	IncreaseMaxPSICPU float64 `toml:"increase_max_psi_cpu"`
	// Cooldown is how long after a backoff further pressure is ignored, so
	// one pressure episode costs one decrease, not one per sample. Must be
	// > 0; Parse fills in 5s when absent.
	Cooldown Duration `toml:"cooldown"`
	// Watchers lists the pressure signals in use, by name: "memory",
	// "oom", "cpu_throttle", "psi_memory", "psi_cpu". Parse fills in
	// DefaultWatchers when absent; an empty list means adaptive limits
	// only ever grow.
	Watchers []string `toml:"watchers"`
	// KernelEvents makes the kernel's memory notifications wake the
	// watchers at once instead of at the next sample: v1 eventfds on
	// memory.oom_control and memory.pressure_level ("medium",
	// "critical") through cgroup.event_control, v2 inotify on
	// memory.events. Where registration fails the agent logs it once and
	// polls. False means polling only. Parse fills in true when absent.
	KernelEvents bool `toml:"kernel_events"`
}

// Memory signals of [adaptive] memory_signal.
const (
	MemoryWorkingSet = "working_set"
	MemoryAnon       = "anon"
)

// WatcherNames are the valid [adaptive] watchers, in the order they are
// sampled.
var WatcherNames = []string{"memory", "oom", "cpu_throttle", "psi_memory", "psi_cpu"}

// DefaultWatchers are the watchers in use when [adaptive] watchers is
// absent: all but psi_cpu. In the clone-storm benchmark (bench/storm) CPU
// "some" stall sat at 0.93–1.00 for the whole storm — a busy 2-core host
// running its admitted clones — so psi_cpu halved the limits again after
// every increase and adaptive completed 12 % fewer clones than static
// without relieving the stall. CPU overload is watched through the CFS
// quota instead (cpu_throttle), as Gitaly does; psi_cpu stays available.
var DefaultWatchers = []string{"memory", "oom", "cpu_throttle", "psi_memory"}

// EBPF configures exec/exit tracing of git processes.
type EBPF struct {
	// Enabled turns tracing on; where the kernel refuses it, the agent
	// logs why and runs without. False means off. Parse fills in true when
	// absent.
	Enabled bool `toml:"enabled"`
	// UnwrappedScope says which unwrapped execs (limited git subcommands
	// run outside every admitted tree) are counted and logged: "servers"
	// (those descending from a Git server process: git daemon, fcgiwrap,
	// Gitea, non-interactive sshd sessions, ServerComms) or "all". Parse
	// fills in "servers" when absent.
	UnwrappedScope string `toml:"unwrapped_scope"`
	// ServerComms adds process names (as /proc/PID/comm shows them, at
	// most 15 characters) whose descendants are a Git server's.
	ServerComms []string `toml:"server_comms"`
}

// Unwrapped exec scopes ([ebpf] unwrapped_scope).
const (
	ScopeServers = "servers"
	ScopeAll     = "all"
)

// Timeouts bounds phases of git commands (Gitaly's semantics: only the
// negotiation phase is bounded, never the transfer; see agent/timeouts.go).
type Timeouts struct {
	// UploadPackNegotiation bounds the negotiation phase of upload-pack:
	// from admission until pack-objects starts. 0 disables it; must be
	// >= 0; Parse fills in 10m when absent.
	UploadPackNegotiation Duration `toml:"upload_pack_negotiation"`
	// UploadArchiveNegotiation bounds the negotiation phase of
	// upload-archive: from admission until its upload-archive--writer
	// starts. 0 disables it; must be >= 0; Parse fills in 1m when absent.
	UploadArchiveNegotiation Duration `toml:"upload_archive_negotiation"`
	// KillGrace is how long a command stopped by a timeout has between
	// SIGTERM and SIGKILL. Must be > 0 and at most 1m; Parse fills in 5s
	// when absent.
	KillGrace Duration `toml:"kill_grace"`
}

// Duration is a time.Duration written in TOML as a Go duration string
// ("1s", "1m30s"). Numbers are rejected: the unit must be explicit.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := parseDuration(string(text))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}

// parseDuration is time.ParseDuration with a hint for bare numbers.
func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err == nil {
		return v, nil
	}
	if _, nerr := strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), 64); nerr == nil {
		return 0, fmt.Errorf("%s is a number, not a duration: quote a Go duration with its unit, such as \"%ss\"", s, s)
	}
	return 0, fmt.Errorf("%q is not a Go duration: write one such as \"30s\", \"1m30s\" (units ns, us, ms, s, m, h)", s)
}

// LimitFor returns the first rule that matches a git subcommand (its
// primary rule: its name labels the command's lease and metrics), nil
// when none does (the command is then admitted without limit).
func (c *Config) LimitFor(subcommand string) *Limit {
	if c.bySub != nil {
		if rs := c.bySub[subcommand]; len(rs) > 0 {
			return rs[0]
		}
		return nil
	}
	for i := range c.Limits {
		for _, m := range c.Limits[i].Match {
			if m == subcommand {
				return &c.Limits[i]
			}
		}
	}
	return nil
}

// LimitsFor returns every rule that matches a git subcommand, in file
// order: a command takes a slot of each (and of its budget class), all
// or none. The first is LimitFor's.
func (c *Config) LimitsFor(subcommand string) []*Limit {
	if c.bySub != nil {
		return c.bySub[subcommand]
	}
	var out []*Limit
	for i := range c.Limits {
		for _, m := range c.Limits[i].Match {
			if m == subcommand {
				out = append(out, &c.Limits[i])
				break
			}
		}
	}
	return out
}

// MatchedSubcommands returns the sorted set of subcommands any rule matches:
// the commands the shim must ask the agent about.
func (c *Config) MatchedSubcommands() []string {
	seen := make(map[string]bool)
	var out []string
	for _, l := range c.Limits {
		for _, m := range l.Match {
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	sort.Strings(out)
	return out
}

// MaxQueueWait returns the longest max_queue_wait of all rules, 0 without
// rules: how long a shim may have to wait for an answer.
func (c *Config) MaxQueueWait() time.Duration {
	var m time.Duration
	for _, l := range c.Limits {
		m = max(m, l.MaxQueueWait.Duration)
	}
	return m
}

// RuleNames returns the rules' names in file order.
func (c *Config) RuleNames() []string {
	out := make([]string, len(c.Limits))
	for i, l := range c.Limits {
		out[i] = l.Name
	}
	return out
}

// defaults returns a Config holding every default; Parse decodes over it.
func defaults() *Config {
	return &Config{
		Agent: Agent{
			MetricsAddr:        "127.0.0.1:9780",
			FailMode:           FailOpen,
			QueueFeedbackAfter: Duration{2 * time.Second},
			RestartGrace:       Duration{5 * time.Second},
			MaxConnections:     DefaultMaxConnections,
			AdmitUsers:         []string{},
			AdmitGroups:        []string{},
		},
		Cgroups: Cgroups{
			Enabled:       true,
			Mountpoint:    "/sys/fs/cgroup",
			HierarchyRoot: "sluice",
			Repositories:  CgroupRepositories{Count: 64},
		},
		Adaptive: Adaptive{
			CalibrationInterval:    Duration{30 * time.Second},
			SampleInterval:         Duration{time.Second},
			BackoffFactor:          0.5,
			MemoryThreshold:        0.9,
			CPUThrottleThreshold:   0.5,
			MemorySignal:           MemoryWorkingSet,
			AnonThreshold:          0.6,
			PSIMemoryFullThreshold: 0.1,
			PSICPUSomeThreshold:    0.9,
			IncreaseMaxPSICPU:      0.8,
			Cooldown:               Duration{5 * time.Second},
			Watchers:               append([]string(nil), DefaultWatchers...),
			KernelEvents:           true,
		},
		EBPF:   EBPF{Enabled: true, UnwrappedScope: ScopeServers, ServerComms: []string{}},
		Budget: defaultBudget(),
		Keys:   Keys{IPv6Prefix: 64, IPv4Prefix: 32},
		Timeouts: Timeouts{
			UploadPackNegotiation:    Duration{10 * time.Minute},
			UploadArchiveNegotiation: Duration{time.Minute},
			KillGrace:                Duration{5 * time.Second},
		},
		PackCache: defaultPackCache(),
	}
}

// fillDefaults sets defaults for the fields decoding over defaults() cannot
// reach (fields of [[limit]] elements) and for "" strings that mean default.
func (c *Config) fillDefaults() {
	if c.Agent.MetricsAddr == "" {
		c.Agent.MetricsAddr = "127.0.0.1:9780"
	}
	if c.Agent.FailMode == "" {
		c.Agent.FailMode = FailOpen
	}
	if c.Agent.MaxConnections == 0 {
		c.Agent.MaxConnections = DefaultMaxConnections
	}
	if c.Cgroups.Mountpoint == "" {
		c.Cgroups.Mountpoint = "/sys/fs/cgroup"
	}
	if c.Cgroups.HierarchyRoot == "" {
		c.Cgroups.HierarchyRoot = "sluice"
	}
	if c.Cgroups.Repositories.Count == 0 {
		c.Cgroups.Repositories.Count = 64
	}
	if c.Budget.FairKey == "" {
		c.Budget.FairKey = KeyRemoteIP
	}
	for i := range c.Limits {
		if c.Limits[i].QueueOrder == "" {
			c.Limits[i].QueueOrder = QueueFIFO
		}
	}
}
