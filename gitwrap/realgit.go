package gitwrap

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Environment variables the shim reads or sets.
const (
	// RealGitEnv names the real git explicitly; it wins over shim.conf and PATH.
	RealGitEnv = "SLUICE_REAL_GIT"
	// ExecGuardEnv is set to "PID.PPID" just before the shim execs git in
	// place. A shim that starts with its own PID.PPID in it was exec'd by a
	// shim directly, which only happens when the "real git" is another copy
	// of the shim: it refuses instead of looping forever.
	ExecGuardEnv = "SLUICE_SHIM_EXEC"
	// DefaultGit is the last resort when PATH has no git but the shim.
	DefaultGit = "/usr/bin/git"
)

// FindRealGit returns the git binary to run: $SLUICE_REAL_GIT, else
// configured (shim.conf git_bin), else the first executable "git" in an
// absolute PATH entry that is not the shim, else DefaultGit. "The shim" is
// every file with the (device, inode) of /proc/self/exe; stat follows
// symlinks, so a symlink to the shim is skipped too. An explicit choice that
// is the shim, or missing, is an error (callers exit 127), never a loop.
// Relative and empty PATH entries are skipped: a git server's cwd is a
// repository, which must not supply binaries.
func FindRealGit(getenv Env, configured string) (string, error) {
	return findRealGit(getenv, configured, "/proc/self/exe")
}

// FindRealGitFor is FindRealGit for a program other than the shim (`sluice
// check`, `sluice demo`): the same order and rules, but "the shim" is every
// file with the (device, inode) of shim instead of /proc/self/exe, so the
// answer is the git that shim would run. A shim that does not exist skips
// nothing.
func FindRealGitFor(getenv Env, configured, shim string) (string, error) {
	return findRealGit(getenv, configured, shim)
}

func findRealGit(getenv Env, configured, selfExe string) (string, error) {
	if v := getenv(ExecGuardEnv); v != "" && v == execGuardValue() {
		return "", errors.New("sluice: git exec'd the shim in place (another copy of sluice-shim is on PATH or configured as git?); set " + RealGitEnv + " to the real git")
	}
	var self syscall.Stat_t
	haveSelf := syscall.Stat(selfExe, &self) == nil
	isSelf := func(st *syscall.Stat_t) bool {
		return haveSelf && st.Dev == self.Dev && st.Ino == self.Ino
	}
	check := func(what, path string) (string, error) {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return "", errors.New("sluice: " + what + "=" + path + ": " + err.Error())
		}
		if isSelf(&st) {
			return "", errors.New("sluice: " + what + "=" + path + " is the sluice shim itself, not git; point it at the real git")
		}
		if !executable(&st) {
			return "", errors.New("sluice: " + what + "=" + path + " is not an executable file")
		}
		return path, nil
	}
	if v := getenv(RealGitEnv); v != "" {
		return check(RealGitEnv, v)
	}
	if configured != "" {
		return check("git_bin", configured)
	}
	for path := getenv("PATH"); path != ""; {
		dir := path
		if i := strings.IndexByte(path, ':'); i >= 0 {
			dir, path = path[:i], path[i+1:]
		} else {
			path = ""
		}
		if dir == "" || dir[0] != '/' {
			continue
		}
		cand := dir + "/git"
		if dir == "/" {
			cand = "/git"
		}
		var st syscall.Stat_t
		if syscall.Stat(cand, &st) != nil || !executable(&st) || isSelf(&st) {
			continue
		}
		return cand, nil
	}
	var st syscall.Stat_t
	if syscall.Stat(DefaultGit, &st) == nil && executable(&st) && !isSelf(&st) {
		return DefaultGit, nil
	}
	return "", errors.New("sluice: cannot find the real git (PATH has none but the shim); set " + RealGitEnv + " or [git] bin in sluice.toml")
}

func executable(st *syscall.Stat_t) bool {
	return st.Mode&syscall.S_IFMT == syscall.S_IFREG && st.Mode&0o111 != 0
}

func execGuardValue() string {
	return strconv.Itoa(os.Getpid()) + "." + strconv.Itoa(os.Getppid())
}
