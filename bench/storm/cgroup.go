package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serverCgroup is the v1 memory cgroup that stands for the small host:
// git daemon, every git it runs, and sluiced with its bucket cgroups all
// live inside it, so its limit is the host's memory for every mode.
type serverCgroup struct {
	dir string // /sys/fs/cgroup/memory/<own>/sluice-storm-<pid>
	// extra are the server's cgroups in other v1 hierarchies: its cpuset
	// (-server-cpus) and its cpu cgroup with the largest cpu.shares.
	extra []string
}

// ownCgroups maps each v1 hierarchy's controllers (as written in
// /proc/self/cgroup, e.g. "memory", "cpu,cpuacct", "name=systemd", and ""
// for the unified tree) to this process's path in it.
func ownCgroups() (map[string]string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) == 3 {
			out[parts[1]] = parts[2]
		}
	}
	return out, sc.Err()
}

func newServerCgroup(root, name string, limit int64) (*serverCgroup, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	p, ok := own["memory"]
	if !ok {
		return nil, errors.New("no cgroup v1 memory hierarchy in /proc/self/cgroup (the storm needs one to stand for a small host)")
	}
	dir := filepath.Join(root, "memory", p, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create the server cgroup: %w", err)
	}
	cg := &serverCgroup{dir: dir}
	if err := cg.write("memory.limit_in_bytes", strconv.FormatInt(limit, 10)); err != nil {
		cg.remove()
		return nil, err
	}
	return cg, nil
}

func (c *serverCgroup) write(file, v string) error {
	return os.WriteFile(filepath.Join(c.dir, file), []byte(v), 0o644)
}

func (c *serverCgroup) readInt(file string) int64 {
	b, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// usage is the cgroup's current memory charge (page cache included).
func (c *serverCgroup) usage() int64 { return c.readInt("memory.usage_in_bytes") }

// resetPeak starts a new memory.max_usage_in_bytes window.
func (c *serverCgroup) resetPeak() error { return c.write("memory.max_usage_in_bytes", "0") }

func (c *serverCgroup) peak() int64 { return c.readInt("memory.max_usage_in_bytes") }

// oomKills sums memory.oom_control's oom_kill over the cgroup and every
// cgroup below it (sluice's buckets): cgroup v1 counts a kill only in the
// cgroup of the killed task, not in its ancestors.
func (c *serverCgroup) oomKills() int64 {
	var n int64
	filepath.WalkDir(c.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "memory.oom_control"))
		if err != nil {
			return nil
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
				k, _ := strconv.ParseInt(v, 10, 64)
				n += k
			}
		}
		return nil
	})
	return n
}

// empty SIGKILLs every process in the cgroup and below (stragglers of the
// previous mode, possibly stuck in memory reclaim) and waits until none is
// left, then drops the memory still charged to it (page cache), so every
// mode starts from the same state. Bounded by timeout.
func (c *serverCgroup) empty(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n := 0
		filepath.WalkDir(c.dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, e := strconv.Atoi(f); e == nil && pid > 0 {
					syscall.Kill(pid, syscall.SIGKILL)
					n++
				}
			}
			return nil
		})
		if n == 0 {
			return c.write("memory.force_empty", "0")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d processes still in the server cgroup after %v", n, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// remove kills whatever is left in the cgroup and below, then removes it.
func (c *serverCgroup) remove() error {
	return removeTree(c.dir)
}

// removeTree removes a cgroup directory and everything below it, deepest
// first, SIGKILLing stragglers; bounded to about 5 s.
func removeTree(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	var err error
	for try := 0; try < 50; try++ {
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, e error) error {
			if e == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		err = nil
		for _, d := range dirs {
			if b, e := os.ReadFile(filepath.Join(d, "cgroup.procs")); e == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, e := strconv.Atoi(f); e == nil && pid > 0 {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if e := os.Remove(d); e != nil && !os.IsNotExist(e) {
				err = e
			}
		}
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

// removeAgentHierarchy removes the cgroups sluiced created for itself as
// <own>/<root> in every hierarchy, where <own> is the agent's cgroup: the
// server cgroup in the memory hierarchy, this process's own elsewhere.
func removeAgentHierarchy(cgRoot string, server *serverCgroup, root string) error {
	own, err := ownCgroups()
	if err != nil {
		return err
	}
	var errs []error
	if server != nil {
		errs = append(errs, removeTree(filepath.Join(server.dir, root)))
		for _, d := range server.extra {
			errs = append(errs, removeTree(filepath.Join(d, root)))
		}
	}
	for ctrls, p := range own {
		if ctrls == "memory" {
			continue
		}
		sub := ctrls
		if ctrls == "" {
			sub = "unified"
		} else if n, ok := strings.CutPrefix(ctrls, "name="); ok {
			sub = n
		}
		d := filepath.Join(cgRoot, sub, p, root)
		errs = append(errs, removeTree(d))
	}
	return errors.Join(errs...)
}

// pin is a v1 cgroup of one controller (cpuset, cpu) that holds the
// server or the clients.
type pin struct {
	dir string
}

// newPin creates <own cgroup of controller>/<name> and writes settings in
// order (file, value).
func newPin(root, controller, name string, settings [][2]string) (*pin, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	p, ok := own[controller]
	if !ok {
		for k, v := range own {
			if slices.Contains(strings.Split(k, ","), controller) {
				p, ok = v, true
			}
		}
	}
	if !ok {
		return nil, fmt.Errorf("no cgroup v1 %s hierarchy in /proc/self/cgroup: run with -server-cpus '' to share the CPUs", controller)
	}
	dir := filepath.Join(root, controller, p, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	for _, kv := range settings {
		if err := os.WriteFile(filepath.Join(dir, kv[0]), []byte(kv[1]), 0o644); err != nil {
			os.Remove(dir)
			return nil, fmt.Errorf("%s = %q in %s: %w", kv[0], kv[1], dir, err)
		}
	}
	return &pin{dir: dir}, nil
}

// newCpuset is a cpuset cgroup on cpus (e.g. "1") with the parent's
// memory nodes.
func newCpuset(root, name, cpus string) (*pin, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	parent := filepath.Join(root, "cpuset", own["cpuset"])
	mems, err := os.ReadFile(filepath.Join(parent, "cpuset.effective_mems"))
	if err != nil {
		if mems, err = os.ReadFile(filepath.Join(parent, "cpuset.mems")); err != nil {
			return nil, fmt.Errorf("no cgroup v1 cpuset hierarchy (run with -server-cpus '' to share the CPUs): %w", err)
		}
	}
	return newPin(root, "cpuset", name, [][2]string{{"cpuset.mems", strings.TrimSpace(string(mems))}, {"cpuset.cpus", cpus}})
}

// maxShares is cgroup v1's largest cpu.shares: a cgroup at the top level
// with it gets ~86 % of a CPU against 40 runnable tasks of other work
// (weight 1024 each), so a busy machine does not starve the side that
// runs few processes (a server under a limit of 1) more than the side
// that runs many.
const maxShares = "262144"

// enter moves process pid (all its threads) into the cgroup.
func (c *pin) enter(pid int) error {
	return os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

// leave moves pid back to the parent cgroup and removes this one (any
// other process left in it is SIGKILLed first).
func (c *pin) leave(pid int) error {
	os.WriteFile(filepath.Join(filepath.Dir(c.dir), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
	return removeTree(c.dir)
}
