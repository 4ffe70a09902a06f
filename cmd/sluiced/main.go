// Command sluiced is the sluice agent: it admits git processes started
// through the shim, enforces the policy's keyed concurrency limits and
// exports metrics. See DESIGN.md and the README for how to run it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/agent/adaptive"
	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/exporter"
	"github.com/sluicehq/sluice/policy"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const defaultConfig = "/etc/sluice/sluice.toml"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fset := flag.NewFlagSet("sluiced", flag.ContinueOnError)
	fset.SetOutput(stderr)
	configPath := fset.String("config", defaultConfig, "policy file (strict TOML); when the default file is absent the embedded default policy applies")
	logLevel := fset.String("log-level", "info", "debug, info, warn or error")
	showVersion := fset.Bool("version", false, "print the version and exit")
	if err := fset.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stderr, "sluiced %s (%s)\n", version, runtime.Version())
		return 0
	}
	var level zapcore.Level
	if err := level.Set(*logLevel); err != nil {
		fmt.Fprintf(stderr, "sluiced: -log-level %q: %v; use debug, info, warn or error\n", *logLevel, err)
		return 2
	}
	explicit := false
	fset.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, note, err := loadConfig(*configPath, explicit)
	if err != nil {
		fmt.Fprintf(stderr, "sluiced: %v\n", err)
		return 1
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	// Errors an operator sees are actionable messages (a refused reload
	// names file, key and fix), not crashes: no Go stack traces in them.
	zc.DisableStacktrace = true
	zc.Sampling = nil // every finished command is logged, never sampled away
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	log, err := zc.Build()
	if err != nil {
		fmt.Fprintf(stderr, "sluiced: logger: %v\n", err)
		return 1
	}
	defer log.Sync()
	if note != "" {
		log.Info(note)
	}
	if cfg.DefaultLimits && note == "" {
		log.Info("the policy file defines no [[limit]]: the default rules apply (write limit = [] to limit nothing)",
			zap.String("config", *configPath), zap.Strings("rules", cfg.RuleNames()))
	}
	configFile := ""
	if note == "" {
		configFile = *configPath
	}
	if err := serve(cfg, configFile, log); err != nil {
		log.Error("sluiced stopped", zap.Error(err))
		return 1
	}
	return 0
}

// loadConfig reads path, or the embedded default when path is the default
// location, was not given explicitly, and does not exist.
func loadConfig(path string, explicit bool) (*policy.Config, string, error) {
	if _, err := os.Stat(path); !explicit && errors.Is(err, fs.ErrNotExist) {
		return policy.Default(), fmt.Sprintf("%s not found: using the embedded default policy (see `sluice validate --print-defaults`)", path), nil
	}
	cfg, err := policy.Load(path)
	if err != nil {
		return nil, "", err
	}
	return cfg, "", nil
}

func serve(cfg *policy.Config, configFile string, log *zap.Logger) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	cg, cgState, err := setupCgroups(cfg, log)
	if err != nil {
		return err
	}
	var a *agent.Agent
	expOpts := exporter.Options{
		Version: version,
		Limits:  limitSource{func() *agent.Agent { return a }},
		// Set before a is: the exporter serves only after New.
		Connections: connSource{func() *agent.Agent { return a }},
		Budget:      budgetSource{func() *agent.Agent { return a }},
		LeaseStateErrors: func() uint64 {
			if a == nil {
				return 0
			}
			return a.StateErrors()
		},
		Pprof: cfg.Agent.Pprof,
	}
	var cgStats cgroupStats
	if cg != nil {
		cgStats = cgroupStats{m: cg, failures: func() uint64 { return a.PlacementFailures() }}
		expOpts.Cgroups = cgStats
	}
	exp := exporter.New(expOpts)
	exp.SetLimits(cfg.RuleNames())
	socketPath := shimproto.SocketPath(cfg.Agent.Socket)
	shimConf := shimproto.ShimConfigPath(socketPath)
	opts := agent.Options{
		Policy: cfg, Log: log, Observer: exp, Version: version, ConfigPath: configFile,
		StateDir: filepath.Join(filepath.Dir(socketPath), "leases"),
		OnReload: func(c *policy.Config) []string {
			exp.SetLimits(c.RuleNames())
			var notes []string
			if err := shimproto.WriteShimConfig(shimConf, shimConfig(c)); err != nil {
				notes = append(notes, "shim.conf not rewritten: "+err.Error())
			}
			if cg != nil {
				notes = append(notes, updateCgroups(cg, &c.Cgroups)...)
			}
			return notes
		},
	}
	tracer, tracerState := openTracer(cfg, log)
	if tracer != nil {
		defer tracer.Close()
		opts.Tracer = tracer
		exp.RegisterTracer(tracerStats(tracer))
	}
	opts.Describe = func(resp *admitpb.StatusResponse) {
		if cg != nil {
			resp.Cgroups = cgStats.status()
		} else {
			resp.Cgroups = &admitpb.CgroupStatus{State: cgState}
		}
		resp.EbpfState = tracerState
	}
	if cg != nil {
		opts.Placer = cg
	}
	if pc := openPackCache(cfg, log, exp); pc != nil { // [pack_cache] (packcache.go)
		defer pc.Close()
		opts.PackCache = pc
		opts.Describe = withPackCache(opts.Describe, pc, cfg.PackCache)
	}
	a = agent.New(opts)

	// A runtime directory this agent creates (run by hand, not by the unit's
	// RuntimeDirectory=) is removed again on a clean stop, unless fail_mode
	// is "closed".
	_, statErr := os.Lstat(filepath.Dir(socketPath))
	madeRunDir := errors.Is(statErr, fs.ErrNotExist)
	sock, err := agent.Listen(agent.SocketOptions{Path: socketPath, Group: cfg.Agent.SocketGroup})
	if err != nil {
		return err
	}
	if err := shimproto.WriteShimConfig(shimConf, shimConfig(cfg)); err != nil {
		// A full or read-only filesystem must not stop admission: every
		// shim would then apply its fail mode. Shims keep the shim.conf
		// they find (or their defaults) until a reload rewrites it.
		log.Error("shim settings not written; shims use the previous file or their defaults until a reload (SIGHUP) rewrites it",
			zap.String("file", shimConf), zap.Error(err))
	}
	// Listen refused to start beside a live agent, so the commands recorded
	// in the state directory are nobody's now: take them over before the
	// first admission, so limits count them from the start.
	// An unsafe or unusable state directory stops the agent (agent/safedir.go).
	if adopted, stale, err := a.Recover(); err != nil {
		sock.Close()
		return err
	} else if adopted+stale > 0 {
		log.Info("restart recovery", zap.Int("adopted", adopted), zap.Int("stale_records_removed", stale))
	}

	errc := make(chan error, 2)
	if cfg.Agent.MetricsAddr != "off" {
		ln, err := exporter.Listen(cfg.Agent.MetricsAddr)
		if err != nil {
			sock.Close()
			return err
		}
		go func() { errc <- exp.Serve(ctx, ln, log.Named("exporter")) }()
		log.Info("metrics listening", zap.String("addr", ln.Addr().String()), zap.Bool("pprof", cfg.Agent.Pprof))
		if w := exporter.ExposureWarning(cfg.Agent.MetricsAddr, ln.Addr(), cfg.Agent.Pprof); w != "" {
			log.Warn(w, zap.String("key", "[agent] metrics_addr"), zap.String("value", cfg.Agent.MetricsAddr))
		}
	}
	go func() { errc <- a.Serve(ctx, sock) }()
	if tracer != nil {
		go func() {
			if err := tracer.Run(ctx, tracerEvents{a}); err != nil {
				log.Error("eBPF tracer stopped; exec-mode leases are now released by their pidfds only", zap.Error(err))
			}
		}()
	}
	sensor := adaptive.NewSensor(adaptive.SensorOptions{Policy: a.Policy, Tree: cg, OnWatcherError: exp.WatcherError, Log: log.Named("adaptive")})
	defer sensor.Close()
	go a.RunAdaptive(ctx, sensor)
	log.Info("sluiced ready",
		zap.String("version", version),
		zap.String("socket", socketPath),
		zap.String("config", cfg.Source),
		zap.String("fail_mode", cfg.Agent.FailMode),
		zap.Int("rules", len(cfg.Limits)))
	agent.ClearStopping(socketPath)
	if err := sdNotify("READY=1\nSTATUS=admitting"); err != nil {
		log.Warn("systemd notify", zap.Error(err))
	}

	pending := 1
	if cfg.Agent.MetricsAddr != "off" {
		pending = 2
	}
	var firstErr error
	for pending > 0 {
		select {
		case <-hup:
			_ = sdNotify("RELOADING=1")
			a.Reload() // logs what it applied or why it refused
			_ = sdNotify("READY=1")
		case err := <-errc:
			pending--
			if err != nil && firstErr == nil {
				firstErr = err
			}
			cancel() // one part stopping stops the other
		case <-ctx.Done():
			_ = sdNotify("STOPPING=1")
			shutdown := time.AfterFunc(10*time.Second, func() {
				log.Error("shutdown took longer than 10s; exiting")
				os.Exit(1)
			})
			defer shutdown.Stop()
			ctx = context.Background() // wait for the parts without re-entering this case
		}
	}
	// With fail_mode "closed" shim.conf stays, so that shims keep failing
	// closed while no agent runs (as under the unit, which preserves it).
	if madeRunDir && a.Policy().Agent.FailMode != policy.FailClosed {
		if err := agent.RemoveRuntimeDir(filepath.Dir(socketPath)); err != nil {
			log.Info("runtime directory kept", zap.Error(err))
		}
	}
	if cg != nil {
		// Empty unless commands still run (they outlive the agent and a
		// restart adopts them): then the tree stays for the next agent.
		if err := cg.Destroy(); err != nil {
			log.Info("cgroup tree kept", zap.String("cgroup", cg.ParentPath()), zap.Error(err))
		}
	}
	log.Info("sluiced stopped")
	return firstErr
}

// shimConfig is what the shim needs to know without parsing the policy.
func shimConfig(cfg *policy.Config) shimproto.ShimConfig {
	return shimproto.ShimConfig{
		FailClosed: cfg.Agent.FailMode == "closed",
		GitBin:     cfg.Git.Bin,
		Match:      cfg.MatchedSubcommands(),
		// The longest a shim may legitimately wait, plus slack for the
		// agent to answer.
		AdmitTimeout:       cfg.MaxQueueWait() + 2*time.Second,
		QueueFeedbackAfter: cfg.Agent.QueueFeedbackAfter.Duration,
		RestartGrace:       cfg.Agent.RestartGrace.Duration,
		PackCache:          packCacheOn(cfg),
	}
}

// limitSource feeds the exporter's limit gauges from the agent at scrape time.
type limitSource struct{ agent func() *agent.Agent }

func (s limitSource) LimitStats() []exporter.LimitStat {
	a := s.agent()
	if a == nil {
		return nil
	}
	var out []exporter.LimitStat
	for _, st := range a.Limiters() {
		out = append(out, exporter.LimitStat{Name: st.Name, InProgress: st.Running, Queued: st.Queued, CurrentLimit: st.Limit, Keys: st.Keys})
	}
	return out
}

// budgetSource feeds the exporter's host budget metrics from the agent.
type budgetSource struct{ agent func() *agent.Agent }

func (s budgetSource) BudgetStats() []exporter.BudgetStat {
	a := s.agent()
	if a == nil {
		return nil
	}
	var out []exporter.BudgetStat
	for _, b := range a.Budgets() {
		out = append(out, exporter.BudgetStat{Class: b.Class, Limit: b.Limit, InUse: b.InUse, Queued: b.Queued,
			BackloggedKeys: b.BackloggedKeys, Fairness: b.Fairness, GoodputBytesPerSecond: b.GoodputBytesPerSecond,
			Admitted: b.Admitted, DroppedSize: b.DroppedSize, DroppedTime: b.DroppedTime})
	}
	return out
}

// connSource feeds the exporter's connection metrics from the agent.
type connSource struct{ agent func() *agent.Agent }

func (s connSource) ConnectionStats() (int, map[string]uint64) {
	a := s.agent()
	if a == nil {
		return 0, nil
	}
	open, _ := a.Connections()
	return open, a.ConnectionsRejected()
}
