//go:build !linux || !(386 || amd64 || arm64)

package ebpf

import (
	"context"
	"fmt"
	"runtime"
)

// Tracer is unavailable on this platform; Open always fails.
type Tracer struct{}

// Open reports ErrUnavailable: the programs are built for Linux on
// amd64/386/arm64 only.
func Open(Options) (*Tracer, error) {
	return nil, fmt.Errorf("%w: no BPF programs built for %s/%s", ErrUnavailable, runtime.GOOS, runtime.GOARCH)
}

// Track is never reached: Open fails here.
func (*Tracer) Track(int) (int, error) { return 0, ErrUnavailable }

// Untrack does nothing here.
func (*Tracer) Untrack(int) {}

// Run returns at once here.
func (*Tracer) Run(context.Context, Handler) error { return ErrUnavailable }

// Stats are zero here.
func (*Tracer) Stats() Stats { return Stats{} }

// Close does nothing here.
func (*Tracer) Close() error { return nil }

// ProgramStats reports ErrUnavailable here.
func (*Tracer) ProgramStats() ([]ProgramStat, error) { return nil, ErrUnavailable }
