package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policy"
)

func write(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func validateArgs(defaultPath string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := validate(args, defaultPath, &out, &errb)
	return code, out.String(), errb.String()
}

const oneRule = `[[limit]]
name = "fetch"
match = ["upload-pack"]
key = "repo"
max_per_key = 2
max_queue_wait = "1s"
`

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	good := write(t, dir, "good.toml", oneRule+"\n"+
		strings.NewReplacer(`"fetch"`, `"archive"`, `"upload-pack"`, `"upload-archive"`).Replace(oneRule))
	bad := write(t, dir, "bad.toml", "[agent]\nfail_mode = \"maybe\"\nsockt = \"/x\"\n\n"+
		strings.Replace(oneRule, `max_queue_wait = "1s"`, `max_queue_wait = "-1s"`, 1))
	syntax := write(t, dir, "syntax.toml", "[agent\n")
	missing := filepath.Join(dir, "missing.toml")

	t.Run("valid file", func(t *testing.T) {
		code, out, errs := validateArgs(missing, good)
		if code != 0 || out != good+": ok (2 rules: fetch, archive)\n" || errs != "" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
	})
	t.Run("invalid file lists every problem", func(t *testing.T) {
		code, out, errs := validateArgs(missing, bad)
		lines := strings.Split(strings.TrimSuffix(errs, "\n"), "\n")
		want := []string{
			bad + `:2: agent: fail_mode = "maybe": must be "open" or "closed"`,
			bad + `:3: agent: sockt: unknown key; did you mean "socket"?`,
			bad + `:10: limit "fetch": max_queue_wait = "-1s": must be > 0; set a Go duration such as "1s"`,
		}
		if code != 1 || out != "" || len(lines) != len(want) {
			t.Fatalf("exit %d, stdout %q, stderr:\n%s", code, out, errs)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
			}
		}
	})
	t.Run("syntax error", func(t *testing.T) {
		code, _, errs := validateArgs(missing, syntax)
		if code != 1 || !strings.HasPrefix(errs, syntax+":1: TOML syntax") {
			t.Errorf("exit %d, stderr %q", code, errs)
		}
	})
	t.Run("named file missing", func(t *testing.T) {
		code, out, errs := validateArgs(good, missing)
		if code != 1 || out != "" || !strings.Contains(errs, "no such file") || !strings.Contains(errs, missing) {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
	})
	t.Run("default file used", func(t *testing.T) {
		code, out, errs := validateArgs(good)
		if code != 0 || out != good+": ok (2 rules: fetch, archive)\n" || errs != "" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
	})
	t.Run("default file invalid", func(t *testing.T) {
		code, _, errs := validateArgs(bad)
		if code != 1 || !strings.Contains(errs, bad+":2:") {
			t.Errorf("exit %d, stderr %q", code, errs)
		}
	})
	t.Run("default file missing falls back to the embedded policy", func(t *testing.T) {
		code, out, errs := validateArgs(missing)
		if code != 0 || out != "<default>: ok (4 rules: upload-pack, pack-objects, receive-pack, upload-archive)\n" ||
			!strings.Contains(errs, missing+" does not exist") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
	})
	t.Run("empty file", func(t *testing.T) {
		empty := write(t, dir, "empty.toml", "")
		code, out, _ := validateArgs(missing, empty)
		if code != 0 || out != empty+": ok (4 rules: upload-pack, pack-objects, receive-pack, upload-archive; the file defines no [[limit]], so the default rules apply (write limit = [] for none))\n" {
			t.Errorf("exit %d, stdout %q", code, out)
		}
	})
	t.Run("print defaults", func(t *testing.T) {
		for _, flagName := range []string{"--print-defaults", "-print-defaults"} {
			code, out, errs := validateArgs(missing, flagName)
			if code != 0 || out != string(policy.DefaultTOML()) || errs != "" {
				t.Fatalf("%s: exit %d, stderr %q", flagName, code, errs)
			}
			// What is printed is a valid policy that validates as a file.
			p := write(t, dir, "printed.toml", out)
			if code, out, errs := validateArgs(missing, p); code != 0 || !strings.HasPrefix(out, p+": ok (4 rules") {
				t.Errorf("printed defaults: exit %d, stdout %q, stderr %q", code, out, errs)
			}
		}
	})
	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{
			{good, bad},
			{"--print-defaults", good},
			{"--no-such-flag"},
		} {
			code, out, errs := validateArgs(missing, args...)
			if code != 2 || out != "" || errs == "" {
				t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
			}
		}
	})
	t.Run("through run", func(t *testing.T) {
		code, out, _ := runArgs("validate", good)
		if code != 0 || !strings.HasSuffix(out, ": ok (2 rules: fetch, archive)\n") {
			t.Errorf("exit %d, stdout %q", code, out)
		}
		if code, _, _ := runArgs("validate", bad); code != 1 {
			t.Errorf("invalid file: exit %d, want 1", code)
		}
	})
}
