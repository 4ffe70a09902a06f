package test

// package_test.go builds the Debian package (packaging/build-deb.sh, what
// `make deb` runs), checks it is reproducible and lintian-clean, installs
// it with dpkg and removes it again. usePackage installs it for the server
// tests in servers_test.go, so they run the package's files, not the build
// tree; each test that uses it purges it again at its end.

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// debBuild is the package built once per test run, into bins.dir (removed
// by TestMain).
var debBuild struct {
	once sync.Once
	path string
	err  error
	log  string
}

// buildDeb builds the package into dir and returns its path.
func buildDeb(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command("packaging/build-deb.sh", dir)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build-deb.sh: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// needDpkg skips unless dpkg can install packages here.
func needDpkg(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"dpkg", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: not a Debian machine", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("installing a package with dpkg needs root")
	}
}

// theDeb returns the package built once for this run.
func theDeb(t *testing.T) string {
	t.Helper()
	needDpkg(t)
	debBuild.once.Do(func() {
		dir := filepath.Join(bins.dir, "deb")
		cmd := exec.Command("packaging/build-deb.sh", dir)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		debBuild.path, debBuild.err, debBuild.log = strings.TrimSpace(string(out)), err, stderr.String()
	})
	if debBuild.err != nil {
		t.Fatalf("build-deb.sh: %v\n%s", debBuild.err, debBuild.log)
	}
	return debBuild.path
}

func pkgRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// packageFiles are what the package must install (path → symlink target,
// "" for a regular file).
var packageFiles = map[string]string{
	"/usr/bin/sluiced":                            "",
	"/usr/bin/sluice":                             "",
	"/usr/bin/sluice-shim":                        "",
	"/usr/lib/sluice/bin/git":                     "../../../bin/sluice-shim",
	"/usr/lib/sluice/bin/git-upload-pack":         "../../../bin/sluice-shim",
	"/usr/lib/sluice/bin/git-receive-pack":        "../../../bin/sluice-shim",
	"/usr/lib/sluice/bin/git-upload-archive":      "../../../bin/sluice-shim",
	"/usr/lib/sluice/git-core/git":                "../../../bin/sluice-shim",
	"/usr/lib/sluice/git-core/git-upload-pack":    "../../../bin/sluice-shim",
	"/usr/lib/sluice/git-core/git-receive-pack":   "../../../bin/sluice-shim",
	"/usr/lib/sluice/git-core/git-upload-archive": "../../../bin/sluice-shim",
	"/lib/systemd/system/sluiced.service":         "",
	"/usr/lib/sysusers.d/sluice.conf":             "",
	"/etc/sluice/sluice.toml":                     "",
	"/usr/share/sluice/gitconfig":                 "",
	"/usr/share/sluice/grafana-dashboard.json":    "",
	"/usr/share/sluice/prometheus-rules.yml":      "",
	"/usr/share/doc/sluice/copyright":             "",
	"/usr/share/doc/sluice/changelog.Debian.gz":   "",
	"/usr/share/doc/sluice/README.md":             "",
	"/usr/share/lintian/overrides/sluice":         "",
}

// installPackage installs the package with dpkg -i, and purges it (and the
// group sluice, when this test created it) at the end of t. It returns what
// dpkg printed.
func installPackage(t *testing.T) string {
	t.Helper()
	deb := theDeb(t)
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "sluice").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("the sluice package is already installed (%s): the tests install and purge it themselves; remove it first (dpkg -P sluice)", out)
	}
	hadGroup := exec.Command("getent", "group", "sluice").Run() == nil
	t.Cleanup(func() {
		if out, err := exec.Command("dpkg", "--purge", "sluice").CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge sluice: %v\n%s", err, out)
		}
		if !hadGroup {
			exec.Command("groupdel", "sluice").Run()
		}
	})
	return pkgRun(t, "dpkg", "-i", deb)
}

// usePackage installs the package for a server test; see installPackage.
func usePackage(t *testing.T) {
	t.Helper()
	installPackage(t)
}

func TestPackageReproducible(t *testing.T) {
	needDpkg(t)
	first := theDeb(t)
	second := buildDeb(t, t.TempDir())
	if filepath.Base(first) != filepath.Base(second) {
		t.Fatalf("names differ: %s vs %s", first, second)
	}
	a, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds of the same tree differ: %s (%d bytes) vs %s (%d bytes)", first, len(a), second, len(b))
	}
}

func TestPackageLintian(t *testing.T) {
	deb := theDeb(t)
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Skip("lintian is not installed (apt-get install lintian)")
	}
	// Every tag lintian would raise is either fixed or overridden with its
	// justification (packaging/debian/lintian-overrides, README.md).
	out, err := exec.Command("lintian", "--fail-on", "error,warning", deb).CombinedOutput()
	var tags []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
			tags = append(tags, l)
		}
	}
	if err != nil || len(tags) > 0 {
		t.Fatalf("lintian: %v\n%s", err, out)
	}
}

func TestPackageInstallRemove(t *testing.T) {
	deb := theDeb(t)
	// Contents as built.
	listing := pkgRun(t, "dpkg-deb", "-c", deb)
	for _, l := range strings.Split(strings.TrimSpace(listing), "\n") {
		if f := strings.Fields(l); len(f) < 2 || f[1] != "root/root" {
			t.Errorf("not owned by root/root: %s", l)
		}
	}
	t.Run("installed", func(t *testing.T) {
		dpkgOut := installPackage(t)
		for path, target := range packageFiles {
			st, err := os.Lstat(path)
			if err != nil {
				t.Errorf("%s: %v", path, err)
				continue
			}
			if target != "" {
				got, err := os.Readlink(path)
				if err != nil || got != target {
					t.Errorf("%s → %q (%v), want → %s", path, got, err, target)
				}
				continue
			}
			if !st.Mode().IsRegular() {
				t.Errorf("%s is %v, want a regular file", path, st.Mode())
			}
		}
		// The conffile is exactly the embedded default policy.
		conf, _ := os.ReadFile("/etc/sluice/sluice.toml")
		defaults := pkgRun(t, "/usr/bin/sluice", "validate", "--print-defaults")
		if string(conf) != defaults {
			t.Errorf("/etc/sluice/sluice.toml is not `sluice validate --print-defaults`")
		}
		pkgRun(t, "/usr/bin/sluice", "validate", "/etc/sluice/sluice.toml")
		if got := pkgRun(t, "dpkg-query", "-W", "-f=${Conffiles}", "sluice"); !strings.Contains(got, "/etc/sluice/sluice.toml") {
			t.Errorf("/etc/sluice/sluice.toml is not a conffile: %q", got)
		}
		// The shim links reach the installed shim; the dashed names too.
		if out := pkgRun(t, "/usr/lib/sluice/bin/git", "--version"); !strings.HasPrefix(out, "git version") {
			t.Errorf("the shim as git --version: %q", out)
		}
		if exec.Command("getent", "group", "sluice").Run() != nil {
			t.Errorf("postinst did not create the group sluice")
		}
		if _, err := os.Stat("/run/systemd/system"); err != nil {
			// Without systemd the maintainer scripts start nothing, and
			// say how to start it.
			if !strings.Contains(dpkgOut, "sluice:     /usr/bin/sluiced --config /etc/sluice/sluice.toml") {
				t.Errorf("postinst without systemd does not say how to start sluiced; dpkg printed:\n%s", dpkgOut)
			}
			exes, _ := filepath.Glob("/proc/[0-9]*/exe")
			for _, exe := range exes {
				if target, err := os.Readlink(exe); err == nil && target == "/usr/bin/sluiced" {
					t.Errorf("postinst started sluiced without systemd: %s", exe)
				}
			}
		}
		if _, err := exec.LookPath("systemd-analyze"); err == nil {
			out, err := exec.Command("systemd-analyze", "verify", "/lib/systemd/system/sluiced.service").CombinedOutput()
			if err != nil {
				t.Errorf("systemd-analyze verify sluiced.service: %v\n%s", err, out)
			}
		}
	})
	// installPackage's cleanup purged it: nothing of it may be left.
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "sluice").CombinedOutput(); err == nil && strings.Contains(string(out), "installed") {
		t.Errorf("still installed after purge: %s", out)
	}
	for path := range packageFiles {
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("%s left after purge", path)
		}
	}
	for _, dir := range []string{"/etc/sluice", "/usr/lib/sluice", "/usr/share/sluice", "/usr/share/doc/sluice", "/run/sluice"} {
		if _, err := os.Lstat(dir); err == nil {
			t.Errorf("%s left after purge", dir)
		}
	}
}
