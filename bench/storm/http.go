package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
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
	var params strings.Builder
	for _, kv := range append(append([]string{}, env...), "GIT_PROJECT_ROOT="+base, "GIT_HTTP_EXPORT_ALL=1") {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&params, "            fastcgi_param %s %q;\n", k, v)
	}
	conf := fmt.Sprintf(`user root;
daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/tmp/body;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    proxy_temp_path %[1]s/tmp/proxy;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    server {
        listen 127.0.0.1:%[2]d;
        location / {
            client_max_body_size 0;
            fastcgi_request_buffering off;
            fastcgi_buffering off;
            fastcgi_read_timeout 600s;
            fastcgi_send_timeout 600s;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME %[3]s;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
            fastcgi_param REMOTE_USER $remote_user;
%[4]s            fastcgi_pass unix:%[5]s;
        }
    }
}
`, dir, h.port, httpBackend, params.String(), fsock)
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
