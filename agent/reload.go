package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/policy"
)

// limiterConfig is the limiter configuration of rule r.
func limiterConfig(r *policy.Limit) limiter.Config {
	return limiter.Config{
		Name:         r.Name,
		Limit:        r.Limit(),
		MaxQueueSize: r.MaxQueueSize,
		MaxQueueWait: r.MaxQueueWait.Duration,
		Order:        r.Order(),
	}
}

// Reload re-reads the policy file the agent was started with (or, when it
// runs on the embedded default, /etc/sluice/sluice.toml if that now
// exists) and applies it. Rules are matched by name: a changed rule
// reconfigures its limiter in place, a new rule gets a limiter, a removed
// rule stops admitting while its running and queued requests finish
// undisturbed. Nothing in flight is dropped or counted twice. An invalid
// file, or one that changes what only a restart can change, is rejected
// whole and the old policy stays in force.
func (a *Agent) Reload() *admitpb.ReloadResponse {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	old := a.Policy()
	path := a.configPath
	if path == "" {
		path = policy.DefaultPath
	}
	resp := &admitpb.ReloadResponse{ConfigPath: path}
	fail := func(errs ...string) *admitpb.ReloadResponse {
		resp.Errors = errs
		a.log.Error("reload rejected; the old policy stays in force", zap.String("config", path), zap.Strings("errors", errs))
		return resp
	}
	if _, err := os.Stat(path); a.configPath == "" && errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Sprintf("sluiced runs on the embedded default policy and %s does not exist; write it (start from `sluice validate --print-defaults`) and reload again", path))
	}
	cfg, err := policy.Load(path)
	if err != nil {
		var errs policy.Errors
		if errors.As(err, &errs) {
			var lines []string
			for _, e := range errs {
				lines = append(lines, e.Error())
			}
			return fail(lines...)
		}
		return fail(err.Error())
	}
	if errs := restartOnly(old, cfg); len(errs) > 0 {
		return fail(errs...)
	}

	a.mu.Lock()
	var changes []string
	limiters := make(map[string]*limiter.Limiter, len(cfg.Limits))
	for i := range cfg.Limits {
		r := &cfg.Limits[i]
		lc := limiterConfig(r)
		if lim, ok := a.limiters[r.Name]; ok {
			if r.Adaptive {
				// An adaptive limit keeps what it learned, within the
				// new bounds; only a restart starts over at initial_limit.
				lc.Limit = min(max(lim.Stats().Limit, r.MinLimit), r.MaxLimit)
			}
			if prev := lim.Config(); prev != lc {
				lim.Reconfigure(lc)
				changes = append(changes, limiterChanges(r.Name, prev, lc))
			}
			limiters[r.Name] = lim
		} else {
			limiters[r.Name] = limiter.New(lc, limiter.WithGroup(a.group))
			changes = append(changes, fmt.Sprintf("%s: new rule matching %v, limit %d", r.Name, r.Match, lc.Limit))
		}
	}
	for _, r := range old.Limits {
		if _, ok := limiters[r.Name]; !ok {
			changes = append(changes, fmt.Sprintf("%s: removed (its running and queued requests finish)", r.Name))
		}
	}
	for _, r := range cfg.Limits {
		for _, o := range old.Limits {
			if o.Name == r.Name && !slices.Equal(o.Match, r.Match) {
				changes = append(changes, fmt.Sprintf("%s: match %v -> %v", r.Name, o.Match, r.Match))
			}
		}
	}
	if old.Agent.FailMode != cfg.Agent.FailMode {
		changes = append(changes, fmt.Sprintf("fail_mode %s -> %s", old.Agent.FailMode, cfg.Agent.FailMode))
	}
	changes = append(changes, timeoutChanges(old, cfg)...)
	changes = append(changes, accessChanges(&old.Agent, &cfg.Agent)...)
	a.limiters = limiters
	a.policy = cfg
	a.mu.Unlock()
	changes = append(changes, budgetChanges(&old.Budget, &cfg.Budget)...)
	a.budget.configure(cfg)

	changes = append(changes, a.reloadParts(cfg)...)
	if a.onReload != nil {
		for _, note := range a.onReload(cfg) {
			changes = append(changes, note)
		}
	}
	resp.Applied = true
	resp.Changes = changes
	if len(changes) == 0 {
		resp.Changes = []string{"no changes"}
	}
	a.log.Info("reloaded", zap.String("config", path), zap.Strings("changes", resp.Changes))
	return resp
}

func orderName(o string) string {
	if o == "" {
		return limiter.OrderFIFO
	}
	return o
}

// restartOnly lists changes that a running agent cannot apply.
func restartOnly(old, cfg *policy.Config) []string {
	var errs []string
	check := func(key, a, b string) {
		if a != b {
			errs = append(errs, fmt.Sprintf("%s: %s changed from %q to %q, which needs a restart; restore it, or restart sluiced to apply it", cfg.Source, key, a, b))
		}
	}
	check("[agent] socket", old.Agent.Socket, cfg.Agent.Socket)
	check("[agent] socket_group", old.Agent.SocketGroup, cfg.Agent.SocketGroup)
	check("[agent] metrics_addr", old.Agent.MetricsAddr, cfg.Agent.MetricsAddr)
	check("[agent] pprof", fmt.Sprint(old.Agent.Pprof), fmt.Sprint(cfg.Agent.Pprof))
	check("[cgroups] mountpoint", old.Cgroups.Mountpoint, cfg.Cgroups.Mountpoint)
	check("[cgroups] hierarchy_root", old.Cgroups.HierarchyRoot, cfg.Cgroups.HierarchyRoot)
	check("[cgroups] enabled", fmt.Sprint(old.Cgroups.Enabled), fmt.Sprint(cfg.Cgroups.Enabled))
	return errs
}

// limiterChanges describes what a reload changed in a rule's limiter: only
// the fields that differ ("upload-pack: limit 20 -> 10").
func limiterChanges(name string, prev, cur limiter.Config) string {
	var parts []string
	if prev.Limit != cur.Limit {
		parts = append(parts, fmt.Sprintf("limit %d -> %d", prev.Limit, cur.Limit))
	}
	if prev.MaxQueueSize != cur.MaxQueueSize {
		parts = append(parts, fmt.Sprintf("max_queue_size %d -> %d", prev.MaxQueueSize, cur.MaxQueueSize))
	}
	if prev.MaxQueueWait != cur.MaxQueueWait {
		parts = append(parts, fmt.Sprintf("max_queue_wait %s -> %s", prev.MaxQueueWait, cur.MaxQueueWait))
	}
	if prev.Order != cur.Order {
		parts = append(parts, fmt.Sprintf("queue_order %s -> %s", orderName(prev.Order), orderName(cur.Order)))
	}
	if len(parts) == 0 {
		parts = append(parts, "settings changed") // a field this list does not know yet
	}
	return name + ": " + strings.Join(parts, ", ")
}
