package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultRoot is where the proc file system is mounted.
const DefaultRoot = "/proc"

// FS is a proc file system mounted at Root. The zero value reads the
// host's /proc.
type FS struct {
	// Root is the mountpoint; "" means DefaultRoot. Tests point it at a
	// fixture tree with one directory per pid (and "self").
	Root string
}

// Default is the host's /proc.
var Default = FS{Root: DefaultRoot}

// Dir returns the mountpoint: Root, or DefaultRoot when Root is empty.
func (fs FS) Dir() string {
	if fs.Root == "" {
		return DefaultRoot
	}
	return fs.Root
}

// Path returns the path of file name of process pid ("/proc/42/stat").
func (fs FS) Path(pid int, name string) string {
	return filepath.Join(fs.Dir(), strconv.Itoa(pid), name)
}

// SelfPath returns the path of file name of the calling process
// ("/proc/self/cgroup").
func (fs FS) SelfPath(name string) string {
	return filepath.Join(fs.Dir(), "self", name)
}

// PIDs lists the pids that have a directory under the root, in directory
// order.
func (fs FS) PIDs() ([]int, error) {
	ents, err := os.ReadDir(fs.Dir())
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Comm returns pid's command name (/proc/PID/comm, at most 15 bytes, as
// the kernel truncates it).
func (fs FS) Comm(pid int) (string, error) {
	b, err := os.ReadFile(fs.Path(pid, "comm"))
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(b, "\n")), nil
}

// Cmdline returns pid's argument vector. limit > 0 reads at most limit
// bytes of it (one read: the start of the vector, the last argument maybe
// cut short), bounding the cost of a huge command line; limit 0 reads it
// all.
func (fs FS) Cmdline(pid, limit int) ([]string, error) {
	if limit <= 0 {
		b, err := os.ReadFile(fs.Path(pid, "cmdline"))
		if err != nil {
			return nil, err
		}
		return ParseCmdline(b), nil
	}
	f, err := os.Open(fs.Path(pid, "cmdline"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, limit)
	n, _ := f.Read(buf)
	return ParseCmdline(buf[:n]), nil
}

// ParseCmdline splits the NUL-separated contents of /proc/PID/cmdline; it
// returns nil for an empty one (a kernel thread, a zombie).
func ParseCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// Environ returns the environment pid was started with
// (/proc/PID/environ), name → value.
func (fs FS) Environ(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fs.Path(pid, "environ"))
	if err != nil {
		return nil, err
	}
	return ParseEnviron(b), nil
}

// ParseEnviron parses the NUL-separated NAME=value pairs of
// /proc/PID/environ; entries without "=" or with an empty name are
// skipped, and a later duplicate wins.
func ParseEnviron(b []byte) map[string]string {
	env := map[string]string{}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok && k != "" {
			env[k] = v
		}
	}
	return env
}

// Exe returns the path of pid's executable (the /proc/PID/exe link),
// without the " (deleted)" the kernel appends once the file is gone.
func (fs FS) Exe(pid int) (string, error) {
	exe, err := os.Readlink(fs.Path(pid, "exe"))
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(exe, " (deleted)"), nil
}

// Cwd returns pid's working directory (the /proc/PID/cwd link).
func (fs FS) Cwd(pid int) (string, error) {
	return os.Readlink(fs.Path(pid, "cwd"))
}

// IO is what sluice reads from /proc/PID/io.
type IO struct {
	// RChar and WChar count the bytes the process read and wrote through
	// read(2)/write(2) and friends, pipes and sockets included.
	RChar, WChar uint64
}

// IO reads pid's I/O counters (/proc/PID/io, readable by the process's
// owner or root).
func (fs FS) IO(pid int) (IO, error) {
	b, err := os.ReadFile(fs.Path(pid, "io"))
	if err != nil {
		return IO{}, err
	}
	return ParseIO(b)
}

// ParseIO parses /proc/PID/io. The wchar line is required.
func ParseIO(b []byte) (IO, error) {
	var out IO
	wchar := false
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch k {
		case "rchar":
			dst = &out.RChar
		case "wchar":
			dst, wchar = &out.WChar, true
		default:
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return IO{}, fmt.Errorf("io: %s: %w", k, err)
		}
		*dst = n
	}
	if !wchar {
		return IO{}, errors.New("io: no wchar line")
	}
	return out, nil
}

// Cgroup reads pid's cgroups (/proc/PID/cgroup): see ParseCgroup.
func (fs FS) Cgroup(pid int) (map[string]string, error) {
	return ReadCgroupFile(fs.Path(pid, "cgroup"))
}

// SelfCgroup reads the calling process's cgroups (/proc/self/cgroup).
func (fs FS) SelfCgroup() (map[string]string, error) {
	return ReadCgroupFile(fs.SelfPath("cgroup"))
}

// ReadCgroupFile reads a file in the format of /proc/PID/cgroup (tests
// and callers with an injected path give it directly): see ParseCgroup.
func ReadCgroupFile(name string) (map[string]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseCgroup(f)
}
