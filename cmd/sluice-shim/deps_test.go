package main

import (
	"os/exec"
	"strings"
	"testing"
)

// forbidden are packages the shim must not link: each costs start-up time
// on every git process (package init, binary size) or drags in one that does.
var forbidden = []string{
	"google.golang.org/grpc",     // ~1.5–2.4 ms of package init
	"google.golang.org/protobuf", // internal/detrand hashes the executable at init
	"go.uber.org/zap",
	"github.com/prometheus/",
	"github.com/cilium/ebpf",
	"github.com/shirou/gopsutil",
	"github.com/containerd/cgroups",
	"github.com/pelletier/go-toml",
	"golang.org/x/net",
	"net", // ~0.9 ms more than raw syscalls
	"net/http",
	"os/exec",
	"os/user",
	"crypto/",
	"encoding/json",
	"encoding/binary", // links reflect
	"reflect",
	"fmt", // links reflect
	"log",
	"log/syslog", // links net
}

func TestShimDependencyBudget(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/sluicehq/sluice/cmd/sluice-shim").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list returned too little: %q", deps)
	}
	for _, dep := range deps {
		for _, bad := range forbidden {
			if dep == bad || (strings.HasSuffix(bad, "/") && strings.HasPrefix(dep, bad)) ||
				(!strings.HasSuffix(bad, "/") && strings.Contains(bad, ".") && strings.HasPrefix(dep, bad+"/")) {
				t.Errorf("sluice-shim links %s (forbidden: %s)", dep, bad)
			}
		}
	}
}
