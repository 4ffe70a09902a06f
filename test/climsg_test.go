package test

// climsg_test.go: every rejected git client hears why. Real servers (git
// daemon, sshd + git-shell, nginx + fcgiwrap + git-http-backend) and the
// real git client, protocol v0, v1 and v2, for clone (upload-pack), push
// (receive-pack) and `git archive --remote` (upload-archive; git:// and
// ssh — git-http-backend does not serve it). Slots are held by raw git://
// requests that never finish (limits keyed "global", no queue), so every
// client is rejected with the rule's reason; its stderr must carry the
// "sluice:" line with the reason, the limit, the retry hint and the
// correlation id that the agent's "rejected" log line carries.

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/gitserver"
)

// climsgLimits: one slot per subcommand for the whole server, no queue.
var climsgLimits = limitRule("upload-pack", "global", 1, 0, "7s") + `

[[limit]]
name = "receive-pack"
match = ["receive-pack"]
key = "global"
max_per_key = 1
max_queue_size = 0
max_queue_wait = "7s"

[[limit]]
name = "upload-archive"
match = ["upload-archive"]
key = "global"
max_per_key = 1
max_queue_size = 0
max_queue_wait = "7s"
`

// remoteError is how git prints an ERR packet.
const remoteError = "fatal: remote error: "

var correlationRE = regexp.MustCompile(`\(correlation id ([0-9a-f]{16})\)`)

// holdOverGitDaemon sends a git:// request for service and never goes on,
// so the server's command holds its slot until the test ends.
func (s *serverSetup) holdOverGitDaemon(t *testing.T, port int, service, limit string) {
	t.Helper()
	conn := s.holdSlot(t, port, service, limit)
	t.Cleanup(func() { conn.Close() })
}

// clientRun runs the real git client and returns its stderr and exit code.
func clientRun(dir string, env []string, args ...string) (string, int) {
	cmd := exec.Command(bins.realGit, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	cmd.Run()
	return stderr.String(), cmd.ProcessState.ExitCode()
}

// checkRefusal asserts what a rejected client printed: the sluice: line
// (once, after prefix), the reason, the limit, the retry hint and a
// correlation id that the agent logged with its rejection.
func (s *serverSetup) checkRefusal(t *testing.T, what, out string, code int, limit, prefix string) {
	t.Helper()
	t.Logf("%s: exit %d, client printed:\n%s", what, code, out)
	if code == 0 {
		t.Errorf("%s: exit 0, want a failure", what)
	}
	if n := strings.Count(out, "sluice: "); n != 1 {
		t.Errorf("%s: %d sluice: lines, want exactly 1", what, n)
	}
	for _, want := range []string{prefix + "sluice: ", "(limit \"" + limit + "\")", "does not queue", "try again in 7s"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s: client output lacks %q", what, want)
		}
	}
	m := correlationRE.FindStringSubmatch(out)
	if m == nil {
		t.Errorf("%s: no correlation id in the client's output", what)
		return
	}
	found := false
	waitFor(t, 5*time.Second, "the agent's rejected line with correlation id "+m[1], func() bool {
		for _, l := range s.a.LogLines("rejected") {
			if l["correlation_id"] == m[1] {
				found = l["limit"] == limit
				return true
			}
		}
		return false
	})
	if !found {
		t.Errorf("%s: the agent's rejected line for %s does not name limit %s", what, m[1], limit)
	}
}

func TestClientsHearRejections(t *testing.T) {
	daemon := needGitDaemon(t)
	sshd := needSSHD(t)
	nginx, fcgiwrap, backend := needHTTP(t)
	s := newServerSetupWith(t, climsgLimits)
	gitURL, port, daemonLog := s.startGitDaemon(t, daemon)
	_, sshURL, sshEnv := s.startSSHD(t, sshd)
	httpURL, httpDir := s.startHTTP(t, nginx, fcgiwrap, backend)

	// A work tree to push from, cloned straight from the repository.
	work := filepath.Join(s.client, "work")
	git(t, s.client, s.clientEnv(), "clone", "-q", "--no-local", s.upstream, work)
	os.WriteFile(filepath.Join(work, "new.txt"), []byte("new\n"), 0o644)
	git(t, work, s.clientEnv(), "add", "new.txt")
	git(t, work, s.clientEnv(), "commit", "-q", "-m", "new")
	before := refs(t, s.upstream)

	s.holdOverGitDaemon(t, port, "upload-pack", "upload-pack")
	s.holdOverGitDaemon(t, port, "receive-pack", "receive-pack")
	s.holdOverGitDaemon(t, port, "upload-archive", "upload-archive")

	transports := []struct {
		name string
		url  string
		env  []string
	}{
		{"git", gitURL, s.clientEnv()},
		{"ssh", sshURL, sshEnv},
		{"http", httpURL, s.clientEnv()},
	}
	for _, tr := range transports {
		for _, v := range []string{"0", "1", "2"} {
			t.Run(tr.name+"/v"+v, func(t *testing.T) {
				env := append(append([]string(nil), tr.env...), "GIT_TERMINAL_PROMPT=0")
				dst := filepath.Join(s.client, "clone-"+tr.name+"-v"+v)
				out, code := clientRun(s.client, env, "-c", "protocol.version="+v, "clone", tr.url, dst)
				s.checkRefusal(t, "clone", out, code, "upload-pack", remoteError)
				if _, err := os.Stat(dst); !os.IsNotExist(err) {
					t.Errorf("clone left %s behind (%v)", dst, err)
				}

				out, code = clientRun(work, env, "-c", "protocol.version="+v, "push", tr.url, "HEAD:refs/heads/pushed-"+tr.name+"-v"+v)
				s.checkRefusal(t, "push", out, code, "receive-pack", remoteError)

				if tr.name == "http" {
					return // git-http-backend serves no upload-archive
				}
				tarball := filepath.Join(s.client, "archive-"+tr.name+"-v"+v+".tar")
				out, code = clientRun(s.client, env, "-c", "protocol.version="+v, "archive", "--remote="+tr.url, "-o", tarball, "HEAD")
				s.checkRefusal(t, "archive", out, code, "upload-archive", remoteError)
			})
		}
	}
	if got := refs(t, s.upstream); got != before {
		t.Errorf("a rejected push changed the repository:\n%s\nvs\n%s", got, before)
	}

	// The servers' own logs: git daemon's stderr and fcgiwrap's carry the
	// same line; nginx logs the rejected requests with status 200 (the
	// shim runs after git-http-backend sent its headers; see README).
	daemonOut, _ := os.ReadFile(daemonLog)
	if !strings.Contains(string(daemonOut), `sluice: too many upload-pack requests for this server`) {
		t.Errorf("git daemon's log lacks the rejection:\n%s", daemonOut)
	}
	access, _ := os.ReadFile(filepath.Join(httpDir, "access.log"))
	if !regexp.MustCompile(`"GET /project.git/info/refs\?service=git-upload-pack HTTP/1.1" 200 `).Match(access) {
		t.Errorf("nginx access log:\n%s", access)
	}
}

// TestClientsHearRejectionsOnPost: over smart HTTP every request runs its
// own upload-pack or receive-pack, so a client admitted for the ref
// advertisement (GET info/refs) may be rejected at its POST. A proxy in
// front of nginx takes the slot just before it forwards the client's
// first POST.
func TestClientsHearRejectionsOnPost(t *testing.T) {
	daemon := needGitDaemon(t)
	nginx, fcgiwrap, backend := needHTTP(t)
	s := newServerSetupWith(t, climsgLimits)
	_, port, _ := s.startGitDaemon(t, daemon)
	httpURL, httpDir := s.startHTTP(t, nginx, fcgiwrap, backend)
	target, err := neturl.Parse(httpURL)
	if err != nil {
		t.Fatal(err)
	}
	target.Path = ""

	work := filepath.Join(s.client, "work")
	git(t, s.client, s.clientEnv(), "clone", "-q", "--no-local", s.upstream, work)
	os.WriteFile(filepath.Join(work, "new.txt"), []byte("new\n"), 0o644)
	git(t, work, s.clientEnv(), "add", "new.txt")
	git(t, work, s.clientEnv(), "commit", "-q", "-m", "new")

	for _, c := range []struct {
		v, service, limit string
	}{
		{"0", "upload-pack", "upload-pack"}, {"1", "upload-pack", "upload-pack"}, {"2", "upload-pack", "upload-pack"},
		{"0", "receive-pack", "receive-pack"}, {"1", "receive-pack", "receive-pack"}, {"2", "receive-pack", "receive-pack"},
	} {
		t.Run(c.service+"/v"+c.v, func(t *testing.T) {
			var held *net.TCPConn
			var posts int
			rp := httputil.NewSingleHostReverseProxy(target)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost && held == nil {
					posts++
					held = s.holdSlot(t, port, c.service, c.limit)
				}
				rp.ServeHTTP(w, r)
			}))
			defer srv.Close()
			defer func() {
				if held != nil {
					held.Close()
					waitFor(t, 10*time.Second, "the held slot released", func() bool {
						return s.a.metric(`sluice_concurrency_limiting_in_progress{limit="`+c.limit+`"}`) == 0
					})
				}
			}()
			url := srv.URL + "/project.git"
			env := append(s.clientEnv(), "GIT_TERMINAL_PROMPT=0")
			var out string
			var code int
			if c.service == "upload-pack" {
				dst := filepath.Join(s.client, "post-clone-v"+c.v)
				out, code = clientRun(s.client, env, "-c", "protocol.version="+c.v, "clone", url, dst)
				if _, err := os.Stat(dst); !os.IsNotExist(err) {
					t.Errorf("clone left %s behind (%v)", dst, err)
				}
			} else {
				out, code = clientRun(work, env, "-c", "protocol.version="+c.v, "push", url, "HEAD:refs/heads/post-v"+c.v)
			}
			if posts == 0 {
				t.Fatalf("the client sent no POST:\n%s", out)
			}
			// A push's answer is multiplexed: the band 3 packet prints as
			// "remote: …" (send-pack's demultiplexer does not die on it).
			prefix := remoteError
			if c.service == "receive-pack" {
				prefix = "remote: "
			}
			s.checkRefusal(t, c.service+" POST", out, code, c.limit, prefix)
		})
	}
	access, _ := os.ReadFile(filepath.Join(httpDir, "access.log"))
	t.Logf("nginx access log:\n%s", access)
}

// holdSlot sends a git:// request for service and never goes on, so the
// server's command holds its slot until the returned connection is closed.
func (s *serverSetup) holdSlot(t *testing.T, port int, service, limit string) *net.TCPConn {
	t.Helper()
	conn, err := net.DialTCP("tcp", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	req := fmt.Sprintf("git-%s /project.git\x00host=127.0.0.1:%d\x00", service, port)
	fmt.Fprintf(conn, "%04x%s", len(req)+4, req)
	waitFor(t, 10*time.Second, "a "+service+" holding its slot", func() bool {
		return s.a.metric(`sluice_concurrency_limiting_in_progress{limit="`+limit+`"}`) == 1
	})
	return conn
}

// Servers for these tests: the same wiring as servers_test.go (the
// installed package, loopback), with upload-archive enabled on git daemon
// and nginx's access log on.

// startGitDaemon starts git daemon (receive-pack and upload-archive
// enabled) and returns the URL of project.git, its port and its log file.
func (s *serverSetup) startGitDaemon(t *testing.T, daemon string) (url string, port int, logf string) {
	t.Helper()
	port = freePort(t)
	logf = filepath.Join(s.a.dir, "git-daemon.log")
	startGroup(t, s.serverEnv(), logf, daemon, "--reuseaddr", "--base-path="+s.repos, "--export-all",
		"--enable=receive-pack", "--enable=upload-archive", "--listen=127.0.0.1", "--port="+strconv.Itoa(port))
	waitListening(t, port, "git daemon")
	return fmt.Sprintf("git://127.0.0.1:%d/project.git", port), port, logf
}

// needGitDaemon returns git daemon's path or skips.
func needGitDaemon(t *testing.T) string {
	daemon := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(daemon); err != nil {
		t.Skipf("git daemon is not installed (%v): apt-get install git", err)
	}
	return daemon
}

// needSSHD returns sshd's path or skips.
func needSSHD(t *testing.T) string {
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Skip("sshd is not installed (apt-get install openssh-server)")
	}
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen is not installed (apt-get install openssh-client)")
	}
	if _, err := os.Stat("/usr/bin/git-shell"); err != nil {
		t.Skip("git-shell is not installed")
	}
	return sshd
}

// startSSHD starts sshd for the git user (git-shell), the socket and
// repositories shared with it, and returns it with the ssh:// URL of
// project.git and the client's environment (GIT_SSH_COMMAND set).
func (s *serverSetup) startSSHD(t *testing.T, sshd string) (srv *sshServer, url string, env []string) {
	t.Helper()
	u := gitUser(t)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	s.shareWith(t, uid, gid)
	srv = startSSHD(t, sshd, filepath.Join(s.a.dir, "sshd"), "AcceptEnv GIT_PROTOCOL\nSetEnv "+strings.Join(s.serverEnv(), " ")+"\n")
	return srv, fmt.Sprintf("ssh://git@127.0.0.1:%d%s", srv.port, s.upstream), s.clientEnv("GIT_SSH_COMMAND=" + srv.sshCmd)
}

// sshServer is an sshd started by startSSHD.
type sshServer struct {
	dir    string // keys, sshd_config, sshd.pid, sshd.log
	port   int
	conf   string // sshd_config as written
	sshCmd string // GIT_SSH_COMMAND for a client of the git user
}

// startSSHD writes host and client keys and an sshd_config in dir — the
// tests' settings for the git user on a free loopback port, then extra —
// starts sshd and waits until it listens; its log is shown if the test
// fails.
func startSSHD(t *testing.T, sshd, dir, extra string) *sshServer {
	t.Helper()
	if _, err := os.Stat("/run/sshd"); err != nil {
		if err := os.Mkdir("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove("/run/sshd") })
	}
	os.Mkdir(dir, 0o755)
	pkgRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "host_key"))
	pkgRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "client_key"))
	pub, _ := os.ReadFile(filepath.Join(dir, "client_key.pub"))
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o644)
	srv := &sshServer{dir: dir, port: freePort(t)}
	srv.conf = fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s/host_key\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s/authorized_keys\n"+
		"UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nAllowUsers git\n",
		srv.port, dir, dir, dir) + extra
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(srv.conf), 0o644)
	logf := filepath.Join(dir, "sshd.log")
	startGroup(t, os.Environ(), filepath.Join(dir, "sshd.out"), sshd, "-D", "-f", filepath.Join(dir, "sshd_config"), "-E", logf)
	waitListening(t, srv.port, "sshd")
	srv.sshCmd = fmt.Sprintf("ssh -F /dev/null -i %s/client_key -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR -o BatchMode=yes", dir)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			t.Logf("sshd log:\n%s", b)
		}
	})
	return srv
}

// needHTTP returns the paths of nginx, fcgiwrap and git-http-backend or
// skips.
func needHTTP(t *testing.T) (nginx, fcgiwrap, backend string) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, err = os.Stat("/usr/sbin/nginx"); err != nil {
			t.Skip("nginx is not installed (apt-get install nginx)")
		}
		nginx = "/usr/sbin/nginx"
	}
	fcgiwrap = "/usr/sbin/fcgiwrap"
	if _, err := os.Stat(fcgiwrap); err != nil {
		t.Skip("fcgiwrap is not installed (apt-get install fcgiwrap)")
	}
	backend = "/usr/lib/git-core/git-http-backend"
	if _, err := os.Stat(backend); err != nil {
		t.Skip("git-http-backend is not installed (apt-get install git)")
	}
	return nginx, fcgiwrap, backend
}

// startHTTP starts fcgiwrap and nginx (access log on) in front of
// git-http-backend and returns the URL of project.git and the directory
// holding the servers' logs (access.log, error.log, fcgiwrap.log).
func (s *serverSetup) startHTTP(t *testing.T, nginx, fcgiwrap, backend string) (url, dir string) {
	t.Helper()
	dir = filepath.Join(s.a.dir, "http")
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o755)
	fsock := filepath.Join(dir, "fcgiwrap.sock")
	startGroup(t, []string{"PATH=/usr/bin:/bin"}, filepath.Join(dir, "fcgiwrap.log"), fcgiwrap, "-c", "2", "-s", "unix:"+fsock)
	waitFor(t, 10*time.Second, "fcgiwrap's socket", func() bool { _, err := os.Stat(fsock); return err == nil })

	port := freePort(t)
	conf := gitserver.Nginx{Dir: dir, Port: port, AccessLog: true}.Conf(
		gitserver.GitLocation(backend, fsock, append(s.serverEnv(), "GIT_PROJECT_ROOT="+s.repos, "GIT_HTTP_EXPORT_ALL=1")))
	os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644)
	startGroup(t, []string{"PATH=/usr/sbin:/usr/bin:/bin"}, filepath.Join(dir, "nginx.out"), nginx, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	waitListening(t, port, "nginx")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error log:\n%s", b)
		}
	})
	return fmt.Sprintf("http://127.0.0.1:%d/project.git", port), dir
}
