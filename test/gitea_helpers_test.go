package test

// gitea_helpers_test.go runs a real Gitea (built by test/gitea-build.sh and
// cached by version) headless on loopback with sqlite, as an unprivileged
// user, wired to a sluiced from startAgent through the Gitea guide's blocks
// in packaging/README.md, read from that file.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// giteaVersion is the Gitea the tests build and run.
const giteaVersion = "v1.26.0"

// giteaCache is where test/gitea-build.sh puts the binary and the options/
// and templates/ trees it reads at run time; patch is "" or the name of a
// patch under test/ (without .patch) the build applied.
func giteaCache(patch string) string {
	if d := os.Getenv("SLUICE_GITEA_CACHE"); d != "" && patch == "" {
		return d
	}
	suffix := ""
	if patch != "" {
		suffix = "+" + patch
	}
	return "/var/cache/sluice-test/gitea-" + giteaVersion + suffix
}

// giteaBinary returns the cached Gitea (patched with test/<patch>.patch
// unless patch is ""), building it when SLUICE_TEST_GITEA is "build".
// "auto" (the default) uses a cached build and skips without one; "skip"
// always skips.
func giteaBinary(t *testing.T, patch string) string {
	t.Helper()
	mode := os.Getenv("SLUICE_TEST_GITEA")
	if mode == "" {
		mode = "auto"
	}
	cache := giteaCache(patch)
	bin := filepath.Join(cache, "gitea")
	cached := func() bool {
		_, err1 := os.Stat(filepath.Join(cache, "ok"))
		_, err2 := os.Stat(bin)
		return err1 == nil && err2 == nil
	}
	what := "Gitea " + giteaVersion
	args := []string{giteaVersion}
	if patch != "" {
		what += " with test/" + patch + ".patch"
		args = append(args, patch+".patch")
	}
	switch mode {
	case "skip":
		t.Skip("SLUICE_TEST_GITEA=skip: the Gitea tests do not run")
	case "auto":
		if !cached() {
			t.Skipf("%s is not built in %s: run `make test-gitea` (builds it once, minutes; later runs use the cache) or set SLUICE_TEST_GITEA=build", what, cache)
		}
	case "build":
		if !cached() {
			start := time.Now()
			cmd := exec.Command("./gitea-build.sh", args...)
			cmd.Env = append(os.Environ(), "SLUICE_GITEA_CACHE="+cache)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("test/gitea-build.sh %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			t.Logf("built %s in %v", what, time.Since(start).Round(time.Second))
		}
	default:
		t.Fatalf("SLUICE_TEST_GITEA=%q: want build, auto or skip", mode)
	}
	if !cached() {
		t.Fatalf("no %s in %s after the build", what, cache)
	}
	return bin
}

// giteaGuide returns the fenced block that follows `<!-- gitea:NAME -->` in
// packaging/README.md, with the package's paths mapped to the binaries
// under test (and more old, new pairs in extra). Nothing else is changed.
func giteaGuide(t *testing.T, name string, a *agentProc, extra ...string) string {
	t.Helper()
	b, err := os.ReadFile("../packaging/README.md")
	if err != nil {
		t.Fatal(err)
	}
	marker := "<!-- gitea:" + name + " -->\n"
	_, rest, ok := strings.Cut(string(b), marker)
	if !ok {
		t.Fatalf("packaging/README.md has no %q block", strings.TrimSpace(marker))
	}
	if !strings.HasPrefix(rest, "```") {
		t.Fatalf("packaging/README.md: %q is not followed by a fenced block", strings.TrimSpace(marker))
	}
	_, rest, _ = strings.Cut(rest, "\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatalf("packaging/README.md: the %q block is not closed", strings.TrimSpace(marker))
	}
	return strings.NewReplacer(append([]string{installedBin, a.shimBin, installedShim, bins.shim}, extra...)...).Replace(block)
}

// giteaUser is the user Gitea runs as: a fresh one, or the test skips
// (also when the Gitea built with patch, see giteaBinary, is missing).
func giteaUser(t *testing.T, patch string) *user.User {
	t.Helper()
	giteaBinary(t, patch)
	if os.Geteuid() != 0 {
		t.Skip("the Gitea tests need root: they run Gitea as a fresh unprivileged user")
	}
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen is not installed (apt-get install openssh-client)")
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh is not installed (apt-get install openssh-client)")
	}
	return tempUser(t, "sluicetest-gitea-")
}

// tempUser creates an unprivileged user (and its group) for the test
// (users_test.go); prefix is "sluicetest-<tag>-".
func tempUser(t *testing.T, prefix string) *user.User {
	t.Helper()
	tag := strings.TrimSuffix(strings.TrimPrefix(prefix, "sluicetest-"), "-")
	u, err := user.Lookup(newTestUser(t, tag).name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// giteaServer is a running Gitea.
type giteaServer struct {
	t          *testing.T
	bin        string
	dir        string // work path: custom/conf/app.ini, data/, repos/, log/
	conf       string
	http, ssh  int
	url        string // http://127.0.0.1:PORT
	user       *user.User
	uid, gid   int
	env        []string // Gitea's environment
	admin      string
	password   string
	token      string
	sshCommand string // GIT_SSH_COMMAND for clients
	cmd        *exec.Cmd
}

// giteaAppIni is a headless Gitea: sqlite, loopback HTTP and its built-in
// SSH server, no mail, no registration, no background jobs that run git on
// their own. gitWiring is appended (the guide's block, or none).
func (g *giteaServer) appIni(gitWiring string) string {
	var secret [32]byte
	rand.Read(secret[:])
	return fmt.Sprintf(`APP_NAME = sluice test
RUN_USER = %[1]s
RUN_MODE = prod
WORK_PATH = %[2]s

[server]
PROTOCOL = http
HTTP_ADDR = 127.0.0.1
HTTP_PORT = %[3]d
DOMAIN = 127.0.0.1
ROOT_URL = http://127.0.0.1:%[3]d/
LOCAL_ROOT_URL = http://127.0.0.1:%[3]d/
APP_DATA_PATH = %[2]s/data
STATIC_ROOT_PATH = %[5]s
START_SSH_SERVER = true
SSH_DOMAIN = 127.0.0.1
SSH_LISTEN_HOST = 127.0.0.1
SSH_PORT = %[4]d
SSH_LISTEN_PORT = %[4]d
OFFLINE_MODE = true
LFS_START_SERVER = false

[database]
DB_TYPE = sqlite3
PATH = %[2]s/data/gitea.db

[repository]
ROOT = %[2]s/repos

[security]
INSTALL_LOCK = true
SECRET_KEY = %[6]s
INTERNAL_TOKEN = %[6]s%[6]s

[oauth2]
ENABLED = false

[service]
DISABLE_REGISTRATION = true
REQUIRE_SIGNIN_VIEW = false

[session]
PROVIDER = memory

[cache]
ADAPTER = memory

[mailer]
ENABLED = false

[actions]
ENABLED = false

[cron]
ENABLED = false

[cron.update_checker]
ENABLED = false

[log]
MODE = file
LEVEL = Info
ROOT_PATH = %[2]s/log

%[7]s`, g.user.Username, g.dir, g.http, g.ssh, filepath.Dir(g.bin), hex.EncodeToString(secret[:]), gitWiring)
}

// giteaOpts are extras for newGitea.
type giteaOpts struct {
	patch  string   // run the Gitea built with test/<patch>.patch
	env    []string // more environment for Gitea
	cgroup string   // a cgroup directory (cgroup.procs) to start Gitea in
}

// newGitea prepares and starts Gitea as the unprivileged user u (see
// giteaUser), with gitWiring (an app.ini fragment). The admin user, its
// token and its SSH key are created.
func newGitea(t *testing.T, u *user.User, gitWiring string, opts giteaOpts) *giteaServer {
	t.Helper()
	bin := giteaBinary(t, opts.patch)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	g := &giteaServer{t: t, bin: bin, dir: t.TempDir(), user: u, uid: uid, gid: gid,
		http: freePort(t), ssh: freePort(t), admin: "sluiceadmin"}
	var pw [12]byte
	rand.Read(pw[:])
	g.password = "Pw-" + hex.EncodeToString(pw[:])
	g.url = fmt.Sprintf("http://127.0.0.1:%d", g.http)
	traversable(t, g.dir)
	for _, d := range []string{"custom/conf", "data", "repos", "log", "client"} {
		if err := os.MkdirAll(filepath.Join(g.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	g.conf = filepath.Join(g.dir, "custom/conf/app.ini")
	if err := os.WriteFile(g.conf, []byte(g.appIni(gitWiring)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"custom", "custom/conf", "custom/conf/app.ini", "data", "repos", "log"} {
		if err := os.Chown(filepath.Join(g.dir, p), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(g.dir, uid, gid)
	g.env = append([]string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + filepath.Join(g.dir, "data"),
		"USER=" + u.Username,
		"GITEA_WORK_DIR=" + g.dir,
		"LANG=C",
	}, opts.env...)

	g.run("migrate")
	g.run("admin", "user", "create", "--username", g.admin, "--password", g.password,
		"--email", "admin@sluice.invalid", "--admin", "--must-change-password=false")
	g.token = strings.TrimSpace(g.run("admin", "user", "generate-access-token", "--username", g.admin,
		"--token-name", "test", "--scopes", "all", "--raw"))

	logf := filepath.Join(g.dir, "log", "stdout.log")
	g.cmd = startGroupAs(t, g.env, logf, &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, g.bin, "--config", g.conf, "--work-path", g.dir, "web")
	if opts.cgroup != "" {
		// Before Gitea has run any git: its children inherit the cgroup.
		if err := os.WriteFile(filepath.Join(opts.cgroup, "cgroup.procs"), []byte(strconv.Itoa(g.cmd.Process.Pid)), 0o644); err != nil {
			t.Fatalf("move Gitea into %s: %v", opts.cgroup, err)
		}
	}
	waitFor(t, 60*time.Second, "Gitea's API on "+g.url, func() bool {
		resp, err := http.Get(g.url + "/api/v1/version")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	waitListening(t, g.ssh, "Gitea's SSH server")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(g.dir, "log", "gitea.log"))
			t.Logf("gitea.log:\n%s", tail(string(b), 8000))
		}
	})

	// An SSH key for the admin.
	key := filepath.Join(g.dir, "client", "id_ed25519")
	pkgRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
	pub, _ := os.ReadFile(key + ".pub")
	g.api("POST", "/api/v1/user/keys", map[string]any{"title": "test", "key": strings.TrimSpace(string(pub))}, nil)
	g.sshCommand = "ssh -F /dev/null -i " + key + " -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR -o BatchMode=yes"
	return g
}

// run runs a gitea CLI command as Gitea's user and returns its stdout.
func (g *giteaServer) run(args ...string) string {
	g.t.Helper()
	cmd := exec.Command(g.bin, append([]string{"--config", g.conf, "--work-path", g.dir}, args...)...)
	cmd.Env = g.env
	cmd.Dir = g.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(g.uid), Gid: uint32(g.gid)}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		g.t.Fatalf("gitea %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// api calls Gitea's API as the admin; out (if not nil) receives the JSON
// answer. It fails the test on a status >= 300.
func (g *giteaServer) api(method, path string, body any, out any) {
	g.t.Helper()
	code, b := g.apiTry(method, path, body)
	if code >= 300 {
		g.t.Fatalf("%s %s: HTTP %d: %s", method, path, code, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			g.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

func (g *giteaServer) apiTry(method, path string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, g.url+path, rd)
	req.Header.Set("Authorization", "token "+g.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// createRepo creates an empty public repository of the admin and pushes
// src's branches and tags into it over HTTP.
func (g *giteaServer) createRepo(name, src string) {
	g.t.Helper()
	g.api("POST", "/api/v1/user/repos", map[string]any{"name": name, "private": false, "default_branch": "main"}, nil)
	if out, err := gitTry(src, baseEnv(src), "push", "-q", g.pushURL(name), "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"); err != nil {
		g.t.Fatalf("initial push of %s: %v\n%s", name, err, out)
	}
	// Gitea marks the repository non-empty after the push, asynchronously.
	waitFor(g.t, 30*time.Second, "Gitea to see "+name+" as not empty", func() bool {
		var info struct{ Empty bool }
		g.api("GET", fmt.Sprintf("/api/v1/repos/%s/%s", g.admin, name), nil, &info)
		return !info.Empty
	})
}

// httpURL is the anonymous clone URL; pushURL carries the admin's token.
func (g *giteaServer) httpURL(repo string) string {
	return fmt.Sprintf("%s/%s/%s.git", g.url, g.admin, repo)
}

func (g *giteaServer) pushURL(repo string) string {
	return fmt.Sprintf("http://%s:%s@127.0.0.1:%d/%s/%s.git", g.admin, g.token, g.http, g.admin, repo)
}

func (g *giteaServer) sshURL(repo string) string {
	return fmt.Sprintf("ssh://%s@127.0.0.1:%d/%s/%s.git", g.user.Username, g.ssh, g.admin, repo)
}

// repoPath is where Gitea keeps a repository of the admin.
func (g *giteaServer) repoPath(repo string) string {
	return filepath.Join(g.dir, "repos", g.admin, repo+".git")
}

// log returns Gitea's own log.
func (g *giteaServer) log() string {
	b, _ := os.ReadFile(filepath.Join(g.dir, "log", "gitea.log"))
	return string(b)
}

// clientEnv is a git client's environment: real git, no sluice, Gitea's
// SSH key.
func (g *giteaServer) clientEnv(extra ...string) []string {
	return append(baseEnv(filepath.Join(g.dir, "client")), append([]string{"GIT_SSH_COMMAND=" + g.sshCommand}, extra...)...)
}

// traversable makes every directory from dir up to / searchable by
// others (t.TempDir's are 0700), so an unprivileged server reaches what
// the test gives it.
func traversable(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// giteaShares makes the agent usable by Gitea's user: the agent's
// directory traversable (shim links, socket directory), the shim log
// writable. The socket itself belongs to the user's group through
// [agent] socket_group, as the guide's `adduser git sluice` does for the
// package's group.
func giteaShares(t *testing.T, a *agentProc) {
	t.Helper()
	traversable(t, a.dir)
	traversable(t, filepath.Dir(bins.shim)) // the shim links' target
	if err := os.WriteFile(a.shimLog, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(a.shimLog, 0o666)
}
