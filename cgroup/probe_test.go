package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestProbeOnFixtures runs Probe on plain directories laid out like the
// cgroup file systems (a directory can be created and removed in them as
// in a cgroup).
func TestProbeOnFixtures(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "self_cgroup")
	os.WriteFile(self, []byte("5:memory:/svc\n1:cpu,cpuacct:/svc\n0::/svc\n"), 0o644)

	v2 := filepath.Join(dir, "v2")
	os.MkdirAll(filepath.Join(v2, "svc"), 0o755)
	os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("cpuset cpu io memory\n"), 0o644)
	r, err := Probe(v2, self)
	if err != nil || !r.V2 || r.Dir != filepath.Join(v2, "svc") || !slices.Equal(r.Missing, []string{"pids"}) ||
		r.Writable() != "cgroup2 "+filepath.Join(v2, "svc") {
		t.Errorf("v2: %+v, %v", r, err)
	}

	v1 := filepath.Join(dir, "v1")
	for _, c := range []string{"memory/svc", "cpu", "cpuacct", "pids"} {
		os.MkdirAll(filepath.Join(v1, c), 0o755)
	}
	r, err = Probe(v1, self)
	if err != nil || r.V2 || r.Own["cpuacct"] != "/svc" || len(r.Missing) != 0 || r.Writable() != "v1 memory "+filepath.Join(v1, "memory", "svc") {
		t.Errorf("v1: %+v, %v", r, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(v1, "memory", "svc")); len(ents) != 0 {
		t.Errorf("the probe cgroup was left behind: %v", ents)
	}

	var pe *ProbeError
	if _, err := Probe(v1, filepath.Join(dir, "missing")); !errors.As(err, &pe) || pe.Step != ProbeReadOwn || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no own cgroup file: %v", err)
	}
	if r, err := Probe(filepath.Join(dir, "none"), self); !errors.As(err, &pe) || pe.Step != ProbeMount || len(r.Missing) != 4 {
		t.Errorf("no cgroup file system: %+v, %v", r, err)
	}
}
