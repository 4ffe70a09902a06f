package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const sshdBin = "/usr/sbin/sshd"

// sshKeys are the keys of the ssh transport, made once per invocation.
type sshKeys struct {
	dir     string // host_key, client_key, authorized_keys
	command string // GIT_SSH_COMMAND for the clients
}

// newSSHKeys makes a host key and a client key under dir and the
// GIT_SSH_COMMAND that uses them.
func newSSHKeys(dir string) (*sshKeys, error) {
	if _, err := os.Stat(sshdBin); err != nil {
		return nil, fmt.Errorf("-transport ssh needs %s (apt-get install openssh-server): %w", sshdBin, err)
	}
	if _, err := os.Stat("/usr/bin/git-shell"); err != nil {
		return nil, fmt.Errorf("-transport ssh needs /usr/bin/git-shell: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for _, k := range []string{"host_key", "client_key"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ssh-keygen %s: %v: %s", k, err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client_key.pub"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, err
	}
	cmd := fmt.Sprintf("ssh -F /dev/null -i %s -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR -o BatchMode=yes",
		filepath.Join(dir, "client_key"))
	return &sshKeys{dir: dir, command: cmd}, nil
}

// startSSHD starts sshd inside cg on a free loopback port, as
// packaging/README.md wires it: the login runs git-shell (ForceCommand, so
// root's own shell never interprets the client's command), sshd's
// children inherit the server cgroup, and SetEnv hands the server-side git
// the environment env (PATH, GIT_EXEC_PATH to the shim, SLUICE_SOCKET…),
// since sshd does not pass its own. AcceptEnv GIT_PROTOCOL keeps protocol
// v2. MaxStartups is raised above the client count: sshd's default
// (10:30:100) drops concurrent unauthenticated connections at random,
// which would measure sshd's throttle rather than the Git server.
func startSSHD(k *sshKeys, dir string, cg *serverCgroup, env []string) (*proc, int, error) {
	if _, err := os.Stat("/run/sshd"); err != nil {
		if err := os.Mkdir("/run/sshd", 0o755); err != nil {
			return nil, 0, err
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	var setenv []string
	for _, e := range env {
		if strings.ContainsAny(e, " \t\"") {
			return nil, 0, fmt.Errorf("sshd SetEnv cannot carry %q", e)
		}
		setenv = append(setenv, e)
	}
	conf := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host_key
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
UsePAM no
StrictModes no
UseDNS no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers root
MaxStartups 1000
MaxSessions 1000
AcceptEnv GIT_PROTOCOL
ForceCommand /usr/bin/git-shell -c "$SSH_ORIGINAL_COMMAND"
SetEnv %s
`, port, k.dir, dir, k.dir, strings.Join(setenv, " "))
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, 0, err
	}
	logPath := filepath.Join(dir, "sshd.log")
	p, err := startProc(inCgroup(cg, sshdBin, "-D", "-f", cfg, "-E", logPath), filepath.Join(dir, "sshd.out"))
	if err != nil {
		return nil, 0, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			c.Close()
			return p, port, nil
		}
		select {
		case <-p.done:
			return nil, 0, fmt.Errorf("sshd exited at start-up: %s %s", tail(filepath.Join(dir, "sshd.out"), 2000), tail(logPath, 2000))
		default:
		}
		if time.Now().After(deadline) {
			p.stop(syscall.SIGKILL, time.Second)
			return nil, 0, errors.New("sshd did not listen within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
