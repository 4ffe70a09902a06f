package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestSetupDisabled(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	m, state, err := Setup(SetupOptions{Enabled: false}, zap.New(core))
	if m != nil || state != "disabled" || err != nil {
		t.Fatalf("Setup disabled = %v, %q, %v", m, state, err)
	}
	if e := logs.All(); len(e) != 1 || !strings.HasPrefix(e[0].Message, "cgroups disabled ([cgroups] enabled = false)") {
		t.Fatalf("logs %v", e)
	}
}

// TestSetupUnavailable: a mountpoint without a cgroup file system is a
// warning naming the fix, or the error when [cgroups] required is set.
func TestSetupUnavailable(t *testing.T) {
	self := filepath.Join(t.TempDir(), "cgroup")
	if err := os.WriteFile(self, []byte("0::/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Mountpoint: t.TempDir(), ProcSelfCgroup: self, Buckets: 4}
	core, logs := observer.New(zapcore.InfoLevel)
	m, state, err := Setup(SetupOptions{Enabled: true, Config: cfg}, zap.New(core))
	if m != nil || err != nil || !strings.HasPrefix(state, "unavailable: cgroup: cgroup filesystem at ") {
		t.Fatalf("Setup = %v, %q, %v", m, state, err)
	}
	e := logs.All()
	if len(e) != 1 || e[0].Message != "cgroups unavailable: admitting without placement" || e[0].Level != zapcore.WarnLevel {
		t.Fatalf("logs %v", e)
	}
	if fix := e[0].ContextMap()["fix"]; !strings.HasSuffix(fix.(string), "; or set [cgroups] enabled = false to silence this") ||
		!strings.HasPrefix(fix.(string), "mount cgroup2") {
		t.Errorf("fix %q", fix)
	}

	m, state, err = Setup(SetupOptions{Enabled: true, Required: true, Config: cfg}, zap.NewNop())
	if m != nil || state != "" || !errors.Is(err, ErrUnsupported) ||
		!strings.HasPrefix(err.Error(), "[cgroups] required = true, but cgroups cannot be set up: ") {
		t.Fatalf("Setup required = %v, %q, %v", m, state, err)
	}
}

// reconfigurable is a Manager whose Update sets the bucket count or fails.
type reconfigurable struct {
	Manager
	buckets int
	err     error
}

func (r *reconfigurable) Buckets() int { return r.buckets }

func (r *reconfigurable) Update(cfg Config) error {
	if r.err != nil {
		return r.err
	}
	r.buckets = cfg.Buckets
	return nil
}

func TestReconfigure(t *testing.T) {
	m := &reconfigurable{buckets: 4}
	if notes := Reconfigure(m, Config{Buckets: 4}); notes != nil {
		t.Errorf("same count: %q", notes)
	}
	if notes := Reconfigure(m, Config{Buckets: 8}); len(notes) != 1 ||
		notes[0] != "cgroups: buckets 4 -> 8 (repositories may move to another bucket for new commands)" {
		t.Errorf("8 buckets: %q", notes)
	}
	m.err = errors.New("memory.max: permission denied")
	if notes := Reconfigure(m, Config{Buckets: 2}); len(notes) != 1 ||
		notes[0] != "cgroups: limits not updated: memory.max: permission denied" {
		t.Errorf("failed update: %q", notes)
	}
}
