package cgroup

import (
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// SetupOptions are the [cgroups] switches Setup obeys.
type SetupOptions struct {
	// Enabled is [cgroups] enabled: false returns no manager and no error.
	Enabled bool
	// Required is [cgroups] required: a hierarchy that cannot be set up is
	// then an error, not a warning.
	Required bool
	// Config is passed to New.
	Config Config
}

// Setup creates or adopts the hierarchy for sluiced. With cgroups disabled
// it returns no manager and no error. When they cannot be set up it returns
// nil and logs one line saying what is missing and how to fix it, unless
// Required is set, in which case it returns the error. log gets those lines
// as given; New gets log.Named("cgroup").
//
// The returned state is what `sluice status` shows when there is no
// manager: "disabled" or "unavailable: <why>" ("" with a manager).
func Setup(opts SetupOptions, log *zap.Logger) (Manager, string, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if !opts.Enabled {
		log.Info("cgroups disabled ([cgroups] enabled = false): commands run in their caller's cgroup")
		return nil, "disabled", nil
	}
	m, err := New(opts.Config, log.Named("cgroup"))
	if err != nil {
		if opts.Required {
			return nil, "", fmt.Errorf("[cgroups] required = true, but cgroups cannot be set up: %w", err)
		}
		var ue *UnsupportedError
		fix := "set [cgroups] enabled = false to silence this"
		if errors.As(err, &ue) {
			fix = ue.Need + "; or " + fix
		}
		log.Warn("cgroups unavailable: admitting without placement", zap.Error(err), zap.String("fix", fix))
		return nil, "unavailable: " + err.Error(), nil
	}
	log.Info("cgroups ready", zap.String("mode", m.Mode().String()), zap.String("bucket0", m.BucketPath(0)),
		zap.Int("buckets", m.Buckets()))
	return m, "", nil
}

// Reconfigure applies a reloaded [cgroups] section to m and returns the
// notes a reload reports: why the limits were not updated, or how the
// bucket count changed; none when nothing worth saying happened.
func Reconfigure(m Manager, cfg Config) []string {
	before := m.Buckets()
	if err := m.Update(cfg); err != nil {
		return []string{"cgroups: limits not updated: " + err.Error()}
	}
	if after := m.Buckets(); after != before {
		return []string{fmt.Sprintf("cgroups: buckets %d -> %d (repositories may move to another bucket for new commands)", before, after)}
	}
	return nil
}
