package policy

import (
	"strings"
	"testing"
)

func TestClientNetworkKeys(t *testing.T) {
	c := Default()
	r := c.LimitFor("pack-objects") // key = "remote_ip"
	for _, tt := range []struct{ ip, want string }{
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:bbbb::7", "2001:db8:1:2::/64"}, // rotating inside the /64: one key
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"", "unknown"},
	} {
		if got := r.KeyFor(KeyInput{RemoteIP: tt.ip}); got != tt.want {
			t.Errorf("default remote_ip key of %q = %q, want %q", tt.ip, got, tt.want)
		}
		if got := c.FairKeyFor(KeyInput{RemoteIP: tt.ip}); got != tt.want {
			t.Errorf("default fair key of %q = %q, want %q", tt.ip, got, tt.want)
		}
	}
	c, err := Parse("k.toml", []byte("[keys]\nipv4_prefix = 24\nipv6_prefix = 48\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.FairKeyFor(KeyInput{RemoteIP: "198.51.100.77"}); got != "198.51.100.0/24" {
		t.Errorf("ipv4_prefix 24: %q", got)
	}
	if got := c.LimitFor("pack-objects").KeyFor(KeyInput{RemoteIP: "2001:db8:1:2::1"}); got != "2001:db8:1::/48" {
		t.Errorf("ipv6_prefix 48: %q", got)
	}
}

func TestClassesAndWeights(t *testing.T) {
	c, err := Parse("w.toml", []byte(`
[budget]
fair_key = "user"
default_weight = 2

[[class]]
name = "ci"
weight = 1
users = ["ci-bot"]
networks = ["10.0.0.0/8", "2001:db8::/32"]

[[class]]
name = "people"
weight = 4
networks = ["192.0.2.0/24"]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		in   KeyInput
		want int
	}{
		{KeyInput{User: "ci-bot", RemoteIP: "192.0.2.1"}, 1}, // first class wins
		{KeyInput{RemoteIP: "10.1.2.3"}, 1},
		{KeyInput{RemoteIP: "::ffff:10.1.2.3"}, 1},
		{KeyInput{RemoteIP: "2001:db8::5"}, 1},
		{KeyInput{RemoteIP: "192.0.2.9", User: "alice"}, 4},
		{KeyInput{RemoteIP: "203.0.113.1"}, 2},
		{KeyInput{}, 2},
	} {
		if got := c.WeightFor(tt.in); got != tt.want {
			t.Errorf("WeightFor(%+v) = %d, want %d", tt.in, got, tt.want)
		}
	}
	if got := c.FairKeyFor(KeyInput{User: "alice", RemoteIP: "192.0.2.9"}); got != "alice" {
		t.Errorf("fair_key user: %q", got)
	}
}

func TestBudgetValidation(t *testing.T) {
	_, err := Parse("bad.toml", []byte(`
[budget]
fair_key = "address"
pack = -1
default_weight = 0
[keys]
ipv6_prefix = 129
ipv4_prefix = 0
[[class]]
name = "ci"
weight = 0
networks = ["10.0.0.0/33"]
[[class]]
name = "ci"
weight = 1
`))
	if err == nil {
		t.Fatal("bad budget accepted")
	}
	for _, want := range []string{
		`fair_key = "address"`, "pack = -1", "default_weight = 0",
		"ipv6_prefix = 129", "ipv4_prefix = 0", `"10.0.0.0/33" is not a network`,
		"names two classes", "matches nobody", "class[0]: weight = 0",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}

// TestDefaultBudget: the embedded default policy turns the budget on with
// nothing fixed (every limit derived from the host), fair shares by client
// network, and says so in the same numbers as defaults().
func TestDefaultBudget(t *testing.T) {
	c, d := Default(), defaults()
	b := c.Budget
	if !b.Enabled || b.FairKey != KeyRemoteIP || b.Pack != 0 || b.UploadPack != 0 || b.ReceivePack != 0 || b.DefaultWeight != 1 {
		t.Errorf("default [budget] = %+v", b)
	}
	if b.Enabled != d.Budget.Enabled || b.FairKey != d.Budget.FairKey || b.DefaultWeight != d.Budget.DefaultWeight {
		t.Errorf("default.toml [budget] %+v and defaults() %+v disagree", b, d.Budget)
	}
	if c.Keys != d.Keys || c.Keys.IPv6Prefix != 64 || c.Keys.IPv4Prefix != 32 || len(c.Classes) != 0 {
		t.Errorf("default [keys] %+v (code %+v), classes %v", c.Keys, d.Keys, c.Classes)
	}
	// A file that leaves [budget] out gets the same.
	c2, err := Parse("x.toml", []byte("[agent]\nfail_mode = \"open\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Budget.Enabled || c2.Budget.FairKey != KeyRemoteIP || c2.FairKeyFor(KeyInput{RemoteIP: "2001:db8::1"}) != "2001:db8::/64" {
		t.Errorf("a file without [budget]: %+v", c2.Budget)
	}
}

func TestBudgetClassFor(t *testing.T) {
	for sub, want := range map[string]string{"pack-objects": ClassPack, "upload-archive": ClassPack, "upload-pack": ClassUploadPack, "receive-pack": ClassReceivePack, "rev-list": ""} {
		if got := BudgetClassFor(sub); got != want {
			t.Errorf("BudgetClassFor(%q) = %q, want %q", sub, got, want)
		}
	}
}

// TestRulesCompose: two rules may match one subcommand (a per-address cap
// and a per-repository cap); LimitsFor returns both in file order and
// LimitFor the first.
func TestRulesCompose(t *testing.T) {
	c, err := Parse("compose.toml", []byte(`
[[limit]]
name = "pack-per-address"
match = ["pack-objects"]
key = "remote_ip"
max_per_key = 4
max_queue_wait = "30s"
max_queue_size = 10

[[limit]]
name = "pack-per-repo"
match = ["pack-objects", "upload-archive"]
key = "repo"
max_per_key = 2
max_queue_wait = "10s"
max_queue_size = 10
`))
	if err != nil {
		t.Fatal(err)
	}
	rs := c.LimitsFor("pack-objects")
	if len(rs) != 2 || rs[0].Name != "pack-per-address" || rs[1].Name != "pack-per-repo" || c.LimitFor("pack-objects") != rs[0] {
		t.Fatalf("LimitsFor(pack-objects) = %v", rs)
	}
	if rs := c.LimitsFor("upload-archive"); len(rs) != 1 || rs[0].Name != "pack-per-repo" {
		t.Fatalf("LimitsFor(upload-archive) = %v", rs)
	}
	if rs := c.LimitsFor("receive-pack"); len(rs) != 0 || c.LimitFor("receive-pack") != nil {
		t.Fatalf("LimitsFor(receive-pack) = %v", rs)
	}
}
