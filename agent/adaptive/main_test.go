package adaptive

import (
	"os"
	"testing"

	"github.com/sluicehq/sluice/internal/leakcheck"
)

// TestMain fails the package when its tests leave goroutines running or
// files open.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
