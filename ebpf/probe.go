package ebpf

import (
	"errors"
	"os"
)

// KernelBTF is where the kernel exposes its BTF, which the tracer's
// programs are loaded against.
const KernelBTF = "/sys/kernel/btf/vmlinux"

// capBPF is CAP_BPF's bit in the effective capability set.
const capBPF = 39

// ProbeOptions say what Probe looks at; the zero value is this host and
// this process.
type ProbeOptions struct {
	// BTF is the kernel BTF file; "" means KernelBTF.
	BTF string
	// CapEff returns the effective capabilities of the process that would
	// load the tracer (CapEff of /proc/PID/status); nil asks capget(2) for
	// this process's.
	CapEff func() (uint64, error)
}

// The steps at which Probe finds the tracer cannot load (ProbeError.Step),
// in the order it tries them.
const (
	// ProbeBTF: the kernel BTF file is missing.
	ProbeBTF = "kernel BTF"
	// ProbeCaps: the capabilities could not be read.
	ProbeCaps = "read capabilities"
	// ProbeCapBPF: CAP_BPF is not effective.
	ProbeCapBPF = "CAP_BPF"
)

// ProbeError says why the tracer cannot load here. It matches
// ErrUnavailable (errors.Is) and unwraps to the underlying error.
type ProbeError struct {
	Step string
	Err  error
}

func (e *ProbeError) Error() string {
	return ErrUnavailable.Error() + ": " + e.Step + ": " + e.Err.Error()
}

// Unwrap returns ErrUnavailable and the underlying error.
func (e *ProbeError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }

// errNoCapBPF is ProbeError.Err at ProbeCapBPF.
var errNoCapBPF = errors.New("CAP_BPF is not in the effective capability set")

// Probe reports whether the tracer can load here, as `sluice check` asks
// before sluiced tries: the kernel has BTF and the process has CAP_BPF.
// Nil means both are there (the kernel may still refuse the programs;
// Open says why then); otherwise a *ProbeError names the first thing
// missing. It loads nothing.
func Probe(opts ProbeOptions) error {
	btf := opts.BTF
	if btf == "" {
		btf = KernelBTF
	}
	if _, err := os.Stat(btf); err != nil {
		return &ProbeError{Step: ProbeBTF, Err: err}
	}
	capEff := opts.CapEff
	if capEff == nil {
		capEff = selfCapEff
	}
	caps, err := capEff()
	if err != nil {
		return &ProbeError{Step: ProbeCaps, Err: err}
	}
	if caps&(1<<capBPF) == 0 {
		return &ProbeError{Step: ProbeCapBPF, Err: errNoCapBPF}
	}
	return nil
}
