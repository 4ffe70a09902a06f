package procfs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Status is what sluice reads from /proc/PID/status.
type Status struct {
	// Name is the command name (as in comm).
	Name string
	// UID and GID are the real, effective, saved set and file system ids.
	UID, GID [4]uint32
	// Groups are the supplementary groups (the "Groups:" line).
	Groups []uint32
	// CapEff is the effective capability set, one bit per capability.
	CapEff uint64

	seen map[string]bool // the lines above that the file had
}

// Has reports whether the file had the line named key ("Name", "Uid",
// "Gid", "Groups" or "CapEff"); a line it lacks leaves its field zero.
func (s Status) Has(key string) bool { return s.seen[key] }

// Status reads and parses /proc/PID/status.
func (fs FS) Status(pid int) (Status, error) {
	return readStatus(fs.Path(pid, "status"))
}

// SelfStatus reads and parses /proc/self/status.
func (fs FS) SelfStatus() (Status, error) {
	return readStatus(fs.SelfPath("status"))
}

// Groups returns pid's supplementary groups; a status without a
// "Groups:" line is an error.
func (fs FS) Groups(pid int) ([]uint32, error) {
	s, err := fs.Status(pid)
	if err != nil {
		return nil, err
	}
	if !s.Has("Groups") {
		return nil, fmt.Errorf("%s: no Groups: line", fs.Path(pid, "status"))
	}
	return s.Groups, nil
}

func readStatus(name string) (Status, error) {
	f, err := os.Open(name)
	if err != nil {
		return Status{}, err
	}
	defer f.Close()
	return ParseStatus(f)
}

// ParseStatus parses the lines of a /proc/PID/status file that Status
// holds; the others are skipped. A malformed number is an error.
func ParseStatus(r io.Reader) (Status, error) {
	s := Status{seen: map[string]bool{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "Name":
			s.Name = strings.TrimSpace(v)
		case "Uid":
			err = parseIDs(v, &s.UID)
		case "Gid":
			err = parseIDs(v, &s.GID)
		case "Groups":
			s.Groups, err = parseUint32s(strings.Fields(v))
		case "CapEff":
			s.CapEff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		default:
			continue
		}
		if err != nil {
			return Status{}, fmt.Errorf("%s: %w", k, err)
		}
		s.seen[k] = true
	}
	if err := sc.Err(); err != nil {
		return Status{}, err
	}
	return s, nil
}

// parseIDs parses the four ids of a Uid: or Gid: line.
func parseIDs(v string, dst *[4]uint32) error {
	f := strings.Fields(v)
	if len(f) != len(dst) {
		return fmt.Errorf("%d ids, want %d", len(f), len(dst))
	}
	ids, err := parseUint32s(f)
	if err != nil {
		return err
	}
	copy(dst[:], ids)
	return nil
}

func parseUint32s(f []string) ([]uint32, error) {
	var out []uint32
	for _, x := range f {
		n, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", x, err)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}
