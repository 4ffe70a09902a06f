// Package gitserver owns the nginx configuration that serves Git's smart
// HTTP (git-http-backend through fcgiwrap) for the end-to-end tests and
// the storm bench: one server on a loopback port, its pid, logs and
// temporary files under one directory, and the location block that hands
// every request to git-http-backend.
package gitserver

import (
	"fmt"
	"strings"
)

// Nginx is one nginx server on 127.0.0.1.
type Nginx struct {
	// Dir holds nginx.pid, error.log, access.log (with AccessLog) and
	// tmp/ (which the caller creates).
	Dir  string
	Port int
	// WorkerConnections is events' worker_connections (0: 64).
	WorkerConnections int
	// AccessLog writes Dir/access.log; off otherwise.
	AccessLog bool
}

// Conf returns nginx.conf for a foreground, single-process nginx whose
// server block holds location.
func (n Nginx) Conf(location string) string {
	conns := n.WorkerConnections
	if conns == 0 {
		conns = 64
	}
	access := "off"
	if n.AccessLog {
		access = n.Dir + "/access.log"
	}
	return fmt.Sprintf(`user root;
daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections %[2]d; }
http {
    access_log %[3]s;
    client_body_temp_path %[1]s/tmp/body;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    proxy_temp_path %[1]s/tmp/proxy;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    server {
        listen 127.0.0.1:%[4]d;
%[5]s
    }
}
`, n.Dir, conns, access, n.Port, strings.TrimRight(location, "\n"))
}

// GitLocation is a location block that hands every request to backend
// (git-http-backend) through fcgiwrap's socket, streaming request and
// response bodies, with env (KEY=value) as more fastcgi_params.
func GitLocation(backend, fcgiSocket string, env []string) string {
	var params strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&params, "            fastcgi_param %s %q;\n", k, v)
	}
	return fmt.Sprintf(`        location / {
            client_max_body_size 0;
            fastcgi_request_buffering off;
            fastcgi_buffering off;
            fastcgi_read_timeout 600s;
            fastcgi_send_timeout 600s;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME %s;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
            fastcgi_param REMOTE_USER $remote_user;
%s            fastcgi_pass unix:%s;
        }`, backend, params.String(), fcgiSocket)
}
