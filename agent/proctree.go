package agent

import (
	"errors"
	"path/filepath"
	"strings"

	"github.com/sluicehq/sluice/internal/procfs"
)

// Bounds of the process-tree walks: the agent never follows a chain or reads
// a tree without limit, whatever a client makes its processes do.
const (
	// maxAncestorDepth bounds the ppid walk from a process to a lease's
	// peer. The deepest real chain is the hook's: pack-objects shim → sh →
	// git upload-pack → shim (supervising) → git daemon.
	maxAncestorDepth = 16
	// maxTreeDepth and maxTreeProcs bound a descendant scan.
	maxTreeDepth = 8
	maxTreeProcs = 256
)

// maxCmdline is how much of a command line the tree walks read: enough
// for git's argv, bounded whatever a client puts there.
const maxCmdline = 4096

// ancestors calls visit with each ancestor of pid, parent first, at most
// maxAncestorDepth of them, stopping at pid 1 or when visit returns true.
// It reports whether visit returned true.
func ancestors(proc procfs.FS, pid int, visit func(pid int) bool) bool {
	for range maxAncestorDepth {
		pp, err := proc.PPID(pid)
		if err != nil || pp <= 1 {
			return false
		}
		if visit(pp) {
			return true
		}
		pid = pp
	}
	return false
}

// snapshot is the parent → children relation of every process at one
// instant (procfs.Table: /proc/*/stat, since this kernel has no
// /proc/PID/task/TID/children). One snapshot serves every lease a scan
// looks at.
type snapshot struct {
	proc procfs.FS
	procfs.Table
}

// takeSnapshot reads every process's parent.
func takeSnapshot(proc procfs.FS) (*snapshot, error) {
	t := proc.ReadTable()
	if len(t.Children) == 0 {
		return nil, errors.New("no process readable under " + proc.Dir())
	}
	return &snapshot{proc: proc, Table: t}, nil
}

// descendants returns root's descendants, breadth first, at most
// maxTreeProcs of them and maxTreeDepth levels deep.
func (s *snapshot) descendants(root int) []int {
	return s.Descendants(root, maxTreeDepth, maxTreeProcs)
}

// findGit reports whether a descendant of root runs git subcommand sub
// (see gitSubcommand) and, with wrote, has written output already (wchar
// of /proc/PID/io).
func (s *snapshot) findGit(root int, sub string, wrote bool) bool {
	for _, pid := range s.descendants(root) {
		argv, err := s.proc.Cmdline(pid, maxCmdline)
		if err != nil || gitSubcommand(argv) != sub {
			continue
		}
		if !wrote {
			return true
		}
		if pio, err := s.proc.IO(pid); err == nil && pio.WChar > 0 {
			return true
		}
	}
	return false
}

// gitSubcommand returns the git subcommand an argument vector runs, "" when
// it does not look like git. It understands the forms a Git server's
// processes take: "git pack-objects …", "/usr/lib/git-core/git-pack-objects
// …", "git --shallow-file <empty> pack-objects …" (shallow fetches through the
// hook), "git -c k=v upload-pack …", and the shim in hook mode,
// "sluice-shim git pack-objects …".
func gitSubcommand(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	base := filepath.Base(argv[0])
	if sub, ok := strings.CutPrefix(base, "git-"); ok {
		return sub
	}
	args := argv[1:]
	switch {
	case base == "git":
	case len(args) > 0 && args[0] == "git":
		args = args[1:] // the shim called as a hook: sluice-shim git …
	default:
		return ""
	}
	for i := 0; i < len(args) && i < 8; i++ {
		a := args[i]
		switch {
		case a == "-c" || a == "-C" || a == "--shallow-file" || a == "--git-dir" || a == "--work-tree" || a == "--namespace":
			i++ // the option's value
		case strings.HasPrefix(a, "-"):
		default:
			return a
		}
	}
	return ""
}
