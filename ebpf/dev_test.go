//go:build linux && (386 || amd64 || arm64)

package ebpf

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestKernelDev(t *testing.T) {
	// stat(2) encodes 259:1 as 0x10301; the kernel's s_dev is 259<<20|1.
	if got := kernelDev(unix.Mkdev(259, 1)); got != 259<<20|1 {
		t.Errorf("kernelDev(259:1) = %#x, want %#x", got, 259<<20|1)
	}
	if got := kernelDev(unix.Mkdev(8, 300)); got != 8<<20|300 {
		t.Errorf("kernelDev(8:300) = %#x, want %#x", got, 8<<20|300)
	}
}

func TestInodeKeysCollapseSymlinks(t *testing.T) {
	keys, err := inodeKeys([]string{"/usr/lib/git-core/git", "/usr/lib/git-core/git-upload-pack", "/usr/lib/git-core/git-pack-objects"})
	if err != nil {
		t.Skipf("git-core not installed here: %v", err)
	}
	if len(keys) != 1 {
		t.Errorf("inodeKeys = %d keys, want 1 (all are git)", len(keys))
	}
	if _, err := inodeKeys([]string{"/nonexistent/git"}); err == nil {
		t.Error("inodeKeys of a missing file: no error")
	}
}
