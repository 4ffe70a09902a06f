package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// procFS reads process facts from a proc file system mounted at root
// ("/proc"; tests may point it elsewhere).
type procFS struct {
	root string
}

// defaultProcFS is the host's /proc.
var defaultProcFS = procFS{root: "/proc"}

// errNoProcess is returned for a pid that has no entry (it exited).
var errNoProcess = errors.New("no such process")

// ppid returns pid's parent pid.
func (p procFS) ppid(pid int) (int, error) {
	b, err := os.ReadFile(filepath.Join(p.root, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, errNoProcess
		}
		return 0, err
	}
	ppid, _, err := parseStat(b)
	return ppid, err
}

// cmdline returns pid's argument vector (at most 4 KiB of it is read).
func (p procFS) cmdline(pid int) ([]string, error) {
	f, err := os.Open(filepath.Join(p.root, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errNoProcess
		}
		return nil, err
	}
	defer f.Close()
	var buf [4096]byte
	n, _ := f.Read(buf[:])
	return parseCmdline(buf[:n]), nil
}

// parseCmdline splits the NUL-separated contents of /proc/PID/cmdline.
func parseCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// ancestors calls visit with each ancestor of pid, parent first, at most
// maxAncestorDepth of them, stopping at pid 1 or when visit returns true.
// It reports whether visit returned true.
func (p procFS) ancestors(pid int, visit func(pid int) bool) bool {
	for range maxAncestorDepth {
		pp, err := p.ppid(pid)
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
// instant (readProcTable: /proc/*/stat, since this kernel has no
// /proc/PID/task/TID/children). One snapshot serves every lease a scan
// looks at.
type snapshot struct {
	fs       procFS
	children map[int][]int
}

// takeSnapshot reads every process's parent.
func (p procFS) takeSnapshot() (*snapshot, error) {
	t := readProcTable(p.root)
	if len(t.children) == 0 {
		return nil, errors.New("no process readable under " + p.root)
	}
	return &snapshot{fs: p, children: t.children}, nil
}

// descendants returns root's descendants, breadth first, at most
// maxTreeProcs of them and maxTreeDepth levels deep.
func (s *snapshot) descendants(root int) []int {
	var out []int
	level := []int{root}
	for depth := 0; depth < maxTreeDepth && len(level) > 0; depth++ {
		var next []int
		for _, pid := range level {
			for _, c := range s.children[pid] {
				if len(out) == maxTreeProcs {
					return out
				}
				out = append(out, c)
				next = append(next, c)
			}
		}
		level = next
	}
	return out
}

// findGit reports whether a descendant of root runs git subcommand sub
// (see gitSubcommand) and, with wrote, has written output already.
func (s *snapshot) findGit(root int, sub string, wrote bool) bool {
	for _, pid := range s.descendants(root) {
		argv, err := s.fs.cmdline(pid)
		if err != nil || gitSubcommand(argv) != sub {
			continue
		}
		if !wrote {
			return true
		}
		if n, err := s.fs.written(pid); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// written returns how many bytes pid has written (wchar of /proc/PID/io).
func (p procFS) written(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join(p.root, strconv.Itoa(pid), "io"))
	if err != nil {
		return 0, err
	}
	return parseIOWchar(b)
}

// parseIOWchar returns the wchar field of /proc/PID/io contents.
func parseIOWchar(b []byte) (int64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("io: no wchar line")
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
