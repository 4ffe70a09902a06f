package main

import (
	"os"
	"strconv"
	"syscall"
	"time"
)

// logEnv names a file that receives the shim's warnings instead of syslog.
const logEnv = "SLUICE_SHIM_LOG"

// warn records a warning: appended to $SLUICE_SHIM_LOG when set, else one
// syslog datagram to /dev/log, else stderr. (log/syslog is not used: it
// links package net.)
func warn(msg string) {
	if path := os.Getenv(logEnv); path != "" {
		line := time.Now().Format(time.RFC3339) + " sluice-shim[" + strconv.Itoa(os.Getpid()) + "]: " + msg + "\n"
		fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_APPEND|syscall.O_CREAT|syscall.O_CLOEXEC, 0o644)
		if err == nil {
			_, err = syscall.Write(fd, []byte(line))
			syscall.Close(fd)
			if err == nil {
				return
			}
		}
	} else if syslog(msg) == nil {
		return
	}
	os.Stderr.WriteString("sluice-shim: warning: " + msg + "\n")
}

// syslog sends msg to the local syslog socket with facility user (1) and
// severity warning (4): priority 12, RFC 3164 framing.
func syslog(msg string) error {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: "/dev/log"}); err != nil {
		return err
	}
	line := "<12>" + time.Now().Format(time.Stamp) + " sluice-shim[" + strconv.Itoa(os.Getpid()) + "]: " + msg
	_, err = syscall.Write(fd, []byte(line))
	return err
}
