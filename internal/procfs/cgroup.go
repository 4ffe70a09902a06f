package procfs

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// ParseCgroup parses /proc/PID/cgroup ("id:controllers:path" per line)
// into controller → path. Co-mounted v1 controllers ("cpu,cpuacct") each
// get an entry, named hierarchies keep their "name=" prefix
// ("name=systemd"), and the cgroup2 "0::" line has the key "". The path
// may itself hold ':'.
func ParseCgroup(r io.Reader) (map[string]string, error) {
	m := make(map[string]string)
	s := bufio.NewScanner(r)
	for s.Scan() {
		line := s.Text()
		if line == "" {
			continue
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("malformed cgroup line %q", line)
		}
		if parts[1] == "" {
			m[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			m[c] = parts[2]
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	return m, nil
}
