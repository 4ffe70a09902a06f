package ebpf

import (
	"os"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/gitwrap"
)

// SetupOptions are what Setup needs from the policy.
type SetupOptions struct {
	// Enabled is [ebpf] enabled: false loads nothing.
	Enabled bool
	// GitBin is [git] bin, the real git shims run ("" searches PATH; see
	// gitwrap.FindRealGit).
	GitBin string
	// Getenv reads the environment ($SLUICE_REAL_GIT, PATH); nil means
	// os.Getenv.
	Getenv func(string) string
}

// Setup loads the tracer for sluiced, watching the real git and the
// binaries of its exec path. It returns nil and says why (one line on
// log) when tracing is off or the kernel refuses it: shims then run
// supervised, which costs a resident shim per command but loses nothing
// else.
//
// The returned state is what `sluice status` shows: "running",
// "disabled" or "unavailable: <why>".
func Setup(opts SetupOptions, log *zap.Logger) (*Tracer, string) {
	if log == nil {
		log = zap.NewNop()
	}
	if !opts.Enabled {
		log.Info("eBPF tracing is off ([ebpf] enabled = false): shims run git as a supervised child")
		return nil, "disabled"
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	git, err := gitwrap.FindRealGit(getenv, opts.GitBin)
	if err != nil {
		log.Warn("eBPF tracing unavailable: cannot find the real git to watch; shims run git as a supervised child", zap.Error(err))
		return nil, "unavailable: " + err.Error()
	}
	bins, err := GitBinaries(git)
	if err != nil {
		log.Warn("eBPF tracing unavailable: cannot list the git binaries to watch; shims run git as a supervised child",
			zap.String("git", git), zap.Error(err))
		return nil, "unavailable: " + err.Error()
	}
	t, err := Open(Options{GitBinaries: bins})
	if err != nil {
		log.Warn("eBPF tracing unavailable: shims run git as a supervised child (fix: run sluiced as root with CAP_BPF and CAP_PERFMON on a kernel with BTF, or set [ebpf] enabled = false to silence this)",
			zap.Error(err))
		return nil, "unavailable: " + err.Error()
	}
	log.Info("eBPF tracer running: shims exec git in place; unwrapped git execs are counted",
		zap.String("git", git), zap.Int("git_binaries", len(bins)))
	return t, "running"
}
