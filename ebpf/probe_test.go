package ebpf

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

func TestProbe(t *testing.T) {
	btf := filepath.Join(t.TempDir(), "vmlinux")
	caps := func(c uint64, err error) func() (uint64, error) {
		return func() (uint64, error) { return c, err }
	}
	all := caps(1<<40-1, nil)
	cases := []struct {
		name string
		opts ProbeOptions
		step string
	}{
		{"no BTF", ProbeOptions{BTF: btf, CapEff: all}, ProbeBTF},
		{"capabilities unreadable", ProbeOptions{BTF: "probe_test.go", CapEff: caps(0, fs.ErrNotExist)}, ProbeCaps},
		{"no CAP_BPF", ProbeOptions{BTF: "probe_test.go", CapEff: caps(1<<21, nil)}, ProbeCapBPF},
		{"ready", ProbeOptions{BTF: "probe_test.go", CapEff: all}, ""},
	}
	for _, c := range cases {
		err := Probe(c.opts)
		var pe *ProbeError
		switch {
		case c.step == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.step == "":
		case !errors.As(err, &pe) || pe.Step != c.step || !errors.Is(err, ErrUnavailable):
			t.Errorf("%s: %v, want a ProbeError at %q", c.name, err, c.step)
		}
	}
	if err := Probe(ProbeOptions{BTF: btf}); !errors.Is(err, fs.ErrNotExist) ||
		!strings.HasPrefix(err.Error(), "eBPF tracing unavailable: kernel BTF: stat ") {
		t.Errorf("missing BTF: %v", err)
	}
}

// TestProbeSelf reads this process's own capabilities: present or not,
// they are read.
func TestProbeSelf(t *testing.T) {
	var pe *ProbeError
	if err := Probe(ProbeOptions{BTF: "probe_test.go"}); errors.As(err, &pe) && pe.Step == ProbeCaps {
		t.Fatalf("capget: %v", err)
	}
}
