package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/adaptive"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/ebpf"
	"github.com/sluicehq/sluice/policy"
)

// run.go is sluiced's lifecycle around Serve: Start opens the socket and
// takes over what a previous agent left; Run serves until a signal, a
// failure or the end, reloading on request, and cleans up.

// Start opens the admission socket at path (with [agent] socket_group),
// writes shim.conf beside it and adopts the commands a previous agent left
// running (Recover), before the first admission, so limits count them from
// the start. log gets sluiced's own lines, as given. An unsafe or unusable
// state directory stops the agent (safedir.go); a shim.conf that cannot be
// written does not.
func (a *Agent) Start(path string, log *zap.Logger) (*Socket, error) {
	pol := a.Policy()
	// A runtime directory this agent creates (run by hand, not by the
	// unit's RuntimeDirectory=) is removed again on a clean stop, unless
	// fail_mode is "closed".
	_, statErr := os.Lstat(filepath.Dir(path))
	a.madeRunDir = errors.Is(statErr, fs.ErrNotExist)
	sock, err := Listen(SocketOptions{Path: path, Group: pol.Agent.SocketGroup})
	if err != nil {
		return nil, err
	}
	a.shimConf = shimproto.ShimConfigPath(path)
	if err := a.writeShimConfig(pol); err != nil {
		// A full or read-only filesystem must not stop admission: every
		// shim would then apply its fail mode. Shims keep the shim.conf
		// they find (or their defaults) until a reload rewrites it.
		log.Error("shim settings not written; shims use the previous file or their defaults until a reload (SIGHUP) rewrites it",
			zap.String("file", a.shimConf), zap.Error(err))
	}
	// Listen refused to start beside a live agent, so the commands recorded
	// in the state directory are nobody's now.
	if adopted, stale, err := a.Recover(); err != nil {
		sock.Close()
		return nil, err
	} else if adopted+stale > 0 {
		log.Info("restart recovery", zap.Int("adopted", adopted), zap.Int("stale_records_removed", stale))
	}
	return sock, nil
}

// DefaultStopTimeout is how long Run lets its parts take to stop.
const DefaultStopTimeout = 10 * time.Second

// RunOptions are the parts Run runs beside Serve, and how it reports.
type RunOptions struct {
	// Log gets sluiced's own lines ("sluiced ready", "sluiced stopped"),
	// as given; required.
	Log *zap.Logger
	// Reload delivers reload requests (SIGHUP): each one is a Reload.
	// Nil: none.
	Reload <-chan os.Signal
	// Notify tells the service manager the state ("READY=1",
	// "RELOADING=1", "STOPPING=1"); nil tells nobody.
	Notify func(state string) error
	// Metrics, when set, serves metrics until its context ends. Run waits
	// for it as for Serve: either one ending stops the other.
	Metrics func(context.Context) error
	// Tracer, when set, feeds its events to the agent (TracerEvents)
	// until Run ends.
	Tracer *ebpf.Tracer
	// OnWatcherError counts a sample an adaptive watcher could not read;
	// nil counts nothing.
	OnWatcherError func(watcher string)
	// StopTimeout bounds the stop once ctx ends: past it Run logs and
	// calls Exit(1). 0 means DefaultStopTimeout; a nil Exit is os.Exit.
	StopTimeout time.Duration
	Exit        func(code int)
}

// Run serves sock until ctx ends or Serve or Metrics fails, with the
// tracer and the adaptive controller beside it; it says "sluiced ready"
// once it admits and applies a Reload for every value on Reload. When it
// stops it removes the runtime directory Start created (unless fail_mode
// is "closed") and the empty cgroup tree. Its error is the first part's
// failure; nil after a clean stop.
func (a *Agent) Run(ctx context.Context, sock *Socket, opts RunOptions) error {
	log := opts.Log
	notify := opts.Notify
	if notify == nil {
		notify = func(string) error { return nil }
	}
	stopTimeout, exit := opts.StopTimeout, opts.Exit
	if stopTimeout <= 0 {
		stopTimeout = DefaultStopTimeout
	}
	if exit == nil {
		exit = os.Exit
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pol := a.Policy()

	errc := make(chan error, 2)
	pending := 1
	if opts.Metrics != nil {
		pending = 2
		go func() { errc <- opts.Metrics(ctx) }()
	}
	go func() { errc <- a.Serve(ctx, sock) }()
	if opts.Tracer != nil {
		go func() {
			if err := opts.Tracer.Run(ctx, a.TracerEvents()); err != nil {
				log.Error("eBPF tracer stopped; exec-mode leases are now released by their pidfds only", zap.Error(err))
			}
		}()
	}
	sensor := adaptive.NewSensor(adaptive.SensorOptions{Policy: a.Policy, Tree: a.cgroups, OnWatcherError: opts.OnWatcherError, Log: log.Named("adaptive")})
	defer sensor.Close()
	go a.RunAdaptive(ctx, sensor)
	log.Info("sluiced ready",
		zap.String("version", a.version),
		zap.String("socket", sock.Path),
		zap.String("config", pol.Source),
		zap.String("fail_mode", pol.Agent.FailMode),
		zap.Int("rules", len(pol.Limits)))
	ClearStopping(sock.Path)
	if err := notify("READY=1\nSTATUS=admitting"); err != nil {
		log.Warn("systemd notify", zap.Error(err))
	}

	var firstErr error
	stop := ctx.Done()
	for pending > 0 {
		select {
		case <-opts.Reload:
			_ = notify("RELOADING=1")
			a.Reload() // logs what it applied or why it refused
			_ = notify("READY=1")
		case err := <-errc:
			pending--
			if err != nil && firstErr == nil {
				firstErr = err
			}
			cancel() // one part stopping stops the other
		case <-stop:
			_ = notify("STOPPING=1")
			shutdown := time.AfterFunc(stopTimeout, func() {
				log.Error("shutdown took longer than " + stopTimeout.String() + "; exiting")
				exit(1)
			})
			defer shutdown.Stop()
			stop = nil // wait for the parts without re-entering this case
		}
	}
	if stop != nil {
		// The parts ended before the select saw the stop (both were ready
		// at once, or a part failed): the service manager still hears it.
		_ = notify("STOPPING=1")
	}
	// With fail_mode "closed" shim.conf stays, so that shims keep failing
	// closed while no agent runs (as under the unit, which preserves it).
	if a.madeRunDir && a.Policy().Agent.FailMode != policy.FailClosed {
		if err := RemoveRuntimeDir(filepath.Dir(sock.Path)); err != nil {
			log.Info("runtime directory kept", zap.Error(err))
		}
	}
	if a.cgroups != nil {
		// Empty unless commands still run (they outlive the agent and a
		// restart adopts them): then the tree stays for the next agent.
		if err := a.cgroups.Destroy(); err != nil {
			log.Info("cgroup tree kept", zap.String("cgroup", a.cgroups.ParentPath()), zap.Error(err))
		}
	}
	log.Info("sluiced stopped")
	return firstErr
}
