package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/gitserver"
)

const (
	nginxBin    = "/usr/sbin/nginx"
	fcgiwrapBin = "/usr/sbin/fcgiwrap"
	httpBackend = "/usr/lib/git-core/git-http-backend"
)

// httpServer is nginx + fcgiwrap + git-http-backend, as packaging/README.md
// wires smart HTTP, inside the server cgroup.
type httpServer struct {
	nginx, fcgi *proc
	port        int
	dir         string
}

func (h *httpServer) stop() {
	if h == nil {
		return
	}
	h.nginx.stop(syscall.SIGTERM, 3*time.Second)
	h.fcgi.stop(syscall.SIGTERM, 3*time.Second)
}

// startHTTP starts fcgiwrap with workers CGI workers (each serves one
// request at a time: fewer than the clients would make fcgiwrap itself the
// storm's limit, hiding what the Git server does, as git daemon's default
// --max-connections would) and nginx in front of it on a free loopback
// port. env is what git-http-backend and the git it runs get.
func startHTTP(base, dir string, cg *serverCgroup, env []string, workers int) (*httpServer, error) {
	for _, b := range []string{nginxBin, fcgiwrapBin, httpBackend} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("-transport http needs %s (apt-get install nginx fcgiwrap git): %w", b, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	h := &httpServer{dir: dir}
	fsock := filepath.Join(dir, "fcgiwrap.sock")
	var err error
	fc := inCgroup(cg, fcgiwrapBin, "-c", fmt.Sprint(workers), "-s", "unix:"+fsock)
	fc.Env = []string{"PATH=/usr/bin:/bin"}
	if h.fcgi, err = startProc(fc, filepath.Join(dir, "fcgiwrap.log")); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(fsock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			h.stop()
			return nil, errors.New("fcgiwrap did not create its socket within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h.port, err = freePort(); err != nil {
		h.stop()
		return nil, err
	}
	conf := gitserver.Nginx{Dir: dir, Port: h.port, WorkerConnections: 4096}.Conf(
		gitserver.GitLocation(httpBackend, fsock, append(append([]string{}, env...), "GIT_PROJECT_ROOT="+base, "GIT_HTTP_EXPORT_ALL=1")))
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		h.stop()
		return nil, err
	}
	ng := inCgroup(cg, nginxBin, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", cfg)
	ng.Env = []string{"PATH=/usr/sbin:/usr/bin:/bin"}
	if h.nginx, err = startProc(ng, filepath.Join(dir, "nginx.out")); err != nil {
		h.stop()
		return nil, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", h.port), 200*time.Millisecond); err == nil {
			c.Close()
			return h, nil
		}
		select {
		case <-h.nginx.done:
			h.stop()
			return nil, fmt.Errorf("nginx exited at start-up: %s %s", tail(filepath.Join(dir, "nginx.out"), 2000), tail(filepath.Join(dir, "error.log"), 2000))
		default:
		}
		if time.Now().After(deadline) {
			h.stop()
			return nil, errors.New("nginx did not listen within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
