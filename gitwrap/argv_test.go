package gitwrap

import (
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name  string
		argv  []string
		want  Invocation
		wantA []string // Args
	}{
		// PLATFORM.md: what each transport runs.
		{"git daemon", []string{"git", "upload-pack", "--strict", "--timeout=0", "."},
			Invocation{Command: "git", Subcommand: "upload-pack", SubArgs: []string{"--strict", "--timeout=0", "."}},
			[]string{"upload-pack", "--strict", "--timeout=0", "."}},
		{"ssh", []string{"/usr/bin/git-upload-pack", "/srv/git/a.git"},
			Invocation{Command: "git-upload-pack", Subcommand: "upload-pack", SubArgs: []string{"/srv/git/a.git"}},
			[]string{"upload-pack", "/srv/git/a.git"}},
		{"ssh receive-pack", []string{"git-receive-pack", "a.git"},
			Invocation{Command: "git-receive-pack", Subcommand: "receive-pack", SubArgs: []string{"a.git"}},
			[]string{"receive-pack", "a.git"}},
		{"http", []string{"git", "upload-pack", "--stateless-rpc", "."},
			Invocation{Command: "git", Subcommand: "upload-pack", SubArgs: []string{"--stateless-rpc", "."}},
			[]string{"upload-pack", "--stateless-rpc", "."}},
		{"file", []string{"git-upload-pack", "/abs/path"},
			Invocation{Command: "git-upload-pack", Subcommand: "upload-pack", SubArgs: []string{"/abs/path"}},
			[]string{"upload-pack", "/abs/path"}},
		{"upload-archive", []string{"git-upload-archive", "/r"},
			Invocation{Command: "git-upload-archive", Subcommand: "upload-archive", SubArgs: []string{"/r"}},
			[]string{"upload-archive", "/r"}},
		// uploadpack.packObjectsHook.
		{"hook", []string{"/usr/bin/sluice-shim", "git", "pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset"},
			Invocation{Command: "sluice-shim", Subcommand: "pack-objects", Hook: true, SubArgs: []string{"--revs", "--thin", "--stdout", "--delta-base-offset"}},
			[]string{"pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset"}},
		{"hook shallow", []string{"sluice-shim", "git", "--shallow-file", "", "pack-objects", "--revs", "--thin", "--stdout", "--shallow", "--delta-base-offset", "--include-tag"},
			Invocation{Command: "sluice-shim", Subcommand: "pack-objects", Hook: true, SubArgs: []string{"--revs", "--thin", "--stdout", "--shallow", "--delta-base-offset", "--include-tag"}},
			[]string{"--shallow-file", "", "pack-objects", "--revs", "--thin", "--stdout", "--shallow", "--delta-base-offset", "--include-tag"}},
		{"hook filter", []string{"sluice-shim", "git", "pack-objects", "--revs", "--filter=blob:none"},
			Invocation{Command: "sluice-shim", Subcommand: "pack-objects", Hook: true, SubArgs: []string{"--revs", "--filter=blob:none"}},
			[]string{"pack-objects", "--revs", "--filter=blob:none"}},
		{"not a hook: git pack-objects", []string{"git", "pack-objects", "--stdout"},
			Invocation{Command: "git", Subcommand: "pack-objects", SubArgs: []string{"--stdout"}},
			[]string{"pack-objects", "--stdout"}},
		// Global options.
		{"-C chain and -c", []string{"git", "-C", "/srv", "-C", "git", "-c", "a.b=c", "-C", "", "upload-pack", "x"},
			Invocation{Command: "git", Subcommand: "upload-pack", ChdirOpts: []string{"/srv", "git", ""}, SubArgs: []string{"x"}},
			[]string{"-C", "/srv", "-C", "git", "-c", "a.b=c", "-C", "", "upload-pack", "x"}},
		{"--git-dir separate", []string{"git", "--git-dir", "/r.git", "rev-parse", "HEAD"},
			Invocation{Command: "git", Subcommand: "rev-parse", GitDirOpt: "/r.git", SubArgs: []string{"HEAD"}},
			[]string{"--git-dir", "/r.git", "rev-parse", "HEAD"}},
		{"--git-dir= and others", []string{"git", "--git-dir=a", "--work-tree=b", "--namespace", "n", "--bare", "--no-pager", "-p", "--exec-path=/x", "--config-env=a.b=C", "--literal-pathspecs", "--no-optional-locks", "gc"},
			Invocation{Command: "git", Subcommand: "gc", GitDirOpt: "a", SubArgs: []string{}},
			[]string{"--git-dir=a", "--work-tree=b", "--namespace", "n", "--bare", "--no-pager", "-p", "--exec-path=/x", "--config-env=a.b=C", "--literal-pathspecs", "--no-optional-locks", "gc"}},
		// Not understood: unmatched, argv untouched.
		{"unknown option", []string{"git", "--frobnicate", "upload-pack", "."},
			Invocation{Command: "git"}, []string{"--frobnicate", "upload-pack", "."}},
		{"git --version", []string{"git", "--version"}, Invocation{Command: "git"}, []string{"--version"}},
		{"--exec-path alone", []string{"git", "--exec-path"}, Invocation{Command: "git"}, []string{"--exec-path"}},
		{"missing value", []string{"git", "-C"}, Invocation{Command: "git"}, []string{"-C"}},
		{"no subcommand", []string{"git"}, Invocation{Command: "git"}, []string{}},
		{"empty subcommand", []string{"git", ""}, Invocation{Command: "git"}, []string{""}},
		{"shim --version", []string{"sluice-shim", "--version"}, Invocation{Command: "sluice-shim", ShimVersion: true}, nil},
		{"shim other", []string{"sluice-shim", "status"}, Invocation{Command: "sluice-shim"}, []string{"status"}},
		{"empty argv", nil, Invocation{}, nil},
		{"weird bytes", []string{"git-upload-pack", "/srv/\xff\xfe/r"},
			Invocation{Command: "git-upload-pack", Subcommand: "upload-pack", SubArgs: []string{"/srv/\xff\xfe/r"}},
			[]string{"upload-pack", "/srv/\xff\xfe/r"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Parse(c.argv)
			if got.Command != c.want.Command || got.Subcommand != c.want.Subcommand || got.Hook != c.want.Hook ||
				got.GitDirOpt != c.want.GitDirOpt || got.ShimVersion != c.want.ShimVersion ||
				!slices.Equal(got.ChdirOpts, c.want.ChdirOpts) || !slices.Equal(got.SubArgs, c.want.SubArgs) ||
				!slices.Equal(got.Args, c.wantA) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v args %q", c.argv, got, c.want, c.wantA)
			}
			if c.want.Subcommand == "" && c.want.Command == "git" && !slices.Equal(GitArgv(&got)[1:], c.argv[1:]) {
				t.Errorf("unmatched argv not passed through untouched: %q", GitArgv(&got))
			}
		})
	}
}
