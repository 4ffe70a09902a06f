package ebpf

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// GitBinaries returns what Options.GitBinaries should hold for the real
// git at path git: git itself and every regular file in its
// `git --exec-path` directory (symlinks such as git-upload-pack -> git
// followed). git must be the real git, not the sluice shim.
func GitBinaries(git string) ([]string, error) {
	out, err := exec.Command(git, "--exec-path").Output()
	if err != nil {
		return nil, fmt.Errorf("run %s --exec-path: %w", git, err)
	}
	dir := strings.TrimSpace(string(out))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list git exec path: %w", err)
	}
	bins := []string{git}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p) // follows symlinks
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			continue
		}
		bins = append(bins, p)
	}
	return bins, nil
}
