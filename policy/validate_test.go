package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// rule is a valid rule; its keys are on lines 1 ([[limit]]) to 7.
const rule = `[[limit]]
name = "up"
match = ["upload-pack"]
key = "repo"
max_per_key = 2
max_queue_size = 1
max_queue_wait = "1s"
`

// ruleWith returns rule with line old replaced by repl ("" deletes it) and
// extra appended (from line 8 on).
func ruleWith(t *testing.T, old, repl, extra string) string {
	t.Helper()
	if old == "" {
		return rule + extra
	}
	if !strings.Contains(rule, old+"\n") {
		t.Fatalf("rule has no line %q", old)
	}
	if repl == "" {
		return strings.Replace(rule, old+"\n", "", 1) + extra
	}
	return strings.Replace(rule, old+"\n", repl+"\n", 1) + extra
}

func parseErrors(t *testing.T, doc string) Errors {
	t.Helper()
	c, err := Parse("sluice.toml", []byte(doc))
	if err == nil {
		t.Fatalf("Parse accepted:\n%s\ngot %+v", doc, c)
	}
	if c != nil {
		t.Errorf("Parse returned a Config with an error")
	}
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error is %T, want Errors: %v", err, err)
	}
	return es
}

type wantErr struct {
	line    int
	key     string
	value   string
	problem string // substring
	fix     string // substring
}

func checkOne(t *testing.T, doc string, w wantErr) {
	t.Helper()
	es := parseErrors(t, doc)
	if len(es) != 1 {
		t.Fatalf("got %d errors, want 1:\n%v", len(es), es)
	}
	checkErr(t, es[0], w)
}

func checkErr(t *testing.T, e *Error, w wantErr) {
	t.Helper()
	if e.File != "sluice.toml" {
		t.Errorf("File = %q, want sluice.toml", e.File)
	}
	if e.Line != w.line {
		t.Errorf("Line = %d, want %d (%v)", e.Line, w.line, e)
	}
	if e.Key != w.key {
		t.Errorf("Key = %q, want %q (%v)", e.Key, w.key, e)
	}
	if e.Value != w.value {
		t.Errorf("Value = %q, want %q (%v)", e.Value, w.value, e)
	}
	if !strings.Contains(e.Problem, w.problem) {
		t.Errorf("Problem = %q, want it to contain %q", e.Problem, w.problem)
	}
	if e.Fix == "" || !strings.Contains(e.Fix, w.fix) {
		t.Errorf("Fix = %q, want it to contain %q", e.Fix, w.fix)
	}
	if msg := e.Error(); !strings.Contains(msg, e.Fix) || strings.Contains(msg, "\n") {
		t.Errorf("Error() = %q: want one line containing the fix", msg)
	}
}

func TestValidateRules(t *testing.T) {
	const up = `limit "up".`
	tests := []struct {
		name string
		doc  func(t *testing.T) string
		want wantErr
	}{
		{"name missing", func(t *testing.T) string { return ruleWith(t, `name = "up"`, "", "") },
			wantErr{1, "limit[0].name", "", "is missing", "unique name"}},
		{"name empty", func(t *testing.T) string { return ruleWith(t, `name = "up"`, `name = ""`, "") },
			wantErr{2, "limit[0].name", `""`, "is missing", "unique name"}},
		{"name charset", func(t *testing.T) string { return ruleWith(t, `name = "up"`, `name = "Up Load"`, "") },
			wantErr{2, "limit[0].name", `"Up Load"`, "a-z, 0-9, _ and -", "rename"}},
		{"name too long", func(t *testing.T) string {
			return ruleWith(t, `name = "up"`, `name = "`+strings.Repeat("a", 65)+`"`, "")
		}, wantErr{2, "limit[0].name", `"` + strings.Repeat("a", 65) + `"`, "1 to 64", "rename"}},
		{"name duplicate", func(t *testing.T) string {
			return rule + "\n" + strings.Replace(rule, "upload-pack", "pack-objects", 1)
		}, wantErr{10, "limit[1].name", `"up"`, "also the name of limit[0] (line 2)", "unique name"}},
		{"match missing", func(t *testing.T) string { return ruleWith(t, `match = ["upload-pack"]`, "", "") },
			wantErr{1, up + "match", "[]", "at least one", `match = ["upload-pack"]`}},
		{"match empty list", func(t *testing.T) string { return ruleWith(t, `match = ["upload-pack"]`, `match = []`, "") },
			wantErr{3, up + "match", "[]", "at least one", `match = ["upload-pack"]`}},
		{"match charset", func(t *testing.T) string {
			return ruleWith(t, `match = ["upload-pack"]`, `match = ["upload-pack", "git-Upload"]`, "")
		}, wantErr{3, up + "match[1]", `"git-Upload"`, "not a git subcommand", "lowercase"}},
		{"match element on its own line", func(t *testing.T) string {
			return ruleWith(t, `match = ["upload-pack"]`, "match = [\n  \"upload-pack\",\n  \"x y\",\n]", "")
		}, wantErr{5, up + "match[1]", `"x y"`, "not a git subcommand", "lowercase"}},
		{"match twice in a rule", func(t *testing.T) string {
			return ruleWith(t, `match = ["upload-pack"]`, `match = ["upload-pack", "upload-pack"]`, "")
		}, wantErr{3, up + "match[1]", `"upload-pack"`, "listed twice", "remove the duplicate"}},
		{"key missing", func(t *testing.T) string { return ruleWith(t, `key = "repo"`, "", "") },
			wantErr{1, up + "key", `""`, "is missing", `"repo+remote_ip"`}},
		{"key unknown part", func(t *testing.T) string { return ruleWith(t, `key = "repo"`, `key = "repository"`, "") },
			wantErr{4, up + "key", `"repository"`, `unknown part "repository"`, `"remote_ip"`}},
		{"key duplicate part", func(t *testing.T) string { return ruleWith(t, `key = "repo"`, `key = "repo+user+repo"`, "") },
			wantErr{4, up + "key", `"repo+user+repo"`, `"repo" twice`, "join parts"}},
		{"key empty part", func(t *testing.T) string { return ruleWith(t, `key = "repo"`, `key = "repo+"`, "") },
			wantErr{4, up + "key", `"repo+"`, "empty part", "join parts"}},
		{"key global joined", func(t *testing.T) string { return ruleWith(t, `key = "repo"`, `key = "global+user"`, "") },
			wantErr{4, up + "key", `"global+user"`, "cannot be joined", `"global"`}},
		{"queue_order", func(t *testing.T) string { return ruleWith(t, "", "", `queue_order = "random"`) },
			wantErr{8, up + "queue_order", `"random"`, `"fifo" or "lifo"`, `"lifo"`}},
		{"max_queue_size negative", func(t *testing.T) string { return ruleWith(t, "max_queue_size = 1", "max_queue_size = -1", "") },
			wantErr{6, up + "max_queue_size", "-1", "between 0 and 100000", "0 rejects at once"}},
		{"max_queue_size too big", func(t *testing.T) string {
			return ruleWith(t, "max_queue_size = 1", "max_queue_size = 100_001", "")
		}, wantErr{6, up + "max_queue_size", "100_001", "between 0 and 100000", "wait per key"}},
		{"max_queue_wait missing", func(t *testing.T) string { return ruleWith(t, `max_queue_wait = "1s"`, "", "") },
			wantErr{1, up + "max_queue_wait", "", "is missing", "never wait forever"}},
		{"max_queue_wait zero", func(t *testing.T) string { return ruleWith(t, `max_queue_wait = "1s"`, `max_queue_wait = "0s"`, "") },
			wantErr{7, up + "max_queue_wait", `"0s"`, "must be > 0", `Go duration such as "1s"`}},
		{"max_queue_wait negative", func(t *testing.T) string { return ruleWith(t, `max_queue_wait = "1s"`, `max_queue_wait = "-1s"`, "") },
			wantErr{7, up + "max_queue_wait", `"-1s"`, "must be > 0", `Go duration such as "1s"`}},
		{"max_queue_wait too long", func(t *testing.T) string {
			return ruleWith(t, `max_queue_wait = "1s"`, `max_queue_wait = "61m"`, "")
		}, wantErr{7, up + "max_queue_wait", `"61m"`, "at most 1h", "given up"}},
		{"max_runtime negative", func(t *testing.T) string { return ruleWith(t, "", "", `max_runtime = "-1h"`) },
			wantErr{8, up + "max_runtime", `"-1h"`, "must be >= 0", "no bound"}},
		{"max_per_key missing", func(t *testing.T) string { return ruleWith(t, "max_per_key = 2", "", "") },
			wantErr{1, up + "max_per_key", "", "is missing", "adaptive = true"}},
		{"max_per_key zero", func(t *testing.T) string { return ruleWith(t, "max_per_key = 2", "max_per_key = 0", "") },
			wantErr{5, up + "max_per_key", "0", "between 1 and 100000", "at once per key"}},
		{"max_per_key too big", func(t *testing.T) string { return ruleWith(t, "max_per_key = 2", "max_per_key = 100001", "") },
			wantErr{5, up + "max_per_key", "100001", "between 1 and 100000", "at once per key"}},
		{"static with min_limit", func(t *testing.T) string { return ruleWith(t, "", "", "min_limit = 3") },
			wantErr{8, up + "min_limit", "3", "only used by adaptive rules", "adaptive = true, or remove"}},
		{"adaptive with max_per_key", func(t *testing.T) string {
			return ruleWith(t, "", "", "adaptive = true\nmin_limit = 1\ninitial_limit = 2\nmax_limit = 3")
		}, wantErr{5, up + "max_per_key", "2", "not used by adaptive rules", "remove max_per_key"}},
		{"adaptive max_limit missing", func(t *testing.T) string {
			return ruleWith(t, "max_per_key = 2", "", "adaptive = true\nmin_limit = 1\ninitial_limit = 2")
		}, wantErr{1, up + "max_limit", "", "is missing", "min_limit <= initial_limit <= max_limit"}},
		{"adaptive min_limit zero", func(t *testing.T) string {
			return ruleWith(t, "max_per_key = 2", "", "adaptive = true\nmin_limit = 0\ninitial_limit = 2\nmax_limit = 3")
		}, wantErr{8, up + "min_limit", "0", "between 1 and 100000", "each at least 1"}},
		{"adaptive max_limit too big", func(t *testing.T) string {
			return ruleWith(t, "max_per_key = 2", "", "adaptive = true\nmin_limit = 1\ninitial_limit = 2\nmax_limit = 100001")
		}, wantErr{10, up + "max_limit", "100001", "between 1 and 100000", "each at least 1"}},
		{"adaptive min above initial", func(t *testing.T) string {
			return ruleWith(t, "max_per_key = 2", "", "adaptive = true\nmin_limit = 3\ninitial_limit = 2\nmax_limit = 4")
		}, wantErr{8, up + "min_limit", "3", "above initial_limit (2)", "min_limit <= initial_limit"}},
		{"adaptive initial above max", func(t *testing.T) string {
			return ruleWith(t, "max_per_key = 2", "", "adaptive = true\nmin_limit = 1\ninitial_limit = 5\nmax_limit = 4")
		}, wantErr{9, up + "initial_limit", "5", "above max_limit (4)", "initial_limit <= max_limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkOne(t, tt.doc(t), tt.want)
		})
	}
}

func TestValidateSections(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want wantErr
	}{
		{"fail_mode", "[agent]\nfail_mode = \"half\"\n",
			wantErr{2, "agent.fail_mode", `"half"`, `"open" or "closed"`, `"closed" to reject`}},
		{"socket relative", "[agent]\n\nsocket = \"run/sluice.sock\"\n",
			wantErr{3, "agent.socket", `"run/sluice.sock"`, "absolute path", "/run/sluice/sluice.sock"}},
		{"metrics_addr no port", "[agent]\nmetrics_addr = \"localhost\"\n",
			wantErr{2, "agent.metrics_addr", `"localhost"`, "not host:port", `"off"`}},
		{"metrics_addr bad port", "[agent]\nmetrics_addr = \"127.0.0.1:99999\"\n",
			wantErr{2, "agent.metrics_addr", `"127.0.0.1:99999"`, "invalid port", "host:port"}},
		{"max_connections negative", "[agent]\nmax_connections = -1\n",
			wantErr{2, "agent.max_connections", "-1", "must be in [1, 1000000]", "such as 10000"}},
		{"max_connections huge", "[agent]\nmax_connections = 2000000\n",
			wantErr{2, "agent.max_connections", "2000000", "must be in [1, 1000000]", "remove the key"}},
		{"max_connections_per_uid negative", "[agent]\nmax_connections_per_uid = -1\n",
			wantErr{2, "agent.max_connections_per_uid", "-1", "must be in [0, max_connections = 10000]", "such as 2500"}},
		{"max_connections_per_uid above max_connections", "[agent]\nmax_connections = 100\nmax_connections_per_uid = 101\n",
			wantErr{3, "agent.max_connections_per_uid", "101", "must be in [0, max_connections = 100]", "such as 25 (a quarter of max_connections), or 0 or nothing"}},
		{"admit_users empty name", "[agent]\nadmit_users = [\"git\", \"\"]\n",
			wantErr{2, "agent.admit_users", `["git", ""]`, `entry "" is not a user name`, `["git", "1001"]`}},
		{"admit_groups with space", "[agent]\nadmit_groups = [\"git users\"]\n",
			wantErr{2, "agent.admit_groups", `["git users"]`, `entry "git users" is not a group name`, "[] to let anyone"}},
		{"git bin relative", "[git]\nbin = \"git\"\n",
			wantErr{2, "git.bin", `"git"`, "absolute path", "/usr/bin/git"}},
		{"cgroups count", "[cgroups]\nenabled = true\n[cgroups.repositories]\ncount = 70000\n",
			wantErr{4, "cgroups.repositories.count", "70000", "between 1 and 65536", "such as 64"}},
		{"cgroups count negative", "[cgroups]\nenabled = true\nrepositories.count = -1\n",
			wantErr{3, "cgroups.repositories.count", "-1", "between 1 and 65536", "such as 64"}},
		{"cgroups mountpoint", "[cgroups]\nenabled = true\nmountpoint = \"sys/fs/cgroup\"\n",
			wantErr{3, "cgroups.mountpoint", `"sys/fs/cgroup"`, "absolute path", "/sys/fs/cgroup"}},
		{"cgroups hierarchy_root", "[cgroups]\nenabled = true\nhierarchy_root = \"../escape\"\n",
			wantErr{3, "cgroups.hierarchy_root", `"../escape"`, "relative path inside", `"sluice"`}},
		{"cgroups negative memory", "[cgroups]\nenabled = true\nmemory_bytes = -5\n",
			wantErr{3, "cgroups.memory_bytes", "-5", "negative", "0 for no limit"}},
		{"backoff_factor zero", "[adaptive]\nbackoff_factor = 0\n",
			wantErr{2, "adaptive.backoff_factor", "0", "(0, 1]", "0.5"}},
		{"memory_threshold above 1", "[adaptive]\nmemory_threshold = 1.5\n",
			wantErr{2, "adaptive.memory_threshold", "1.5", "(0, 1]", "0.5"}},
		{"cpu_throttle_threshold negative", "[adaptive]\ncpu_throttle_threshold = -0.1\n",
			wantErr{2, "adaptive.cpu_throttle_threshold", "-0.1", "(0, 1]", "0.5"}},
		{"calibration_interval zero", "[adaptive]\ncalibration_interval = \"0s\"\n",
			wantErr{2, "adaptive.calibration_interval", `"0s"`, "must be between 1s and 1h", `"30s"`}},
		{"sample_interval too fast", "[adaptive]\nsample_interval = \"1ns\"\n",
			wantErr{2, "adaptive.sample_interval", `"1ns"`, "must be between 50ms and 1m", `"1s"`}},
		{"negotiation too short", "[timeouts]\nupload_pack_negotiation = \"10ms\"\n",
			wantErr{2, "timeouts.upload_pack_negotiation", `"10ms"`, "at least 100ms", `"0s" disables`}},
		{"git bin with a newline", "[git]\nbin = \"/usr/bin/git\\n\"\n",
			wantErr{2, "git.bin", `"/usr/bin/git\n"`, "control character", "one line"}},
		{"sample_interval negative", "[adaptive]\nsample_interval = \"-1ms\"\n",
			wantErr{2, "adaptive.sample_interval", `"-1ms"`, "must be between 50ms and 1m", `"1s"`}},
		{"timeout negative", "[timeouts]\nupload_pack_negotiation = \"-1s\"\n",
			wantErr{2, "timeouts.upload_pack_negotiation", `"-1s"`, ">= 0", `"0s" to disable`}},
		{"archive timeout negative", "[timeouts]\nupload_archive_negotiation = \"-1m\"\n",
			wantErr{2, "timeouts.upload_archive_negotiation", `"-1m"`, ">= 0", `"0s" to disable`}},
		{"kill_grace zero", "[timeouts]\nkill_grace = \"0s\"\n",
			wantErr{2, "timeouts.kill_grace", `"0s"`, "> 0", `"5s"`}},
		{"kill_grace too long", "[timeouts]\nkill_grace = \"2m\"\n",
			wantErr{2, "timeouts.kill_grace", `"2m"`, "at most 1m", `"5s"`}},
		{"queue_feedback_after negative", "[agent]\nqueue_feedback_after = \"-2s\"\n",
			wantErr{2, "agent.queue_feedback_after", `"-2s"`, ">= 0", `"0s" to never`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkOne(t, tt.doc, tt.want)
		})
	}
}

// TestValidateCollectsAll checks that every problem is reported, in line order.
func TestValidateCollectsAll(t *testing.T) {
	doc := `[agent]
fail_mode = "maybe"

[[limit]]
name = "a"
match = ["upload-pack"]
key = "repo+global"
max_queue_wait = "-1s"
max_per_key = 3

[[limit]]
name = "b"
match = ["upload-pack"]
key = "user"
max_queue_wait = "2h"
adaptive = true
min_limit = 5
initial_limit = 3
max_limit = 9

[adaptive]
backoff_factor = 2
`
	es := parseErrors(t, doc)
	want := []struct {
		line int
		key  string
	}{
		{2, "agent.fail_mode"},
		{7, `limit "a".key`},
		{8, `limit "a".max_queue_wait`},
		{15, `limit "b".max_queue_wait`},
		{17, `limit "b".min_limit`},
		{22, "adaptive.backoff_factor"},
	}
	if len(es) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(es), len(want), es)
	}
	for i, w := range want {
		if es[i].Line != w.line || es[i].Key != w.key {
			t.Errorf("error %d = line %d key %q, want line %d key %q", i, es[i].Line, es[i].Key, w.line, w.key)
		}
	}
	if got := len(strings.Split(es.Error(), "\n")); got != len(want) {
		t.Errorf("Errors.Error() has %d lines, want %d", got, len(want))
	}
}

func TestErrorFormat(t *testing.T) {
	doc := ruleWith(t, `name = "up"`, `name = "upload-pack"`, "")
	doc = strings.Replace(doc, `max_queue_wait = "1s"`, `max_queue_wait = "-1s"`, 1)
	es := parseErrors(t, "\n\n\n\n\n"+doc)
	want := `sluice.toml:12: limit "upload-pack": max_queue_wait = "-1s": must be > 0; set a Go duration such as "1s"`
	if len(es) != 1 || es[0].Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", es, want)
	}
}

// TestValidateByHand checks Validate on a Config that was not parsed: no
// lines, values formatted from Go, and the LimitFor table built on success.
func TestValidateByHand(t *testing.T) {
	c := Default()
	c.Source = "hand"
	c.keys = nil
	c.Limits[1].MaxQueueWait = Duration{}
	err := c.Validate()
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 {
		t.Fatalf("Validate = %v, want one error", err)
	}
	e := es[0]
	if e.File != "hand" || e.Line != 0 || e.Key != `limit "pack-objects".max_queue_wait` || e.Problem != "is missing" {
		t.Errorf("got %+v", e)
	}

	c.Limits[1].MaxQueueWait = Duration{-1}
	es = nil
	if err := c.Validate(); !errors.As(err, &es) || es[0].Value != `"-1ns"` {
		t.Errorf("Validate = %v, want value \"-1ns\"", err)
	}
	if c.bySub != nil {
		t.Errorf("lookup table kept after a failed Validate")
	}

	c.Limits[1].MaxQueueWait = Duration{1}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if c.bySub == nil || c.LimitFor("pack-objects") != &c.Limits[1] {
		t.Errorf("LimitFor after Validate does not use the table")
	}
}

func TestAdaptiveWatchersAndSignal(t *testing.T) {
	c, err := Parse("w.toml", []byte("[adaptive]\nwatchers = [\"memory\"]\nmemory_signal = \"anon\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Adaptive.Watchers) != 1 || c.Adaptive.Watchers[0] != "memory" || c.Adaptive.MemorySignal != MemoryAnon {
		t.Fatalf("adaptive = %+v", c.Adaptive)
	}
	_, err = Parse("w.toml", []byte("[adaptive]\nwatchers = [\"memory\", \"swap\", \"memory\"]\nmemory_signal = \"rss\"\ncooldown = \"0s\"\n"))
	msg := fmt.Sprint(err)
	for _, want := range []string{
		`w.toml:2: adaptive: watchers = ["memory", "swap", "memory"]: unknown watcher "swap"; use some of: memory, oom, cpu_throttle, psi_memory, psi_cpu`,
		`watcher "memory" listed twice`,
		`w.toml:3: adaptive: memory_signal = "rss": unknown memory signal; write "working_set" or "anon"`,
		`w.toml:4: adaptive: cooldown = "0s": must be between 1ms and 10m`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("errors lack %q:\n%s", want, msg)
		}
	}
}

// TestMaxConnectionsPerUIDDefault: unset, the per-uid cap is a quarter of
// max_connections, whatever max_connections is.
func TestMaxConnectionsPerUIDDefault(t *testing.T) {
	for _, tt := range []struct {
		toml string
		want int
	}{
		{"", 2500},
		{"[agent]\nmax_connections = 100\n", 25},
		{"[agent]\nmax_connections = 3\n", 1},
		{"[agent]\nmax_connections = 100\nmax_connections_per_uid = 0\n", 25},
		{"[agent]\nmax_connections = 100\nmax_connections_per_uid = 100\n", 100},
	} {
		c, err := Parse("t.toml", []byte(tt.toml))
		if err != nil {
			t.Fatalf("%q: %v", tt.toml, err)
		}
		if got := c.Agent.ConnectionsPerUID(); got != tt.want {
			t.Errorf("%q: max_connections_per_uid = %d, want %d", tt.toml, got, tt.want)
		}
	}
}
