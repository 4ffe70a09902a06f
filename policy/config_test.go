package policy

import (
	"reflect"
	"testing"
	"time"
)

func TestKeyFor(t *testing.T) {
	full := KeyInput{Repo: []byte("/srv/git/a.git"), RemoteIP: "192.0.2.1", User: "alice"}
	tests := []struct {
		key  string
		in   KeyInput
		want string
	}{
		{"repo", full, "/srv/git/a.git"},
		{"remote_ip", full, "192.0.2.1"},
		{"user", full, "alice"},
		{"global", full, "global"},
		{"global", KeyInput{}, "global"},
		{"repo", KeyInput{}, "unknown"},
		{"remote_ip", KeyInput{Repo: []byte("/r")}, "unknown"},
		{"user", KeyInput{Repo: []byte("/r")}, "unknown"},
		{"repo+remote_ip", full, "/srv/git/a.git\x1f192.0.2.1"},
		{"remote_ip+repo", full, "192.0.2.1\x1f/srv/git/a.git"},
		{"repo+remote_ip+user", full, "/srv/git/a.git\x1f192.0.2.1\x1falice"},
		{"repo+user", KeyInput{Repo: []byte("/r")}, "/r\x1funknown"},
		{"repo+remote_ip", KeyInput{RemoteIP: "::ffff:192.0.2.9"}, "unknown\x1f192.0.2.9"},
		{"repo", KeyInput{Repo: []byte("/srv/\xff.git")}, "/srv/\xff.git"},
	}
	for _, tt := range tests {
		// Parsed: the split key comes from Validate.
		c, err := Parse("k.toml", []byte(`[[limit]]
name = "x"
match = ["upload-pack"]
key = "`+tt.key+`"
max_per_key = 1
max_queue_wait = "1s"
`))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Limits[0].KeyFor(tt.in); got != tt.want {
			t.Errorf("parsed %q: KeyFor(%+v) = %q, want %q", tt.key, tt.in, got, tt.want)
		}
		// Built by hand: the key is split on use.
		l := Limit{Key: tt.key}
		if got := l.KeyFor(tt.in); got != tt.want {
			t.Errorf("by hand %q: KeyFor(%+v) = %q, want %q", tt.key, tt.in, got, tt.want)
		}
	}
	// Different repositories get different keys.
	l := Default().LimitFor("upload-pack")
	if l.KeyFor(KeyInput{Repo: []byte("/a")}) == l.KeyFor(KeyInput{Repo: []byte("/b")}) {
		t.Error("two repositories share a key")
	}
}

func TestLimitFor(t *testing.T) {
	c, err := Parse("m.toml", []byte(`[[limit]]
name = "fetch"
match = ["upload-pack", "pack-objects"]
key = "repo"
max_per_key = 1
max_queue_wait = "5s"

[[limit]]
name = "push"
match = ["receive-pack"]
key = "user"
queue_order = "lifo"
adaptive = true
min_limit = 2
initial_limit = 4
max_limit = 8
max_queue_wait = "90s"
`))
	if err != nil {
		t.Fatal(err)
	}
	for sub, want := range map[string]*Limit{
		"upload-pack":    &c.Limits[0],
		"pack-objects":   &c.Limits[0],
		"receive-pack":   &c.Limits[1],
		"upload-archive": nil,
		"":               nil,
		"Upload-Pack":    nil,
	} {
		if got := c.LimitFor(sub); got != want {
			t.Errorf("LimitFor(%q) = %v, want %v", sub, got, want)
		}
	}
	if got, want := c.MatchedSubcommands(), []string{"pack-objects", "receive-pack", "upload-pack"}; !reflect.DeepEqual(got, want) {
		t.Errorf("MatchedSubcommands = %v, want %v", got, want)
	}
	if got := c.MaxQueueWait(); got != 90*time.Second {
		t.Errorf("MaxQueueWait = %v", got)
	}
	if got := c.RuleNames(); !reflect.DeepEqual(got, []string{"fetch", "push"}) {
		t.Errorf("RuleNames = %v", got)
	}
	fetch, push := &c.Limits[0], &c.Limits[1]
	if fetch.Order() != QueueFIFO || push.Order() != QueueLIFO {
		t.Errorf("Order = %q, %q", fetch.Order(), push.Order())
	}
	if fetch.Limit() != 1 || push.Limit() != 4 {
		t.Errorf("Limit = %d, %d, want 1, 4", fetch.Limit(), push.Limit())
	}

	// A Config built by hand (no Validate) still matches.
	hand := &Config{Limits: []Limit{{Name: "a", Match: []string{"upload-archive"}}}}
	if hand.LimitFor("upload-archive") != &hand.Limits[0] || hand.LimitFor("upload-pack") != nil {
		t.Error("LimitFor on an unvalidated Config")
	}
	if (&Limit{}).Order() != QueueFIFO {
		t.Error("zero QueueOrder is not fifo")
	}

	empty := &Config{}
	if empty.MaxQueueWait() != 0 || len(empty.MatchedSubcommands()) != 0 || empty.LimitFor("upload-pack") != nil {
		t.Error("empty Config")
	}
}
