package gitwrap

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// splitArgv turns a fuzz string into an argv: arguments separated by NUL,
// as they are in /proc/PID/cmdline.
func splitArgv(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

// envFunc turns "K=V\n…" into a getenv.
func envFunc(s string) Env {
	m := map[string]string{}
	for _, kv := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if _, dup := m[k]; !dup {
				m[k] = v
			}
		}
	}
	return func(k string) string { return m[k] }
}

// FuzzParse checks that Parse never panics and never changes what git is
// asked to do: the argv handed to the real git is argv itself, re-spelled
// only for the git-<subcommand> form and minus "sluice-shim" in hook mode.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"git\x00upload-pack\x00--strict\x00--timeout=0\x00.",
		"/usr/bin/git-upload-pack\x00/srv/git/a.git",
		"git-receive-pack\x00a.git",
		"sluice-shim\x00git\x00--shallow-file\x00\x00pack-objects\x00--revs\x00--stdout",
		"git\x00-C\x00/srv\x00--git-dir=x.git\x00-c\x00a=b\x00upload-pack\x00.",
		"git\x00--git-dir\x00",
		"sluice-shim\x00--version",
		"git-\x00x",
		"git\x00\x00upload-pack",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		argv := splitArgv(s)
		inv := Parse(argv)
		if len(argv) == 0 {
			return
		}
		if want := argv[0][strings.LastIndexByte(argv[0], '/')+1:]; inv.Command != want {
			t.Fatalf("Command %q for argv[0] %q, want %q", inv.Command, argv[0], want)
		}
		if inv.ShimVersion {
			return
		}
		var want []string
		switch {
		case inv.Command == "git":
			want = argv[1:]
		case strings.HasPrefix(inv.Command, "git-") && len(inv.Command) > 4:
			want = append([]string{inv.Command[4:]}, argv[1:]...)
		case len(argv) >= 2 && argv[1] == "git":
			want = argv[2:]
		default:
			want = argv[1:]
		}
		if !slices.Equal(inv.Args, want) {
			t.Fatalf("Args %q, want %q", inv.Args, want)
		}
		if got := GitArgv(&inv); got[0] != "git" || !slices.Equal(got[1:], want) {
			t.Fatalf("GitArgv %q", got)
		}
		if inv.Subcommand != "" {
			i := len(inv.Args) - len(inv.SubArgs) - 1
			if i < 0 || inv.Args[i] != inv.Subcommand || !slices.Equal(inv.Args[i+1:], inv.SubArgs) {
				t.Fatalf("Subcommand %q SubArgs %q not a tail of Args %q", inv.Subcommand, inv.SubArgs, inv.Args)
			}
		}
		if inv.Hook && inv.Subcommand != "pack-objects" {
			t.Fatalf("hook mode for %q", inv.Subcommand)
		}
	})
}

// FuzzRepo checks that the repository the shim reports is always an
// absolute, clean path, whatever argv, working directory and environment.
// (One trailing "/.git" is removed, so "x/.git/.git", which git would not
// enter, is reported as "x/.git": the first run of this target found that
// case, kept in testdata as a seed; it is not a defect.)
func FuzzRepo(f *testing.F) {
	f.Add("git-upload-pack\x00~/a.git", "/home/x", "HOME=/home/x")
	f.Add("git\x00-C\x00sub\x00-C\x00\x00--git-dir=../.git\x00pack-objects", "/srv", "GIT_DIR=/elsewhere")
	f.Add("git-receive-pack\x00~root/r", "/", "")
	f.Add("git-upload-pack\x00--strict\x00--\x00--x", "/srv/", "HOME=rel")
	f.Add("git\x00upload-pack\x00/.git", "/", "")
	f.Fuzz(func(t *testing.T, argv, cwd, env string) {
		if !strings.HasPrefix(cwd, "/") {
			cwd = "/" + cwd // getcwd(2) is always absolute
		}
		inv := Parse(splitArgv(argv))
		p := Repo(&inv, cwd, envFunc(env))
		if p == "" || p[0] != '/' || filepath.Clean(p) != p {
			t.Fatalf("Repo(%q, cwd %q) = %q: not absolute and clean", argv, cwd, p)
		}
	})
}

// FuzzEnv checks what the shim reads from the server's environment:
// RemoteIP is "" or a canonical address, CorrelationID keeps a given id
// and generates a well-formed one otherwise, User never panics.
func FuzzEnv(f *testing.F) {
	f.Add("SSH_CONNECTION=192.0.2.1 4711 192.0.2.2 22\nUSER=git")
	f.Add("REMOTE_ADDR=[2001:db8::1]:443\nREMOTE_USER=alice\nCORRELATION_ID=abc")
	f.Add("SSH_CLIENT=  fe80::1%eth0 1 22\nGL_USERNAME=bob")
	f.Add("REMOTE_ADDR=::ffff:192.0.2.1\nGITEA_PUSHER_NAME=c")
	f.Add("SSH_CONNECTION=x\nLOGNAME=l")
	f.Fuzz(func(t *testing.T, env string) {
		getenv := envFunc(env)
		if ip := RemoteIP(getenv); ip != "" {
			a, err := netip.ParseAddr(ip)
			if err != nil || a.String() != ip || a.Is4In6() || a.Zone() != "" {
				t.Fatalf("RemoteIP = %q: not a canonical address (%v)", ip, err)
			}
		}
		_ = User(getenv)
		id, gen := CorrelationID(getenv)
		if v := getenv(CorrelationEnv); v != "" {
			if gen || id != v {
				t.Fatalf("CorrelationID = %q, %v; want the given %q", id, gen, v)
			}
		} else if !gen || len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("generated CorrelationID %q", id)
		}
	})
}
