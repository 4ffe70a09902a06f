// Command sluiced is the sluice agent: it admits git processes started
// through the shim, enforces the policy's keyed concurrency limits and
// exports metrics. See DESIGN.md and the README for how to run it.
//
// It holds flags, config loading, the logger, signals, systemd notify and
// the wiring of the parts; what they do is in the packages it wires
// (agent.Start and agent.Run for the lifecycle, cgroup.Setup, ebpf.Setup,
// packcache.Open, exporter).
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

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/agent/packcache"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/ebpf"
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

// serve wires the agent's parts together from cfg and runs them until a
// signal or a failure: cgroups, the eBPF tracer and the pack cache (each
// says in one log line whether it runs), the exporter, the admission
// socket and the metrics listener.
func serve(cfg *policy.Config, configFile string, log *zap.Logger) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	cg, cgState, err := cgroup.Setup(cgroup.SetupOptions{Enabled: cfg.Cgroups.Enabled, Required: cfg.Cgroups.Required,
		Config: agent.CgroupConfig(&cfg.Cgroups)}, log)
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
	if cg != nil {
		expOpts.Cgroups = exporter.FromCgroups(cg, func() uint64 { return a.PlacementFailures() })
	}
	exp := exporter.New(expOpts)
	exp.SetLimits(cfg.RuleNames())
	socketPath := shimproto.SocketPath(cfg.Agent.Socket)
	opts := agent.Options{
		Policy: cfg, Log: log, Observer: exp, Version: version, ConfigPath: configFile,
		StateDir: filepath.Join(filepath.Dir(socketPath), "leases"),
		OnReload: func(c *policy.Config) []string { exp.SetLimits(c.RuleNames()); return nil },
		Cgroups:  cg, CgroupState: cgState,
	}
	tracer, tracerState := ebpf.Setup(ebpf.SetupOptions{Enabled: cfg.EBPF.Enabled, GitBin: cfg.Git.Bin}, log)
	opts.TracerState = tracerState
	if tracer != nil {
		defer tracer.Close()
		opts.Tracer = tracer
		exp.RegisterTracer(exporter.FromTracer(tracer))
	}
	if p := cfg.PackCache; p.Enabled {
		pc := packcache.Open(packcache.Config{Dir: p.Dir, MaxAge: p.MaxAge.Duration, MaxBytes: p.MaxBytes, MinOccurrences: p.MinOccurrences}, log)
		if pc != nil {
			defer pc.Close()
			opts.PackCache = pc
			exp.RegisterPackCache(exporter.FromPackCache(pc))
		}
	}
	a = agent.New(opts)

	sock, err := a.Start(socketPath, log)
	if err != nil {
		return err
	}
	run := agent.RunOptions{Log: log, Reload: hup, Notify: sdNotify, Tracer: tracer, OnWatcherError: exp.WatcherError}
	if cfg.Agent.MetricsAddr != "off" {
		ln, err := exp.Open(cfg.Agent.MetricsAddr, log)
		if err != nil {
			sock.Close()
			return err
		}
		run.Metrics = func(ctx context.Context) error { return exp.Serve(ctx, ln, log.Named("exporter")) }
	}
	return a.Run(ctx, sock, run)
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
