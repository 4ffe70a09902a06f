package policy

import (
	"strings"
	"testing"
	"time"
)

func TestPackCacheDefaults(t *testing.T) {
	c, err := Parse("sluice.toml", []byte(rule))
	if err != nil {
		t.Fatal(err)
	}
	p := c.PackCache
	if p.Enabled || p.Dir != "/var/cache/sluice/packs" || p.MaxAge.Duration != 5*time.Minute || p.MaxBytes != 10<<30 || p.MinOccurrences != 1 {
		t.Fatalf("defaults: %+v", p)
	}
	d := Default().PackCache
	if d != p {
		t.Fatalf("Default() %+v differs from a file without [pack_cache] %+v", d, p)
	}
	c, err = Parse("sluice.toml", []byte(rule+"[pack_cache]\nenabled = true\ndir = \"/srv/cache\"\nmax_age = \"10m\"\nmax_bytes = 1048576\nmin_occurrences = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p := c.PackCache; !p.Enabled || p.Dir != "/srv/cache" || p.MaxAge.Duration != 10*time.Minute || p.MaxBytes != 1<<20 || p.MinOccurrences != 2 {
		t.Fatalf("parsed: %+v", p)
	}
}

func TestPackCacheValidation(t *testing.T) {
	for _, c := range []struct {
		line, key, problem, fix string
	}{
		{`dir = "cache"`, "dir", "must be an absolute path", "/var/cache/sluice/packs"},
		{`dir = "/tmp"`, "dir", "a directory of its own", "dedicated directory"},
		{`max_age = "0s"`, "max_age", "between 1s and 24h", `"5m"`},
		{`max_age = "48h"`, "max_age", "between 1s and 24h", `"5m"`},
		{`max_bytes = 1000`, "max_bytes", "1 MiB", "10737418240"},
		{`min_occurrences = 0`, "min_occurrences", "between 1 and 100", "set 1"},
	} {
		es := parseErrors(t, rule+"[pack_cache]\n"+c.line+"\n")
		if len(es) != 1 {
			t.Fatalf("%s: %d errors: %v", c.line, len(es), es)
		}
		e := es[0]
		msg := e.Error()
		if e.Line != 9 || !strings.Contains(msg, "pack_cache") || !strings.Contains(msg, c.key) ||
			!strings.Contains(e.Problem, c.problem) || !strings.Contains(e.Fix, c.fix) || !strings.HasPrefix(msg, "sluice.toml:9: ") {
			t.Errorf("%s: got %q (line %d, problem %q, fix %q)", c.line, msg, e.Line, e.Problem, e.Fix)
		}
	}
}
