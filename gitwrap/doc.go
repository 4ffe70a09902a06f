// Package gitwrap owns what the shim knows about git: parsing the argv git
// was (or would have been) run with, deriving the repository, client address,
// user and correlation id from argv and environment, finding the real git
// without ever finding the shim, running it (exec in place, or supervised
// with signal forwarding and exit-status transparency) and pkt-line helpers.
//
// It links nothing heavy (no net, fmt, reflect, os/exec): it runs in the
// shim, once per git process.
//
// # Invocation forms
//
//	git [global options] <subcommand> args…     (shim installed as git)
//	git-upload-pack DIR, git-receive-pack DIR,
//	git-upload-archive DIR                     (dashed names, e.g. over ssh)
//	sluice-shim git [global options] pack-objects …
//	                                           (uploadpack.packObjectsHook: hook mode)
//	sluice-shim --version
//
// Real git is always run as `git <global options> <subcommand> args…`, the
// dashed forms rewritten to `git upload-pack DIR`. Argv the shim does not
// understand (unknown global options, --version, no subcommand) is
// "unmatched" and goes to git untouched.
//
// # Repository
//
// The repository key is the physical path git opens: symlinks resolved and
// each ".." taken from where the path before it really is (as chdir does),
// so a symlinked path, ".." across a symlink and "~/" under a symlinked HOME
// key the same as the real path (filepath.EvalSymlinks: one lstat per
// component, on the matched path only). A path that does not resolve is
// cleaned lexically. -C options apply in order, relative to each other.
// upload-pack, receive-pack and upload-archive take their directory argument
// (the non-option argument; options may follow it, and `--timeout N` takes
// the next argument as its value); unless upload-pack has --strict, the same
// suffixes git's enter_repo tries ("/.git", "", ".git/.git", ".git") are probed
// with stat so that host:repo and host:repo.git key the same, and "~" /
// "~user" are expanded as git does. Other subcommands (pack-objects in hook
// mode included) use --git-dir, else GIT_DIR, else the working directory;
// there is no upward .git discovery. A trailing "/.git" is stripped, so a
// non-bare repository keys the same whichever way it is reached. Paths are
// bytes: NUL or non-UTF-8 bytes go to the agent as they are.
//
// # Client address (first that parses as an IP address wins)
//
//  1. REMOTE_ADDR (git daemon and CGI servers — git-http-backend under
//     nginx+fcgiwrap or Apache — set it for the connection they serve; IPv6
//     in brackets);
//  2. SSH_CONNECTION, first field (OpenSSH; also reaches git under Gitea and
//     Forgejo behind OpenSSH, whose `serv` passes its environment on);
//  3. SSH_CLIENT, first field (older OpenSSH).
//
// REMOTE_ADDR wins because nothing passes it on by accident, while
// SSH_CONNECTION is inherited by everything started from an ssh login: a
// git daemon an operator started by hand would otherwise key every client
// by the operator's own address.
//
// Ports, brackets and zones are stripped and IPv4-mapped IPv6 addresses are
// unmapped; anything that does not parse gives "". X-Forwarded-For
// (HTTP_X_FORWARDED_FOR) is never trusted. Gitaly keeps the client address in
// its own hook payload, not in git's environment, so under GitLab the address
// is "" unless the server exports one of the variables above.
//
// # User (first non-empty wins)
//
//  1. GL_USERNAME (GitLab/Gitaly, where it exports it);
//  2. GITEA_PUSHER_NAME (Gitea and Forgejo: set by `serv` for every ssh git
//     command and by the HTTP handler for pushes);
//  3. REMOTE_USER (CGI: the user the web server authenticated);
//  4. only when SSH_CONNECTION is set: USER, then LOGNAME — over ssh the unix
//     account IS the authenticated identity (on a shared "git" account every
//     user gets the same key; that is the truth the server gave us). Under git
//     daemon or a web server USER is the service account, so it is not used.
//
// # Correlation id
//
// CORRELATION_ID if set (GitLab's name), else 16 random lowercase hex
// characters that the shim also puts into git's environment, so
// /proc/PID/environ of git and of its hooks (pack-objects included) shows it.
package gitwrap
