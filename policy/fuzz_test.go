package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that what it accepts is valid,
// and that what it rejects comes as one-line Errors naming the file.
func FuzzParse(f *testing.F) {
	f.Add(DefaultTOML())
	f.Add([]byte(rule))
	f.Add([]byte("[agent]\nsockt = 1\n[[limit]]\nmax_queue_wait = 30\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err == nil {
			if c == nil {
				t.Fatal("nil Config without error")
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("accepted policy does not validate: %v", err)
			}
			for _, s := range c.MatchedSubcommands() {
				if c.LimitFor(s) == nil {
					t.Fatalf("no rule for matched subcommand %q", s)
				}
			}
			return
		}
		if c != nil {
			t.Fatal("Config returned with an error")
		}
		var es Errors
		if !errors.As(err, &es) || len(es) == 0 {
			t.Fatalf("error is not Errors: %#v", err)
		}
		for _, e := range es {
			msg := e.Error()
			if e.File != "fuzz.toml" || !strings.HasPrefix(msg, "fuzz.toml") || e.Problem == "" {
				t.Fatalf("bad error %+v", e)
			}
			if strings.Contains(msg, "\n") {
				t.Fatalf("multi-line error %q", msg)
			}
		}
	})
}

// TestFuzzSeeds keeps the committed corpus meaningful: valid-* seeds parse,
// invalid-* seeds do not.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("empty seed corpus")
	}
	for _, ent := range entries {
		raw, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		body, ok := strings.CutPrefix(string(raw), "go test fuzz v1\n[]byte(")
		body, ok2 := strings.CutSuffix(strings.TrimSpace(body), ")")
		data, err := strconv.Unquote(body)
		if !ok || !ok2 || err != nil {
			t.Fatalf("%s: not a []byte seed", ent.Name())
		}
		_, err = Parse(ent.Name(), []byte(data))
		switch {
		case strings.HasPrefix(ent.Name(), "valid-") && err != nil:
			t.Errorf("%s: %v", ent.Name(), err)
		case strings.HasPrefix(ent.Name(), "invalid-") && err == nil:
			t.Errorf("%s: accepted", ent.Name())
		}
	}
}
