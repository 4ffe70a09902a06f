package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
)

func TestDefault(t *testing.T) {
	c := Default()
	if c.Source != DefaultSource {
		t.Errorf("Source = %q", c.Source)
	}
	want := []struct {
		name, match, key string
		perKey, size     int
		wait             time.Duration
	}{
		{"upload-pack", "upload-pack", "repo", 64, 200, 60 * time.Second},
		{"pack-objects", "pack-objects", "remote_ip", 15, 200, 5 * time.Minute},
		{"receive-pack", "receive-pack", "repo", 10, 100, 60 * time.Second},
		{"upload-archive", "upload-archive", "repo", 4, 10, 10 * time.Second},
	}
	if len(c.Limits) != len(want) {
		t.Fatalf("%d rules, want %d", len(c.Limits), len(want))
	}
	for i, w := range want {
		l := c.Limits[i]
		if l.Name != w.name || !reflect.DeepEqual(l.Match, []string{w.match}) || l.Key != w.key ||
			l.MaxPerKey != w.perKey || l.MaxQueueSize != w.size || l.MaxQueueWait.Duration != w.wait ||
			l.Adaptive || l.Order() != QueueFIFO {
			t.Errorf("rule %d = %+v, want %+v", i, l, w)
		}
	}
	// Every section of the file says what the code defaults say.
	d := defaults()
	if !reflect.DeepEqual(c.Agent, d.Agent) || c.Git != d.Git || c.Cgroups != d.Cgroups || !reflect.DeepEqual(c.Adaptive, d.Adaptive) || !reflect.DeepEqual(c.EBPF, d.EBPF) || c.Timeouts != d.Timeouts {
		t.Errorf("default.toml and defaults() disagree:\nfile %+v\ncode %+v", c, d)
	}
	if !c.Cgroups.Enabled || c.Cgroups.Required || !c.EBPF.Enabled || c.Agent.MetricsAddr != "127.0.0.1:9780" || c.Agent.FailMode != FailOpen {
		t.Errorf("unexpected defaults: %+v", c)
	}
	// Default returns a new Config each time.
	c.Limits[0].MaxPerKey = 1
	if Default().Limits[0].MaxPerKey != 64 {
		t.Errorf("Default shares state between calls")
	}
}

// TestPrintDefaultsRoundTrip checks that what --print-defaults prints parses
// to the same Config as Default, and that a file written from scratch with
// only the rules gets the same sections.
func TestPrintDefaultsRoundTrip(t *testing.T) {
	out := DefaultTOML()
	out[0] = 'X' // DefaultTOML returns a copy
	if bytes.Equal(out, DefaultTOML()) {
		t.Fatal("DefaultTOML returns the embedded slice")
	}
	c, err := Parse("printed.toml", DefaultTOML())
	if err != nil {
		t.Fatal(err)
	}
	c.Source = DefaultSource
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("re-parsed default differs")
	}

	empty, err := Parse("empty.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if !reflect.DeepEqual(empty.Limits, d.Limits) || !empty.DefaultLimits || !reflect.DeepEqual(empty.Agent, d.Agent) || empty.Cgroups != d.Cgroups || !reflect.DeepEqual(empty.Adaptive, d.Adaptive) ||
		!reflect.DeepEqual(empty.EBPF, d.EBPF) || empty.Timeouts != d.Timeouts {
		t.Errorf("empty file does not get the default sections: %+v", empty)
	}
}

// TestNoLimitsKeepsDefaultRules: a file that defines no [[limit]] does not
// silently turn every limit off; `limit = []` does, explicitly.
func TestNoLimitsKeepsDefaultRules(t *testing.T) {
	c, err := Parse("agent-only.toml", []byte("[agent]\nsocket_group = \"git\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.DefaultLimits || !slices.Equal(c.RuleNames(), Default().RuleNames()) || c.Agent.SocketGroup != "git" {
		t.Errorf("agent-only file: DefaultLimits %v, rules %v", c.DefaultLimits, c.RuleNames())
	}
	if c.LimitFor("upload-pack") == nil {
		t.Error("agent-only file: upload-pack matches no rule")
	}
	none, err := Parse("none.toml", []byte("limit = []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if none.DefaultLimits || len(none.Limits) != 0 {
		t.Errorf("limit = []: DefaultLimits %v, %d rules; want none", none.DefaultLimits, len(none.Limits))
	}
	one, err := Parse("one.toml", []byte("[[limit]]\nname = \"x\"\nmatch = [\"upload-pack\"]\nkey = \"repo\"\nmax_per_key = 1\nmax_queue_wait = \"1s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if one.DefaultLimits || len(one.Limits) != 1 {
		t.Errorf("one [[limit]]: DefaultLimits %v, %d rules; want exactly that one", one.DefaultLimits, len(one.Limits))
	}
}

func TestParseKeepsExplicitValues(t *testing.T) {
	c, err := Parse("x.toml", []byte(`
[agent]
metrics_addr = "off"
fail_mode = "closed"
socket = "/tmp/s.sock"
[ebpf]
enabled = false
[adaptive]
backoff_factor = 1
[cgroups]
enabled = true
repositories.count = 8
`+rule+`queue_order = "lifo"`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Agent.MetricsAddr != MetricsOff || c.Agent.FailMode != FailClosed || c.Agent.Socket != "/tmp/s.sock" ||
		c.EBPF.Enabled || c.Adaptive.BackoffFactor != 1 || c.Adaptive.MemoryThreshold != 0.9 ||
		!c.Cgroups.Enabled || c.Cgroups.Repositories.Count != 8 || c.Cgroups.Mountpoint != "/sys/fs/cgroup" {
		t.Errorf("got %+v", c)
	}
	if c.Limits[0].Order() != QueueLIFO {
		t.Errorf("queue_order = %q", c.Limits[0].QueueOrder)
	}
}

func TestParseInlineRules(t *testing.T) {
	c, err := Parse("x.toml", []byte(`limit = [
  {name = "a", match = ["upload-pack"], key = "repo", max_per_key = 1, max_queue_wait = "1s"},
  {name = "b", match = ["pack-objects"], key = "global", max_per_key = 2, max_queue_wait = "2s"},
]
cgroups = {enabled = true, repositories = {count = 3}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Limits) != 2 || c.Limits[1].Name != "b" || c.Cgroups.Repositories.Count != 3 {
		t.Errorf("got %+v", c)
	}
	es := parseErrors(t, "limit = [\n  {name = \"a\", match = [\"upload-pack\"], key = \"repo\", max_per_key = 0, max_queue_wait = \"1s\"},\n]\n")
	checkErr(t, es[0], wantErr{2, `limit "a".max_per_key`, "0", "between 1", "at once per key"})
}

func TestUnknownKeys(t *testing.T) {
	doc := `[agent]
sockt = "/run/s.sock"
fail_mode = "maybe"

[[limit]]
name = "up"
match = ["upload-pack"]
key = "repo"
max_per_key = 2
max_wait = "1s"
Max_Queue_Size = 3

[cgroup]
enabled = true

top = 1
`
	es := parseErrors(t, doc)
	want := []wantErr{
		{2, "agent.sockt", "", "unknown key", `did you mean "socket"? remove it, or check the spelling (known keys in [agent]: socket, socket_group, metrics_addr, pprof, fail_mode, admin_group, queue_feedback_after, restart_grace, admit_users, admit_groups, max_connections, max_connections_per_uid)`},
		{3, "agent.fail_mode", `"maybe"`, `"open" or "closed"`, "closed"},
		{5, `limit "up".max_queue_wait`, "", "is missing", "never wait forever"},
		{10, `limit "up".max_wait`, "", "unknown key", "known keys in [[limit]]: name, match, key, queue_order, max_queue_size, max_queue_wait,"},
		{11, `limit "up".Max_Queue_Size`, "", "unknown key", `did you mean "max_queue_size"?`},
		{13, "cgroup", "", "unknown key", `did you mean "cgroups"? remove it, or check the spelling (known keys in the top level: agent, git, limit, cgroups, adaptive, ebpf, timeouts, budget, keys, class, pack_cache)`},
	}
	if len(es) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(es), len(want), es)
	}
	for i, w := range want {
		checkErr(t, es[i], w)
	}
	// "enabled" and "top" sit in the unknown [cgroup] table: the table is
	// reported once, not each key in it.
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		name, doc string
		line      int
		problem   string
	}{
		{"missing value", "[agent]\nsocket = \n", 2, "TOML syntax"},
		{"unterminated string", "[agent]\n\nsocket = \"/run\n", 3, "TOML syntax"},
		{"bad header", "[agent\nsocket = \"\"\n", 1, "TOML syntax"},
		{"garbage", "[[limit]]\nname = \"a\"\n@@@\n", 3, "TOML syntax"},
		{"missing equals", "[agent]\nsocket\n", 2, "expected '='"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := parseErrors(t, tt.doc)
			if len(es) != 1 {
				t.Fatalf("got %v", es)
			}
			e := es[0]
			if e.Line != tt.line || !strings.Contains(e.Problem, tt.problem) || !strings.Contains(e.Problem, "column") || e.Fix == "" {
				t.Errorf("got %+v, want line %d and %q", e, tt.line, tt.problem)
			}
			if !strings.HasPrefix(e.Error(), "sluice.toml:") {
				t.Errorf("Error() = %q", e.Error())
			}
		})
	}
}

func TestTypeErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want wantErr
	}{
		{"string for int", ruleWith(t, "max_per_key = 2", `max_per_key = "2"`, ""),
			wantErr{5, `limit "up".max_per_key`, `"2"`, "is a string, want a whole number", "without quotes"}},
		{"float for int", ruleWith(t, "max_per_key = 2", `max_per_key = 2.5`, ""),
			wantErr{5, `limit "up".max_per_key`, `2.5`, "is a float, want a whole number", "without quotes"}},
		{"int for string", "[agent]\nmetrics_addr = 9780\n",
			wantErr{2, "agent.metrics_addr", "9780", "is an integer, want a string", "quote it"}},
		{"string for bool", "[ebpf]\nenabled = \"yes\"\n",
			wantErr{2, "ebpf.enabled", `"yes"`, "is a string, want true or false", "true or false"}},
		{"string for float", "[adaptive]\nbackoff_factor = \"0.5\"\n",
			wantErr{2, "adaptive.backoff_factor", `"0.5"`, "want a number", "0.5"}},
		{"string for list", ruleWith(t, `match = ["upload-pack"]`, `match = "upload-pack"`, ""),
			wantErr{3, `limit "up".match`, `"upload-pack"`, "is a string, want a list of strings", `["upload-pack"]`}},
		{"number in list", ruleWith(t, `match = ["upload-pack"]`, `match = ["upload-pack", 7]`, ""),
			wantErr{3, `limit "up".match[1]`, "", "is an integer, want a string", "quote it"}},
		{"number for duration", ruleWith(t, `max_queue_wait = "1s"`, `max_queue_wait = 30`, ""),
			wantErr{7, `limit "up".max_queue_wait`, "30", "is a number, not a duration", `quote a Go duration with its unit, such as "30s"`}},
		{"unitless duration string", "[timeouts]\nupload_pack_negotiation = \"10\"\n",
			wantErr{2, "timeouts.upload_pack_negotiation", `"10"`, "not a Go duration", `"30s"`}},
		{"bad duration string", "[adaptive]\nsample_interval = \"soon\"\n",
			wantErr{2, "adaptive.sample_interval", `"soon"`, "not a Go duration", "units ns, us, ms, s, m, h"}},
		{"value for table", "agent = 1\n",
			wantErr{1, "agent", "1", "is an integer, want a table", "[agent]"}},
		{"table for value", "[agent.socket]\n",
			wantErr{1, "agent.socket", "", "is a value, not a table", "socket = ..."}},
		{"table for list of tables", "[limit]\nname = \"x\"\n",
			wantErr{1, "limit", "", "is a list of tables", "[[limit]]"}},
		{"list of tables for table", "[[agent]]\n",
			wantErr{1, "agent", "", "not a list of tables", "[agent]"}},
		{"dotted key into list", "limit.name = \"x\"\n",
			wantErr{1, "limit", "", "cannot take a dotted key", "own table"}},
		{"int out of range", "[cgroups]\nmemory_bytes = 99999999999999999999\n",
			wantErr{2, "cgroups.memory_bytes", "99999999999999999999", "out of range", "smaller"}},
		{"date for string", "[git]\nbin = 2024-01-01\n",
			wantErr{2, "git.bin", "2024-01-01", "is a date or time, want a string", "quote it"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkOne(t, tt.doc, tt.want)
		})
	}

	// All type errors are reported at once.
	es := parseErrors(t, "[agent]\nmetrics_addr = 1\nfail_mode = true\n[ebpf]\nenabled = 1\n")
	if len(es) != 3 || es[0].Line != 2 || es[1].Line != 3 || es[2].Line != 5 {
		t.Errorf("got %v", es)
	}
}

// TestEveryProblemAtOnce: a value of the wrong type does not hide the
// problems of the rest of the file (validate reports every one), and the
// key whose value was refused is not reported again as missing.
func TestEveryProblemAtOnce(t *testing.T) {
	doc := "[agent]\nfail_mode = \"sideways\"\n\n" +
		"[[limit]]\nname = \"a\"\nmatch = [\"upload-pack\"]\nkey = \"repo\"\nmax_per_key = -3\nmax_queue_wait = \"forever\"\n" +
		"[adaptive]\nsample_interval = 5\nbackoff_factor = 7.0\n"
	es := parseErrors(t, doc)
	var got []string
	for _, e := range es {
		got = append(got, fmt.Sprintf("%d %s", e.Line, e.Key))
	}
	want := []string{"2 agent.fail_mode", `8 limit "a".max_per_key`, `9 limit "a".max_queue_wait`,
		"11 adaptive.sample_interval", "12 adaptive.backoff_factor"}
	if !slices.Equal(got, want) {
		t.Errorf("problems (line key):\n got %q\nwant %q\n%v", got, want, es)
	}
}

// TestDecoderErrors covers problems only go-toml's decoder finds.
func TestDecoderErrors(t *testing.T) {
	tests := []struct {
		name, doc, key, fix string
		line                int
	}{
		{"duplicate key", "[agent]\nsocket = \"/a\"\nsocket = \"/b\"\n", "agent.socket", "keep one definition", 3},
		{"duplicate table", "[agent]\n[git]\n[agent]\n", "agent", "", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := parseErrors(t, tt.doc)
			if len(es) != 1 {
				t.Fatalf("got %v", es)
			}
			e := es[0]
			if e.Line != tt.line || e.Key != tt.key || !strings.Contains(e.Fix, tt.fix) || e.Fix == "" {
				t.Errorf("got %+v", e)
			}
		})
	}
}

// TestStrictErrors checks the conversion of go-toml's unknown-key report.
func TestStrictErrors(t *testing.T) {
	doc := "[agent]\n\nsockt = 1\n[[limit]]\nnme = 2\n"
	var c Config
	err := toml.NewDecoder(strings.NewReader(doc)).DisallowUnknownFields().Decode(&c)
	var sm *toml.StrictMissingError
	if !errors.As(err, &sm) {
		t.Fatalf("decode: %v", err)
	}
	es := strictErrors("f.toml", sm)
	if len(es) != 2 {
		t.Fatalf("got %v", es)
	}
	if e := es[0]; e.File != "f.toml" || e.Line != 3 || e.Key != "agent.sockt" || !strings.Contains(e.Fix, `did you mean "socket"`) {
		t.Errorf("got %+v", e)
	}
	if e := es[1]; e.Line != 5 || e.Key != "limit.nme" || !strings.Contains(e.Fix, "known keys in [[limit]]") {
		t.Errorf("got %+v", e)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist", err)
	}
	p := filepath.Join(dir, "sluice.toml")
	if err := os.WriteFile(p, []byte(rule), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != p || len(c.Limits) != 1 {
		t.Errorf("got %+v", c)
	}
	if err := os.WriteFile(p, []byte("[agent]\nfail_mode = \"x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(p)
	var es Errors
	if !errors.As(err, &es) || es[0].File != p || !strings.HasPrefix(err.Error(), p+":2: ") {
		t.Errorf("Load = %v", err)
	}
}

func TestDuration(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Duration != 90*time.Second {
		t.Errorf("UnmarshalText = %v, %v", d, err)
	}
	if err := d.UnmarshalText([]byte("30")); err == nil || !strings.Contains(err.Error(), `"30s"`) {
		t.Errorf("UnmarshalText(30) = %v, want a hint to quote a duration", err)
	}
	if err := d.UnmarshalText([]byte("later")); err == nil {
		t.Errorf("UnmarshalText(later) accepted")
	}
	b, err := Duration{90 * time.Second}.MarshalText()
	if err != nil || string(b) != "1m30s" {
		t.Errorf("MarshalText = %s, %v", b, err)
	}
}
