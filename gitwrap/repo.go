package gitwrap

import (
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// Env looks up an environment variable; os.Getenv satisfies it.
type Env func(key string) string

// passwdFile is where ~user is looked up.
const passwdFile = "/etc/passwd"

// Repo returns the repository the invocation works on: absolute, cleaned,
// without a trailing "/.git" (see the package doc for the rules). cwd is the
// working directory the shim was started in.
func Repo(inv *Invocation, cwd string, getenv Env) string {
	return repo(inv, cwd, getenv, passwdFile)
}

func repo(inv *Invocation, cwd string, getenv Env, passwd string) string {
	dir := cwd
	for _, c := range inv.ChdirOpts {
		if c != "" {
			dir = join(dir, c)
		}
	}
	var p string
	switch inv.Subcommand {
	case "upload-pack", "receive-pack", "upload-archive":
		arg, strict := dirArg(inv.SubArgs)
		if inv.Subcommand != "upload-pack" {
			strict = false // receive-pack and upload-archive always enter_repo(dir, 0)
		}
		if arg == "" {
			p = dir
			break
		}
		if !strict && arg[0] == '~' {
			arg = expandHome(arg, getenv, passwd)
		}
		p = join(dir, arg)
		if !strict {
			p = probeGitDir(p)
		}
	default:
		gd := inv.GitDirOpt
		if gd == "" {
			gd = getenv("GIT_DIR")
		}
		p = dir
		if gd != "" {
			p = join(dir, gd)
		}
	}
	return stripDotGit(physical(p))
}

// physical returns the path the kernel resolves p to — symlinks followed,
// each ".." taken from where the path before it really is, as git's
// chdir() into the repository does — so that every spelling of one
// repository (a symlinked path, ".." across a symlink, "~/" with a
// symlinked HOME) gives one key. A path that does not resolve (not there,
// not searchable) is cleaned lexically instead.
//
// The key is computed before git opens the repository: a local user who
// can swap a symlink in between changes only which key their own request
// is counted under, and such a user can run git without sluice anyway.
func physical(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}

// dirArg returns the non-option argument (everything after "--" is one;
// git's parse-options lets options follow it, and `--timeout N` takes the
// next argument as its value) and whether --strict was given.
func dirArg(args []string) (dir string, strict bool) {
	opts := true
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case opts && a == "--":
			opts = false
		case opts && a == "--strict":
			strict = true
		case opts && a == "--no-strict":
			strict = false
		case opts && a == "--timeout":
			i++ // its value
		case opts && strings.HasPrefix(a, "-"):
		default:
			dir = a
		}
	}
	return dir, strict
}

// join resolves p against dir without cleaning: ".." must be resolved by
// physical, after the symlinks before it.
func join(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return dir + "/" + p
}

// stripDotGit removes one trailing "/.git" from a cleaned path.
func stripDotGit(p string) string {
	if p == "/.git" {
		return "/"
	}
	if strings.HasSuffix(p, "/.git") {
		return p[:len(p)-len("/.git")]
	}
	return p
}

// probeGitDir tries the suffixes git's enter_repo tries, in its order, and
// returns the first that is a git directory (or a gitfile), else p.
func probeGitDir(p string) string {
	for _, suffix := range [...]string{"/.git", "", ".git/.git", ".git"} {
		c := p + suffix
		var st syscall.Stat_t
		if syscall.Stat(c, &st) != nil {
			continue
		}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG: // a gitfile ("gitdir: …"): key by where it sits
			return c
		case syscall.S_IFDIR:
			if isGitDir(c) {
				return c
			}
		}
	}
	return p
}

// isGitDir is a cheap version of git's is_git_directory: HEAD and objects/ exist.
func isGitDir(d string) bool {
	var st syscall.Stat_t
	if syscall.Stat(d+"/HEAD", &st) != nil {
		return false
	}
	return syscall.Stat(d+"/objects", &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR
}

// expandHome expands "~", "~/x" (HOME) and "~user/x" (passwd) as git's
// interpolate_path does; unknown users leave p unchanged.
func expandHome(p string, getenv Env, passwd string) string {
	name, rest, _ := strings.Cut(p[1:], "/")
	var home string
	if name == "" {
		home = getenv("HOME")
	} else {
		home = lookupHome(name, passwd)
	}
	if home == "" {
		return p
	}
	return home + "/" + rest
}

// lookupHome finds user's home directory in a passwd(5) file.
func lookupHome(user, passwd string) string {
	data, err := shimproto.ReadFile(passwd, 1<<20)
	if err != nil {
		return ""
	}
	for s := string(data); s != ""; {
		line := s
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		f := strings.Split(line, ":")
		if len(f) >= 7 && f[0] == user {
			return f[5]
		}
	}
	return ""
}
