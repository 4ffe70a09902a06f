package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// Client identity. Every client has a loopback source address of its own
// (127.0.0.2, 127.0.0.3, …; the probe keeps 127.0.0.1), so the server —
// and sluice's remote_ip key — sees K clients from N addresses, as a CI
// fleet of many runners looks. How each transport binds the address:
//
//   - git://: GIT_PROXY_COMMAND runs
//     `socat -t 300 STDIO,shut-close TCP:$1:$2,bind=ADDR` (git daemon then
//     sets REMOTE_ADDR=ADDR). -t 300: without it socat exits 0.5 s after
//     the client half-closes and large clones die (PLATFORM.md).
//     shut-close: with -t alone, when the server closes first (sluice
//     rejected upload-pack, the OOM killer took it) socat cannot shut down
//     a pipe, keeps git's stdout open for the 300 s and the client hangs
//     instead of failing; closing the fd gives git its EOF at once, as a
//     direct TCP connection would (measured: 4 of 6 clients hung until the
//     end of the window with `-`, 21 rejections seen as failures with
//     STDIO,shut-close).
//   - ssh: `ssh -o BindAddress=ADDR` in GIT_SSH_COMMAND (sshd's
//     SSH_CONNECTION carries ADDR).
//   - smart HTTP: git cannot bind a source address, so the harness runs one
//     tiny TCP forwarder per address in its own process: it listens on
//     127.0.0.1:<ephemeral> and dials nginx from ADDR; a client of address
//     ADDR uses http://127.0.0.1:<that port>/… (nginx's REMOTE_ADDR = ADDR).

// clientAddr is the source address of identity i (0-based): 127.0.0.2 …
// 127.0.0.251, then 127.1.0.2, … (127.0.0.1 is the probe's).
func clientAddr(i int) string {
	return fmt.Sprintf("127.%d.%d.%d", i/(250*250)%250, i/250%250+boolInt(i >= 250), i%250+2)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// proxyScript writes the GIT_PROXY_COMMAND script: git calls it with host
// and port; the client's address comes in STORM_BIND.
func proxyScript(dir string) (string, error) {
	if _, err := os.Stat("/usr/bin/socat"); err != nil {
		return "", fmt.Errorf("git:// from many addresses needs socat (apt-get install socat): %w", err)
	}
	p := filepath.Join(dir, "git-proxy")
	script := "#!/bin/sh\nexec /usr/bin/socat -t 300 STDIO,shut-close \"TCP:$1:$2,bind=$STORM_BIND\"\n"
	return p, os.WriteFile(p, []byte(script), 0o755)
}

// forwarders are the HTTP transport's per-address TCP forwarders.
type forwarders struct {
	port  map[string]int // client address → local listening port
	lns   []net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// startForwarders starts one forwarder per address to target (host:port).
func startForwarders(addrs []string, target string) (*forwarders, error) {
	f := &forwarders{port: map[string]int{}, conns: map[net.Conn]struct{}{}}
	for _, a := range addrs {
		if _, ok := f.port[a]; ok {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			f.stop()
			return nil, err
		}
		f.lns = append(f.lns, ln)
		f.port[a] = ln.Addr().(*net.TCPAddr).Port
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(a)}}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				f.wg.Add(1)
				go func() {
					defer f.wg.Done()
					f.pipe(c, d, target)
				}()
			}
		}()
	}
	return f, nil
}

func (f *forwarders) track(c net.Conn, on bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	if on {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
	return true
}

// pipe copies both ways, passing each half-close on.
func (f *forwarders) pipe(c net.Conn, d *net.Dialer, target string) {
	defer c.Close()
	up, err := d.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	if !f.track(c, true) || !f.track(up, true) {
		return
	}
	defer f.track(c, false)
	defer f.track(up, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if t, ok := dst.(*net.TCPConn); ok {
			t.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, c)
	go cp(c, up)
	<-done
	<-done
}

func (f *forwarders) url(addr string) string {
	return "127.0.0.1:" + strconv.Itoa(f.port[addr])
}

// stop closes the listeners and every open connection, and waits.
func (f *forwarders) stop() {
	if f == nil {
		return
	}
	for _, ln := range f.lns {
		ln.Close()
	}
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}
