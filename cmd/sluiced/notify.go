package main

import (
	"net"
	"os"
)

// sdNotify sends state to systemd when it started us with Type=notify
// (NOTIFY_SOCKET set); otherwise it does nothing. Abstract socket names
// start with '@'.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	if path[0] == '@' {
		addr.Name = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
