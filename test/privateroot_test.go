package test

// privateroot_test.go runs the end-to-end tests in a private view of the
// machine's system directories, so that the package tests (dpkg -i / purge,
// useradd, groupadd) coexist with whatever the machine has:
//
//   - TestMain re-executes the test binary in a new mount namespace
//     (CLONE_NEWNS, propagation private);
//   - there, /usr, /etc and /var are each covered by an overlayfs whose
//     lower layer is the real directory and whose upper layer is a fresh
//     directory under $TMPDIR;
//   - a sluice package already installed on the machine (any version) is
//     purged inside that view before the tests start, so the tests install
//     and purge their own build without touching the operator's;
//   - /run is covered too, and /run/sluice starts empty in the view, so a
//     test agent can listen at the default socket path (the guides' wiring
//     has no SLUICE_SOCKET) and a purge's `rm -rf /run/sluice` never
//     reaches a sluiced of the machine's;
//   - at exit the namespace goes away with the process and the upper layers
//     are removed: nothing the tests installed, created or left half-done
//     (a package, a user, a group, a dpkg lock) survives, even after a crash.
//
// dpkg's lock files are copied up into the private /var on first use, so a
// dpkg or apt running outside (another test run, unattended-upgrades) never
// blocks the tests and the tests never block it.
//
// Without root or without overlayfs the tests run in the machine's own view,
// as before, and the package tests refuse to run beside an installed sluice
// (see installPackage).

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// privateRootEnv is set, to the directory of the upper layers, in the
// re-executed test binary.
const privateRootEnv = "SLUICE_E2E_PRIVATE_ROOT"

// privateRunDir is the default socket directory; it starts empty in the
// private view.
const privateRunDir = "/run/sluice"

// privateDirs are the directories the private view covers: everything dpkg,
// useradd, the maintainer scripts and the servers write (/lib is a symlink to usr/lib
// here, as on every merged-/usr system).
var privateDirs = []string{"/usr", "/etc", "/var", "/run"}

// inPrivateRoot reports whether this process runs in the private view.
func inPrivateRoot() bool { return os.Getenv(privateRootEnv) != "" }

// reexecInPrivateRoot runs this test binary again in a new mount namespace
// and returns its exit code; ok is false (with the reason) when the private
// view cannot be had here, and the caller then runs the tests in place.
func reexecInPrivateRoot() (code int, ok bool, why string) {
	if os.Geteuid() != 0 {
		return 0, false, "not root"
	}
	if !overlayAvailable() {
		return 0, false, "the kernel has no overlayfs (modprobe overlay)"
	}
	dir, err := os.MkdirTemp("", "sluice-e2e-root-")
	if err != nil {
		return 0, false, err.Error()
	}
	defer os.RemoveAll(dir)
	exe, err := os.Executable()
	if err != nil {
		return 0, false, err.Error()
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), privateRootEnv+"="+dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, true, ""
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), true, ""
	case errors.As(err, &ee):
		return 1, true, "" // killed: its output says why
	default:
		return 0, false, "re-execute in a new mount namespace: " + err.Error()
	}
}

func overlayAvailable() bool {
	b, err := os.ReadFile("/proc/filesystems")
	return err == nil && strings.Contains(string(b), "\toverlay\n")
}

// setUpPrivateRoot, in the re-executed binary, makes the mount namespace
// private and covers privateDirs with overlays, then purges a sluice
// package the machine had installed (in this view only).
func setUpPrivateRoot() error {
	dir := os.Getenv(privateRootEnv)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private in the test's mount namespace: %w", err)
	}
	for _, d := range privateDirs {
		base := filepath.Join(dir, strings.TrimPrefix(d, "/"))
		upper, work := base+"/upper", base+"/work"
		for _, p := range []string{upper, work} {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		}
		opts := "lowerdir=" + d + ",upperdir=" + upper + ",workdir=" + work
		if err := unix.Mount("overlay", d, "overlay", 0, opts); err != nil {
			return fmt.Errorf("overlay on %s (%s): %w", d, opts, err)
		}
	}
	// /run/sluice, the default socket directory, starts empty in the view:
	// the guide tests run an agent at the path every shim uses without
	// SLUICE_SOCKET, while a sluiced of the machine's keeps its own.
	if err := os.RemoveAll(privateRunDir); err != nil {
		return fmt.Errorf("clear %s in the private view: %w", privateRunDir, err)
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status} ${Version}", "sluice").Output(); err == nil && strings.Contains(string(out), "installed") {
		fmt.Printf("e2e: this machine has sluice %s installed; purging it in the tests' private view only (the machine keeps it)\n",
			strings.TrimSpace(strings.TrimPrefix(string(out), "install ok installed")))
		if out, err := exec.Command("dpkg", "--purge", "sluice").CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg --purge sluice in the private view: %v\n%s", err, out)
		}
	}
	return nil
}
