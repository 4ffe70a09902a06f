package test

// servers_test.go runs real Git servers on loopback — git daemon, sshd with
// git-shell, nginx + fcgiwrap + git-http-backend — wired through the
// INSTALLED package (usePackage: /usr/lib/sluice/bin first on PATH,
// GIT_EXEC_PATH=/usr/lib/sluice/git-core where the server runs git from its
// exec path, /usr/share/sluice/gitconfig included from the server's system
// gitconfig via GIT_CONFIG_SYSTEM) against a sluiced started by startAgent.
// For each transport: clone, fetch and push work and match an unprotected
// clone; a per-repository limit of 1 with no queue rejects a second
// concurrent clone; pack-objects sees the client's loopback address. The
// git daemon test also has a real Prometheus scrape sluiced and runs
// `sluice check` against the wiring.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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

// serverLimits: a per-repository limit of 1 without a queue for
// upload-pack; pack-objects keyed by client address.
var serverLimits = limitRule("upload-pack", "repo", 1, 0, "10s") + `

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "remote_ip"
max_per_key = 4
max_queue_size = 10
max_queue_wait = "10s"

[[limit]]
name = "receive-pack"
match = ["receive-pack"]
key = "repo"
max_per_key = 2
max_queue_size = 10
max_queue_wait = "10s"
`

const (
	installedShim   = "/usr/bin/sluice-shim"
	installedBin    = "/usr/lib/sluice/bin"
	installedCore   = "/usr/lib/sluice/git-core"
	installedConfig = "/usr/share/sluice/gitconfig"
)

// serverSetup is a sluiced plus what every server needs: repositories and
// a system gitconfig that includes the package's snippet.
type serverSetup struct {
	a         *agentProc
	repos     string // directory of bare repositories
	upstream  string // repos/project.git
	gitconfig string // the servers' GIT_CONFIG_SYSTEM
	path      string // the servers' PATH: the package's shim links first
	client    string // scratch directory for client clones
}

func newServerSetup(t *testing.T) *serverSetup {
	t.Helper()
	return newServerSetupWith(t, serverLimits)
}

// newServerSetupWith is newServerSetup with the agent's [[limit]] rules.
func newServerSetupWith(t *testing.T, limits string) *serverSetup {
	t.Helper()
	usePackage(t)
	a := startAgent(t, limits, "open")
	s := &serverSetup{a: a, repos: filepath.Join(a.dir, "repos"), client: filepath.Join(a.dir, "client"),
		gitconfig: filepath.Join(a.dir, "server-gitconfig"), path: installedBin + ":/usr/bin:/bin"}
	for _, d := range []string{s.repos, s.client} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	safeGlobal = filepath.Join(bins.dir, "gitconfig-safe")
	if err := os.WriteFile(safeGlobal, []byte("[safe]\n\tdirectory = *\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gen := t.TempDir()
	src := makeRepo(t, gen, "project", 8)
	s.upstream = filepath.Join(s.repos, "project.git")
	git(t, gen, baseEnv(gen), "clone", "-q", "--bare", src, s.upstream)
	// receive.denyCurrentBranch does not matter for bare repositories;
	// http.receivepack lets git-http-backend accept anonymous pushes.
	conf := fmt.Sprintf("[include]\n\tpath = %s\n[http]\n\treceivepack = true\n[safe]\n\tdirectory = *\n", installedConfig)
	if err := os.WriteFile(s.gitconfig, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The shim log must be writable by the servers' users.
	if err := os.WriteFile(a.shimLog, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	return s
}

// serverEnv is the environment a server hands the git it runs.
func (s *serverSetup) serverEnv() []string {
	return []string{
		"PATH=" + s.path,
		// git-shell, git daemon and git-http-backend put git's exec path
		// first on PATH before they run git: the package's git-core
		// directory makes that git the shim.
		"GIT_EXEC_PATH=" + installedCore,
		"HOME=" + s.a.dir,
		"GIT_CONFIG_SYSTEM=" + s.gitconfig,
		"GIT_CONFIG_GLOBAL=/dev/null",
		"SLUICE_SOCKET=" + s.a.socket,
		"SLUICE_SHIM_LOG=" + s.a.shimLog,
		"LANG=C",
	}
}

// clientEnv is the client's environment: real git, no sluice.
func (s *serverSetup) clientEnv(extra ...string) []string {
	return append(safeEnv(s.client), extra...)
}

// safeEnv is baseEnv trusting every repository: the ssh test's
// repositories belong to the git user (safe.directory is honoured from
// the global configuration, which git's local transport passes on).
func safeEnv(home string) []string {
	return append(baseEnv(home), "GIT_CONFIG_GLOBAL="+safeGlobal)
}

// safeGlobal is a global gitconfig with safe.directory = *, written by
// newServerSetup into bins.dir (removed by TestMain).
var safeGlobal = ""

// refs lists a repository's refs as "sha ref" lines.
func refs(t *testing.T, dir string) string {
	t.Helper()
	return git(t, dir, safeEnv(dir), "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags")
}

// gitTry runs real git and returns its combined output and error.
func gitTry(dir string, env []string, args ...string) (string, error) {
	cmd := exec.Command(bins.realGit, args...)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// gitTryOwnSlot is gitTry for one client's operations under serverLimits
// (upload-pack: 1 per repository, no queue). Over smart HTTP a fetch is two
// upload-packs back to back (info/refs, then the POST), and the second can
// reach the agent a moment before the tracer reports the first one's exit:
// it is then refused by its own previous request, as a real client would be
// told to retry. It retries once, after the agent has had time to see the
// exit.
func gitTryOwnSlot(dir string, env []string, args ...string) (string, error) {
	out, err := gitTry(dir, env, args...)
	if err != nil && strings.Contains(out, "this rule does not queue") {
		time.Sleep(time.Second)
		out, err = gitTry(dir, env, args...)
	}
	return out, err
}

// exercise clones, fetches and pushes through url and compares with the
// upstream repository read directly.
func (s *serverSetup) exercise(t *testing.T, url string, env []string) {
	t.Helper()
	name := fmt.Sprintf("mirror-%d", time.Now().UnixNano())
	mirror := filepath.Join(s.client, name)
	if out, err := gitTryOwnSlot(s.client, env, "clone", "-q", "--mirror", url, mirror); err != nil {
		t.Fatalf("clone --mirror %s: %v\n%s", url, err, out)
	}
	plain := filepath.Join(s.client, name+"-direct")
	git(t, s.client, s.clientEnv(), "clone", "-q", "--mirror", "--no-local", s.upstream, plain)
	if got, want := refs(t, mirror), refs(t, plain); got != want {
		t.Fatalf("clone through sluice differs from a direct clone:\n%s\nvs\n%s", got, want)
	}
	git(t, mirror, s.clientEnv(), "fsck", "--strict", "--no-progress")

	// Push a new commit on a new branch through the server.
	work := filepath.Join(s.client, name+"-work")
	if out, err := gitTryOwnSlot(s.client, env, "clone", "-q", url, work); err != nil {
		t.Fatalf("clone %s: %v\n%s", url, err, out)
	}
	if err := os.WriteFile(filepath.Join(work, "pushed.txt"), []byte(name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, work, s.clientEnv(), "add", "pushed.txt")
	git(t, work, s.clientEnv(), "commit", "-q", "-m", "pushed "+name)
	if out, err := gitTryOwnSlot(work, env, "push", "-q", "origin", "HEAD:refs/heads/"+name); err != nil {
		t.Fatalf("push to %s: %v\n%s", url, err, out)
	}
	head := git(t, work, s.clientEnv(), "rev-parse", "HEAD")
	if got := git(t, s.upstream, safeEnv(s.upstream), "rev-parse", "refs/heads/"+name); got != head {
		t.Fatalf("pushed %s, upstream has %s", head, got)
	}
	git(t, s.upstream, safeEnv(s.upstream), "fsck", "--strict", "--no-progress")

	// Fetch it into the mirror and compare again.
	if out, err := gitTryOwnSlot(mirror, env, "fetch", "-q", "origin"); err != nil {
		t.Fatalf("fetch %s: %v\n%s", url, err, out)
	}
	git(t, plain, s.clientEnv(), "fetch", "-q", "origin")
	if got, want := refs(t, mirror), refs(t, plain); got != want {
		t.Fatalf("fetch through sluice differs from a direct fetch:\n%s\nvs\n%s", got, want)
	}
	if !strings.Contains(refs(t, mirror), "refs/heads/"+name) {
		t.Fatalf("fetch did not bring the pushed branch %s", name)
	}
}

// checkRemoteIP asserts pack-objects ran through the shim and its rule saw
// the client's loopback address.
func (s *serverSetup) checkRemoteIP(t *testing.T) {
	t.Helper()
	n := 0
	for _, m := range s.a.LogLines("command finished") {
		if m["subcmd"] != "pack-objects" {
			continue
		}
		n++
		if m["remote_ip"] != "127.0.0.1" || m["limit"] != "pack-objects" {
			t.Errorf("pack-objects admitted with remote_ip %v by limit %v, want 127.0.0.1 by pack-objects", m["remote_ip"], m["limit"])
		}
	}
	if n == 0 {
		t.Errorf("no pack-objects went through sluice (uploadpack.packObjectsHook not honoured?); agent log:\n%s", s.a.Logs())
	}
	up := 0
	for _, m := range s.a.LogLines("command finished") {
		if m["subcmd"] == "upload-pack" {
			up++
		}
	}
	if up == 0 {
		t.Errorf("no upload-pack went through sluice")
	}
}

// waitUploadPackHeld waits until the agent holds one upload-pack lease.
func (s *serverSetup) waitUploadPackHeld(t *testing.T) {
	t.Helper()
	waitFor(t, 10*time.Second, "an upload-pack in progress", func() bool {
		return s.a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 1
	})
}

// rejectedClone runs a clone that the held slot must make fail and
// returns its output.
func (s *serverSetup) rejectedClone(t *testing.T, url string, env []string) string {
	t.Helper()
	dst := filepath.Join(s.client, fmt.Sprintf("rejected-%d", time.Now().UnixNano()))
	out, err := gitTry(s.client, env, "clone", "-q", url, dst)
	if err == nil {
		t.Fatalf("second concurrent clone of %s succeeded; want a rejection\n%s", url, out)
	}
	waitFor(t, 5*time.Second, "the rejection counted", func() bool {
		return s.a.metric(`sluice_requests_dropped_total{limit="upload-pack",reason="max_size"}`) >= 1
	})
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startGroup starts a server in its own process group and kills the group
// at the end of the test.
func startGroup(t *testing.T, env []string, logf string, argv ...string) *exec.Cmd {
	t.Helper()
	return startGroupAs(t, env, logf, nil, argv...)
}

// startGroupAs is startGroup running argv with cred (nil: as the test).
func startGroupAs(t *testing.T, env []string, logf string, cred *syscall.Credential, argv ...string) *exec.Cmd {
	t.Helper()
	f, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", argv[0], err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		// Workers that left the group's leader behind (fcgiwrap -c; git
		// and ssh children of Gitea's built-in server).
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			t.Logf("%s output:\n%s", filepath.Base(argv[0]), tail(string(b), 4000))
		}
	})
	return cmd
}

func waitListening(t *testing.T, port int, what string) {
	t.Helper()
	waitFor(t, 10*time.Second, what+" listening on port "+strconv.Itoa(port), func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func TestServerGitDaemon(t *testing.T) {
	daemon := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(daemon); err != nil {
		t.Skipf("git daemon is not installed (%v): apt-get install git", err)
	}
	s := newServerSetup(t)
	port := freePort(t)
	env := s.serverEnv()
	logf := filepath.Join(s.a.dir, "git-daemon.log")
	daemonCmd := startGroup(t, env, logf, daemon, "--reuseaddr", "--base-path="+s.repos, "--export-all",
		"--enable=receive-pack", "--listen=127.0.0.1", "--port="+strconv.Itoa(port))
	waitListening(t, port, "git daemon")
	url := fmt.Sprintf("git://127.0.0.1:%d/project.git", port)

	s.exercise(t, url, s.clientEnv())
	s.checkRemoteIP(t)

	// Hold the repository's only slot with a raw git:// request that never
	// sends its wants, then clone again.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := fmt.Sprintf("git-upload-pack /project.git\x00host=127.0.0.1:%d\x00", port)
	fmt.Fprintf(conn, "%04x%s", len(req)+4, req)
	s.waitUploadPackHeld(t)
	out := s.rejectedClone(t, url, s.clientEnv())
	// git:// carries no stderr to the client: the shim's ERR packet
	// does, and its line lands in git daemon's log too.
	if !strings.Contains(out, "fatal: remote error: sluice: ") {
		t.Errorf("client output for a rejection over git://: %s", out)
	}
	waitFor(t, 5*time.Second, "the sluice: line in git daemon's log", func() bool {
		b, _ := os.ReadFile(logf)
		return strings.Contains(string(b), "sluice: ")
	})
	conn.Close()

	t.Run("prometheus", func(t *testing.T) { s.prometheus(t) })
	t.Run("sluice check", func(t *testing.T) { s.sluiceCheck(t, daemonCmd.Process.Pid) })
	t.Run("sluice check of an unwired daemon", func(t *testing.T) {
		// A git daemon started without the wiring (neither the shim on
		// PATH nor GIT_EXEC_PATH): every clone bypasses the shim. check
		// must FAIL it with the fix, and report what the tracer saw.
		var broken []string
		for _, kv := range s.serverEnv() {
			switch {
			case strings.HasPrefix(kv, "GIT_EXEC_PATH="):
			case strings.HasPrefix(kv, "PATH="):
				broken = append(broken, "PATH=/usr/bin:/bin")
			default:
				broken = append(broken, kv)
			}
		}
		port := freePort(t)
		d := startGroup(t, broken, filepath.Join(s.a.dir, "git-daemon-broken.log"), daemon, "--reuseaddr",
			"--base-path="+s.repos, "--export-all", "--listen=127.0.0.1", "--port="+strconv.Itoa(port))
		waitListening(t, port, "git daemon")
		// A clone through it works — around sluice, which the tracer sees.
		git(t, s.client, s.clientEnv(), "ls-remote", fmt.Sprintf("git://127.0.0.1:%d/project.git", port))
		out, code := s.runCheck(t, "--pid", strconv.Itoa(d.Process.Pid))
		if code != 1 || !strings.Contains(out, "FAIL  server PATH") || !strings.Contains(out, "git-upload-pack is /usr/bin/git-upload-pack") ||
			!strings.Contains(out, "fix: start git daemon with PATH=/usr/lib/sluice/bin:/usr/bin:/bin") ||
			!strings.Contains(out, "WARN  exec path") || !strings.Contains(out, "GIT_EXEC_PATH is not set") {
			t.Errorf("sluice check of an unwired git daemon: exit %d\n%s", code, out)
		}
		if s.a.tracerRunning() && (!strings.Contains(out, "FAIL  server traffic") || !strings.Contains(out, "bypassed sluice")) {
			t.Errorf("sluice check does not report the unwrapped git the tracer saw:\n%s", out)
		}
	})
}

// runCheck runs the installed `sluice check` with this setup's config and
// socket and the given flags naming the server.
func (s *serverSetup) runCheck(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("/usr/bin/sluice", append([]string{"check", "--socket", s.a.socket,
		"--config", filepath.Join(s.a.dir, "sluice.toml")}, args...)...)
	cmd.Env = append(s.clientEnv(), "GIT_CONFIG_SYSTEM="+s.gitconfig, "GIT_CONFIG_NOSYSTEM=")
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// prometheus starts a real Prometheus scraping sluiced and compares a
// PromQL query over sluice_commands_total with the agent's own count.
func (s *serverSetup) prometheus(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (apt-get install prometheus)")
	}
	dir := t.TempDir()
	target := strings.TrimPrefix(s.a.Metrics, "http://")
	conf := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - %s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [%q]\n",
		"/usr/share/sluice/prometheus-rules.yml", target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	startGroup(t, os.Environ(), filepath.Join(dir, "prometheus.log"), prom,
		"--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port))
	want := s.a.metric(`sluice_commands_total{cmd="git",outcome="ok",subcmd="upload-pack"}`)
	if want < 3 {
		t.Fatalf("agent counted %v upload-packs, want at least the 3 clones and fetch", want)
	}
	query := "http://127.0.0.1:" + strconv.Itoa(port) + "/api/v1/query?query=" +
		url.QueryEscape(`sum(sluice_commands_total{subcmd="upload-pack",outcome="ok"})`)
	var got string
	waitFor(t, 20*time.Second, "Prometheus to return the clone count", func() bool {
		resp, err := http.Get(query)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var r struct {
			Status string
			Data   struct {
				Result []struct {
					Value []any
				}
			}
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || r.Status != "success" || len(r.Data.Result) == 0 {
			return false
		}
		got, _ = r.Data.Result[0].Value[1].(string)
		return got == strconv.FormatFloat(want, 'f', -1, 64)
	})
	// The shipped rules loaded into the same Prometheus.
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "SluiceQueueSaturated") {
		t.Errorf("/usr/share/sluice/prometheus-rules.yml not loaded: %s", body)
	}
}

// sluiceCheck runs the installed `sluice check` against this wiring (the
// server named by its pid), then without the hook line.
func (s *serverSetup) sluiceCheck(t *testing.T, pid int) {
	check := func() (string, int) {
		return s.runCheck(t, "--path", s.path, "--pid", strconv.Itoa(pid))
	}
	out, code := check()
	if code != 0 {
		t.Fatalf("sluice check on the configured machine: exit %d\n%s", code, out)
	}
	for _, want := range []string{"OK    agent", "OK    shim on PATH", "OK    packObjectsHook  uploadpack.packObjectsHook = /usr/bin/sluice-shim", "OK    config",
		"OK    server           git daemon (pid " + strconv.Itoa(pid), "OK    server PATH", "OK    exec path", "OK    server access", "OK    server hook",
		"OK    server traffic"} {
		if !strings.Contains(out, want) {
			t.Errorf("sluice check output lacks %q:\n%s", want, out)
		}
	}
	// Remove the hook line (the include of the package's snippet).
	orig, _ := os.ReadFile(s.gitconfig)
	var kept []string
	for _, l := range strings.Split(string(orig), "\n") {
		if !strings.Contains(l, installedConfig) {
			kept = append(kept, l)
		}
	}
	if err := os.WriteFile(s.gitconfig, []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(s.gitconfig, orig, 0o644)
	out, code = check()
	if code != 1 || !strings.Contains(out, "FAIL  packObjectsHook  uploadpack.packObjectsHook is not set in the system gitconfig ("+s.gitconfig+")") ||
		!strings.Contains(out, "fix: git config --system uploadpack.packObjectsHook /usr/bin/sluice-shim") ||
		!strings.Contains(out, "FAIL  server hook") {
		t.Fatalf("sluice check without the hook: exit %d\n%s", code, out)
	}
}

// gitUser returns the `git` user for sshd, creating it (git-shell as its
// shell) when missing and deleting it at the end of the test.
func gitUser(t *testing.T) *user.User {
	t.Helper()
	u, err := user.Lookup("git")
	if err != nil {
		if _, err := exec.LookPath("useradd"); err != nil {
			t.Skip("no git user and no useradd to create one")
		}
		pkgRun(t, "useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/bin/git-shell", "git")
		t.Cleanup(func() { exec.Command("userdel", "git").Run() })
		if u, err = user.Lookup("git"); err != nil {
			t.Fatal(err)
		}
	}
	// A locked account ("!" password) is refused by sshd without PAM.
	pkgRun(t, "usermod", "-p", "*", "git")
	return u
}

// shareWith makes the agent's temp dir reachable by uid/gid: the path to
// it traversable, the socket's directory and socket in gid (what
// [agent] socket_group does), the repositories owned by uid.
func (s *serverSetup) shareWith(t *testing.T, uid, gid int) {
	t.Helper()
	for d := s.a.dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	run := filepath.Dir(s.a.socket)
	for _, p := range []string{run, s.a.socket} {
		if err := os.Chown(p, -1, gid); err != nil {
			t.Fatal(err)
		}
	}
	filepath.Walk(s.repos, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			os.Lchown(p, uid, gid)
		}
		return err
	})
}

func TestServerSSH(t *testing.T) {
	sshd := needSSHD(t)
	s := newServerSetup(t)
	srv, url, env := s.startSSHD(t, sshd)
	dir, port, sshCmd, conf, senv := srv.dir, srv.port, srv.sshCmd, srv.conf, s.serverEnv()
	gid, _ := strconv.Atoi(gitUser(t).Gid)
	s.exercise(t, url, env)
	s.checkRemoteIP(t)
	// Pack cache (packcache_test.go): restarts the agent, then restores it.
	t.Run("pack cache", func(t *testing.T) { s.packCacheScenarios(t, url, env, "") })
	for _, m := range s.a.LogLines("command finished") {
		if m["subcmd"] == "upload-pack" && m["user"] != "git" {
			t.Errorf("upload-pack over ssh with user %v, want git", m["user"])
		}
	}

	// Hold the slot with an upload-pack over ssh that never sends wants.
	hold := startProc(t, s.client, env, append(strings.Fields(sshCmd), "-p", strconv.Itoa(port), "git@127.0.0.1",
		"git-upload-pack '"+s.upstream+"'")...)
	s.waitUploadPackHeld(t)
	out := s.rejectedClone(t, url, env)
	// The client prints the shim's ERR packet as the reason.
	if !strings.Contains(out, "fatal: remote error: sluice: ") {
		t.Errorf("over ssh the client should see the sluice: line; got:\n%s", out)
	}
	hold.release()
	hold.wait(t, 10*time.Second)

	// sluice check of sshd's sessions for user git: right as wired, then
	// each first-hour mistake FAILs with its fix.
	sshdPid := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "sshd.pid"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}()
	out, code := s.runCheck(t, "--pid", sshdPid, "--user", "git")
	for _, want := range []string{"OK    server           sshd (pid " + sshdPid + ") sessions of user git", "OK    server PATH", "OK    exec path",
		"OK    server access", "OK    server hook", "OK    server traffic"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("sluice check of the sshd wiring: exit %d, lacks %q\n%s", code, want, out)
		}
	}
	t.Run("sluice check without GIT_EXEC_PATH", func(t *testing.T) {
		// SetEnv PATH=… but no GIT_EXEC_PATH: git-shell runs
		// /usr/lib/git-core/git upload-pack, bypassing the shim.
		var kept []string
		for _, kv := range senv {
			if !strings.HasPrefix(kv, "GIT_EXEC_PATH=") {
				kept = append(kept, kv)
			}
		}
		broken := strings.Replace(conf, "SetEnv "+strings.Join(senv, " "), "SetEnv "+strings.Join(kept, " "), 1)
		os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(broken), 0o644)
		defer os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o644)
		out, code := s.runCheck(t, "--pid", sshdPid, "--user", "git")
		if code != 1 || !strings.Contains(out, "FAIL  exec path") || !strings.Contains(out, "fix: in sshd_config, under Match User git: SetEnv GIT_EXEC_PATH=/usr/lib/sluice/git-core") {
			t.Errorf("sluice check of sshd without GIT_EXEC_PATH: exit %d\n%s", code, out)
		}
	})
	t.Run("sluice check with the server user outside the socket group", func(t *testing.T) {
		// The socket and its directory in a group git is not in: its
		// shims cannot reach the agent (and would fail open).
		run := filepath.Dir(s.a.socket)
		for _, p := range []string{run, s.a.socket} {
			os.Chown(p, -1, 0)
			defer os.Chown(p, -1, gid)
		}
		os.Chmod(run, 0o750)
		out, code := s.runCheck(t, "--pid", sshdPid, "--user", "git")
		if code != 1 || !strings.Contains(out, "FAIL  server access") || !strings.Contains(out, "permission denied") ||
			!strings.Contains(out, "fix: adduser git root") {
			t.Errorf("sluice check with git outside the socket's group: exit %d\n%s", code, out)
		}
	})
}

func TestServerHTTP(t *testing.T) {
	nginx, fcgiwrap, backend := needHTTP(t)
	s := newServerSetup(t)
	url, dir := s.startHTTP(t, nginx, fcgiwrap, backend)
	port := strings.TrimSuffix(strings.TrimPrefix(url, "http://127.0.0.1:"), "/project.git")
	s.exercise(t, url, s.clientEnv())
	s.checkRemoteIP(t)
	// Pack cache in supervising mode (packcache_test.go): restarts the
	// agent, then restores it.
	t.Run("pack cache", func(t *testing.T) { s.packCacheScenarios(t, url, s.clientEnv(), "[ebpf]\nenabled = false") })

	// Hold the slot: a POST to git-upload-pack whose body never comes. nginx
	// streams it (fastcgi_request_buffering off), so upload-pack starts and
	// waits for the request.
	conn, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /project.git/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-git-upload-pack-request\r\nGit-Protocol: version=2\r\nContent-Length: 100000\r\n\r\n")
	s.waitUploadPackHeld(t)
	out := s.rejectedClone(t, url, s.clientEnv())
	// Over HTTP the shim's ERR packet is the response body; its stderr
	// is the CGI's stderr, which fcgiwrap writes to its own stderr.
	if !strings.Contains(out, "fatal: remote error: sluice: ") {
		t.Errorf("client output for a rejection over http: %s", out)
	}
	waitFor(t, 5*time.Second, "the sluice: line in fcgiwrap's log", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "fcgiwrap.log"))
		return strings.Contains(string(b), "sluice: ")
	})
	conn.Close()
}
