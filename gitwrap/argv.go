package gitwrap

import "strings"

// Invocation is what the shim understood of its argv.
type Invocation struct {
	// Command is the basename the shim was run as: "git", "git-upload-pack",
	// "sluice-shim", …
	Command string
	// Subcommand is the git subcommand ("upload-pack", "pack-objects", …);
	// "" when the shim did not understand argv (unmatched: pass to git).
	Subcommand string
	// Args are the arguments for the real git, argv[0] excluded, always in
	// `[global options] <subcommand> args…` form.
	Args []string
	// SubArgs are the arguments after the subcommand (a tail of Args).
	SubArgs []string
	// Hook is true in uploadpack.packObjectsHook mode
	// (`sluice-shim git [--shallow-file X] pack-objects …`).
	Hook bool
	// GitDirOpt is the last --git-dir value, "" when none was given.
	GitDirOpt string
	// ChdirOpts are the -C values in order ("" values included; git ignores them).
	ChdirOpts []string
	// ShimVersion is true for `sluice-shim --version`.
	ShimVersion bool
}

// Global option tables are switches, not maps: no init cost, nothing mutable.

// optWithValue reports options that take the next argument.
func optWithValue(arg string) bool {
	switch arg {
	case "-C", "-c", "--git-dir", "--work-tree", "--namespace", "--super-prefix",
		"--config-env", "--shallow-file", "--attr-source":
		return true
	}
	return false
}

// optFlag reports options without a value.
func optFlag(arg string) bool {
	switch arg {
	case "--bare", "-p", "--paginate", "-P", "--no-pager", "--no-replace-objects",
		"--literal-pathspecs", "--no-literal-pathspecs", "--glob-pathspecs",
		"--noglob-pathspecs", "--icase-pathspecs", "--no-optional-locks",
		"--no-lazy-fetch", "--no-advice":
		return true
	}
	return false
}

// optEq returns the option name with "=" when arg is one of the --opt=value
// forms git accepts, else "".
func optEq(arg string) string {
	i := strings.IndexByte(arg, '=')
	if i < 0 {
		return ""
	}
	switch arg[:i+1] {
	case "--git-dir=", "--work-tree=", "--namespace=", "--super-prefix=",
		"--config-env=", "--attr-source=", "--exec-path=":
		return arg[:i+1]
	}
	return ""
}

// Parse interprets argv (os.Args). It never fails: what it does not
// understand has Subcommand "" and Args that hand argv to git untouched.
func Parse(argv []string) Invocation {
	var inv Invocation
	if len(argv) == 0 {
		return inv
	}
	inv.Command = basename(argv[0])
	switch {
	case inv.Command == "git":
		inv.Args = argv[1:]
		inv.parseGlobal()
	case strings.HasPrefix(inv.Command, "git-") && len(inv.Command) > len("git-"):
		inv.Subcommand = inv.Command[len("git-"):]
		inv.Args = make([]string, 0, len(argv))
		inv.Args = append(append(inv.Args, inv.Subcommand), argv[1:]...)
		inv.SubArgs = inv.Args[1:]
	case len(argv) == 2 && argv[1] == "--version":
		inv.ShimVersion = true
	case len(argv) >= 2 && argv[1] == "git":
		inv.Args = argv[2:]
		inv.parseGlobal()
		inv.Hook = inv.Subcommand == "pack-objects"
	default:
		inv.Args = argv[1:]
	}
	return inv
}

// parseGlobal walks git's global options in inv.Args up to the subcommand.
func (inv *Invocation) parseGlobal() {
	a := inv.Args
	for i := 0; i < len(a); i++ {
		arg := a[i]
		if arg == "" || arg[0] != '-' {
			inv.Subcommand = arg
			inv.SubArgs = a[i+1:]
			if arg == "" {
				inv.Subcommand = ""
			}
			return
		}
		if optWithValue(arg) {
			if i+1 >= len(a) {
				break
			}
			i++
			switch arg {
			case "-C":
				inv.ChdirOpts = append(inv.ChdirOpts, a[i])
			case "--git-dir":
				inv.GitDirOpt = a[i]
			}
			continue
		}
		if optFlag(arg) {
			continue
		}
		if eq := optEq(arg); eq != "" {
			if eq == "--git-dir=" {
				inv.GitDirOpt = arg[len(eq):]
			}
			continue
		}
		break // unknown option, --version, --help, --exec-path alone, …
	}
	inv.Subcommand, inv.SubArgs, inv.GitDirOpt, inv.ChdirOpts = "", nil, "", nil
}

func basename(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
