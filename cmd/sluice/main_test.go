package main

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

func runArgs(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRunDispatch(t *testing.T) {
	tests := []struct {
		args      []string
		code      int
		out, errs string // substrings; "" means must be empty
	}{
		{nil, 2, "", "usage: sluice <command>"},
		{[]string{"help"}, 0, "validate   check a policy file", ""},
		{[]string{"--help"}, 0, "version    print the version", ""},
		{[]string{"-h"}, 0, "usage: sluice <command>", ""},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"help", "frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"help", "validate"}, 0, "usage: sluice validate [FILE]", ""},
		{[]string{"validate", "-h"}, 0, "-print-defaults", ""},
		{[]string{"version", "-h"}, 0, "usage: sluice version", ""},
		{[]string{"version", "--nope"}, 2, "", "flag provided but not defined: -nope"},
		{[]string{"version", "extra"}, 2, "", "takes no arguments"},
		{[]string{"version"}, 0, "sluice dev " + runtime.Version(), ""},
	}
	for _, tt := range tests {
		code, out, errs := runArgs(tt.args...)
		if code != tt.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tt.args, code, tt.code, errs)
		}
		for _, c := range []struct{ name, got, want string }{{"stdout", out, tt.out}, {"stderr", errs, tt.errs}} {
			if c.want == "" && c.got != "" {
				t.Errorf("%q: %s = %q, want empty", tt.args, c.name, c.got)
			}
			if !strings.Contains(c.got, c.want) {
				t.Errorf("%q: %s = %q, want it to contain %q", tt.args, c.name, c.got, c.want)
			}
		}
	}
}

func TestCommandsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands {
		if c.name == "" || c.summary == "" || c.run == nil || seen[c.name] || c.name == "help" {
			t.Errorf("bad command entry %+v", c)
		}
		seen[c.name] = true
		// Every command answers -h on stdout with exit 0.
		var out, errb bytes.Buffer
		if code := c.run([]string{"-h"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "usage: sluice "+c.name) || errb.Len() != 0 {
			t.Errorf("%s -h: exit %d, stdout %q, stderr %q", c.name, code, out.String(), errb.String())
		}
	}
}
