//go:build !linux

package ebpf

import (
	"fmt"
	"runtime"
)

// selfCapEff has no capabilities to read outside Linux.
func selfCapEff() (uint64, error) {
	return 0, fmt.Errorf("no Linux capabilities on %s", runtime.GOOS)
}
