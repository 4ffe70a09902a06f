package cgroup

import (
	"runtime"
	"strings"
	"testing"
)

// TestAllowedCPUs: the CPUs this process may use are at most its
// affinity mask, more than zero, and the answer says where it came from.
func TestAllowedCPUs(t *testing.T) {
	n, why := AllowedCPUs("")
	if n <= 0 || n > float64(runtime.NumCPU()) {
		t.Fatalf("AllowedCPUs = %v (%s), want (0, %d]", n, why, runtime.NumCPU())
	}
	if !strings.Contains(why, "affinity mask") {
		t.Errorf("why = %q", why)
	}
	t.Logf("%.3g CPUs: %s", n, why)
}
