package test

// guides_test.go runs the wiring guides of packaging/README.md as written
// (issue 14, property 6): the nginx block is extracted from the README by
// its marker, only deployment paths are substituted, and an anonymous
// client with a forged "Authorization: Basic" header must neither become a
// user nor push.

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/gitserver"
)

// guideBlock returns the fenced block of packaging/README.md that follows
// the line containing marker, without the indentation of its fence (a
// block inside a list item is indented).
func guideBlock(t *testing.T, marker string) string {
	t.Helper()
	b, err := os.ReadFile("../packaging/README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, marker)
	if i < 0 {
		t.Fatalf("packaging/README.md has no %q marker", marker)
	}
	lines := strings.Split(s[i:], "\n")[1:]
	start := -1
	for k, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			start = k
			break
		}
	}
	if start < 0 {
		t.Fatalf("no fenced block after %q", marker)
	}
	indent := lines[start][:len(lines[start])-len(strings.TrimLeft(lines[start], " "))]
	var out strings.Builder
	for _, l := range lines[start+1:] {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			return out.String()
		}
		out.WriteString(strings.TrimPrefix(l, indent))
		out.WriteByte('\n')
	}
	t.Fatalf("unterminated fenced block after %q", marker)
	return ""
}

// substitute replaces each old with new in s; every old must be there, so
// a README edit that renames a path fails here instead of going untested.
func substitute(t *testing.T, s string, pairs ...string) string {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("the guide no longer contains %q:\n%s", pairs[i], s)
		}
		s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
	}
	return s
}

var guideLimits = limitRule("upload-pack", "user", 4, 10, "10s") + `

[[limit]]
name = "receive-pack"
match = ["receive-pack"]
key = "user"
max_per_key = 4
max_queue_size = 10
max_queue_wait = "10s"
`

// TestGuideNginxForgedUser: the README's nginx location behind real nginx +
// fcgiwrap + git-http-backend. A client sending "Authorization: Basic" for
// a user it invented gets 401 for reads and pushes, no push lands, and the
// agent never sees that user; alice with her password clones and pushes,
// admitted as alice.
func TestGuideNginxForgedUser(t *testing.T) {
	nginx, fcgiwrap, _ := needHTTP(t)
	if _, err := os.Stat("/etc/nginx/fastcgi_params"); err != nil {
		t.Skip("/etc/nginx/fastcgi_params is missing (the guide includes it; apt-get install nginx)")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed (apt-get install curl)")
	}
	a := startAgent(t, guideLimits, "open")
	dir := filepath.Join(a.dir, "http")
	repos := filepath.Join(a.dir, "repos")
	client := filepath.Join(a.dir, "client")
	for _, d := range []string{filepath.Join(dir, "tmp"), repos, client} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	gen := t.TempDir()
	src := makeRepo(t, gen, "project", 3)
	upstream := filepath.Join(repos, "project.git")
	git(t, gen, baseEnv(gen), "clone", "-q", "--bare", src, upstream)
	os.WriteFile(filepath.Join(upstream, "git-daemon-export-ok"), nil, 0o644)
	htpasswd := filepath.Join(dir, "git.htpasswd")
	if err := os.WriteFile(htpasswd, []byte("alice:{PLAIN}secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsock := filepath.Join(dir, "fcgiwrap.sock")
	startGroup(t, []string{"PATH=/usr/bin:/bin"}, filepath.Join(dir, "fcgiwrap.log"), fcgiwrap, "-c", "2", "-s", "unix:"+fsock)
	waitFor(t, 10*time.Second, "fcgiwrap's socket", func() bool { _, err := os.Stat(fsock); return err == nil })

	// The README's block; only deployment paths change, plus the test
	// agent's socket and a hermetic git configuration.
	testParams := fmt.Sprintf("fastcgi_param SLUICE_SOCKET %s;\n    fastcgi_param SLUICE_SHIM_LOG %s;\n    fastcgi_param HOME %s;\n    fastcgi_param GIT_CONFIG_NOSYSTEM 1;\n    fastcgi_param GIT_CONFIG_GLOBAL /dev/null;\n    fastcgi_pass unix:%s;",
		a.socket, a.shimLog, a.dir, fsock)
	location := substitute(t, guideBlock(t, "test/guides_test.go runs the block below"),
		"/etc/nginx/git.htpasswd", htpasswd,
		"GIT_PROJECT_ROOT /srv/git;", "GIT_PROJECT_ROOT "+repos+";",
		"/usr/lib/sluice/bin", a.shimBin,
		"/usr/lib/sluice/git-core", a.shimBin,
		"fastcgi_pass unix:/run/fcgiwrap.socket;", testParams,
	)
	for _, must := range []string{"auth_basic ", "REMOTE_USER $remote_user"} {
		if !strings.Contains(location, must) {
			t.Fatalf("the guide's location lacks %q:\n%s", must, location)
		}
	}
	port := freePort(t)
	conf := gitserver.Nginx{Dir: dir, Port: port}.Conf(location)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	startGroup(t, []string{"PATH=/usr/sbin:/usr/bin:/bin"}, filepath.Join(dir, "nginx.out"), nginx, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	waitListening(t, port, "nginx")
	defer func() {
		if t.Failed() {
			t.Logf("nginx.conf:\n%s\nnginx error log:\n%s\nfcgiwrap log:\n%s", conf, readFile(filepath.Join(dir, "error.log")), readFile(filepath.Join(dir, "fcgiwrap.log")))
		}
	}()
	base := "http://127.0.0.1:" + strconv.Itoa(port) + "/project.git"
	forged := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("mallory:anything"))
	env := append(baseEnv(client), "GIT_CONFIG_GLOBAL=/dev/null")

	// Raw requests with the forged header: every one is 401.
	for _, path := range []string{"/info/refs?service=git-upload-pack", "/info/refs?service=git-receive-pack", "/HEAD"} {
		out, err := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", forged, base+path).Output()
		if err != nil {
			t.Fatalf("curl %s: %v", path, err)
		}
		if string(out) != "401" {
			t.Errorf("GET %s with a forged Authorization header: HTTP %s, want 401", path, out)
		}
	}
	out, err := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", forged,
		"-H", "Content-Type: application/x-git-receive-pack-request", "--data-binary", "0000", base+"/git-receive-pack").Output()
	if err != nil || string(out) != "401" {
		t.Errorf("POST git-receive-pack with a forged Authorization header: HTTP %s (%v), want 401", out, err)
	}

	// A push with the forged header, through real git.
	before := refs(t, upstream)
	work := filepath.Join(client, "work")
	git(t, client, env, "clone", "-q", src, work)
	os.WriteFile(filepath.Join(work, "forged.txt"), []byte("forged\n"), 0o644)
	git(t, work, env, "add", "forged.txt")
	git(t, work, env, "commit", "-q", "-m", "forged push")
	if o, err := gitTry(work, env, "-c", "http.extraHeader="+forged, "push", base, "HEAD:refs/heads/forged"); err == nil {
		t.Errorf("push with a forged Authorization header succeeded:\n%s", o)
	}
	if o, err := gitTry(client, env, "-c", "http.extraHeader="+forged, "clone", "-q", base, filepath.Join(client, "forged-clone")); err == nil {
		t.Errorf("clone with a forged Authorization header succeeded:\n%s", o)
	}
	if after := refs(t, upstream); after != before {
		t.Errorf("refs changed by a forged push:\n%s\nvs\n%s", before, after)
	}

	// alice, with her password: clone and push, admitted as alice.
	authed := "http://alice:secret@127.0.0.1:" + strconv.Itoa(port) + "/project.git"
	if o, err := gitTry(client, env, "clone", "-q", authed, filepath.Join(client, "alice")); err != nil {
		t.Fatalf("alice's clone: %v\n%s", err, o)
	}
	if o, err := gitTry(work, env, "push", "-q", authed, "HEAD:refs/heads/alice"); err != nil {
		t.Fatalf("alice's push: %v\n%s", err, o)
	}
	users := map[string]int{}
	waitFor(t, 10*time.Second, "alice's upload-pack and receive-pack in the agent's log", func() bool {
		users = map[string]int{}
		for _, l := range strings.Split(a.Logs(), "\n") {
			if strings.Contains(l, `"msg":"command finished"`) {
				for _, u := range []string{"alice", "mallory"} {
					if strings.Contains(l, `"user":"`+u+`"`) {
						users[u]++
					}
				}
			}
		}
		return users["alice"] >= 2
	})
	if strings.Contains(a.Logs(), "mallory") || strings.Contains(readFile(a.shimLog), "mallory") {
		t.Errorf("the forged user reached the agent or the shim:\n%s", a.Logs())
	}
}
