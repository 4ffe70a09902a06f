package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// A discarding client (-client discard): a clone, shallow clone or fetch
// over git:// speaks protocol v2 itself, from its own source address,
// and counts the pack's bytes instead of indexing them. With 48 clients
// on one CPU, git's own clients spend that CPU in index-pack and bound
// clones per minute by what they can index (the report's "client-bound");
// a discarding client costs almost nothing, so the server — sluice's
// limits, the budget, the pack cache — bounds goodput. The server does
// the same work either way: upload-pack negotiates, pack-objects builds
// and sends the whole pack, and the connection is read to its end.

// rawFetch fetches every branch of the repository at rawURL (git://) from
// local address addr: haves are sent as such (a fetch), depth > 0 asks
// for a shallow pack. It returns the pack's bytes.
func rawFetch(ctx context.Context, rawURL, addr string, haves []string, depth int) (int64, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "git" {
		return 0, fmt.Errorf("discarding client: %q is not a git:// URL", rawURL)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	w := bufio.NewWriter(conn)
	r := bufio.NewReaderSize(conn, 64<<10)
	pkt(w, "git-upload-pack "+u.Path+"\x00host="+u.Host+"\x00\x00version=2\x00")
	if err := w.Flush(); err != nil {
		return 0, err
	}
	// Capability advertisement, up to its flush.
	if err := skipSection(r); err != nil {
		return 0, fmt.Errorf("capabilities: %w", err)
	}
	pkt(w, "command=ls-refs\n")
	w.WriteString("0001")
	pkt(w, "ref-prefix refs/heads/\n")
	w.WriteString("0000")
	if err := w.Flush(); err != nil {
		return 0, err
	}
	var wants []string
	for {
		line, kind, err := readPkt(r)
		if err != nil {
			return 0, fmt.Errorf("ls-refs: %w", err)
		}
		if kind != pktData {
			break
		}
		if oid, _, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " "); ok {
			wants = append(wants, oid)
		}
	}
	if len(wants) == 0 {
		return 0, errors.New("ls-refs: no branches")
	}
	pkt(w, "command=fetch\n")
	w.WriteString("0001")
	pkt(w, "ofs-delta\n")
	pkt(w, "no-progress\n")
	for _, oid := range wants {
		pkt(w, "want "+oid+"\n")
	}
	for _, oid := range haves {
		pkt(w, "have "+oid+"\n")
	}
	if depth > 0 {
		pkt(w, "deepen "+strconv.Itoa(depth)+"\n")
	}
	pkt(w, "done\n")
	w.WriteString("0000")
	if err := w.Flush(); err != nil {
		return 0, err
	}
	// Sections before the pack (shallow-info) end with a delimiter; the
	// pack comes side-band framed after "packfile", up to a flush.
	for {
		line, kind, err := readPkt(r)
		if err != nil {
			return 0, fmt.Errorf("fetch: %w", err)
		}
		if kind == pktData && line == "packfile\n" {
			break
		}
	}
	var n int64
	for {
		line, kind, err := readPkt(r)
		if err != nil {
			return n, fmt.Errorf("pack after %d bytes: %w", n, err)
		}
		if kind != pktData {
			return n, nil
		}
		switch line[0] {
		case 1:
			n += int64(len(line) - 1)
		case 3:
			return n, fmt.Errorf("remote error: %s", strings.TrimSpace(line[1:]))
		}
	}
}

type pktKind int

const (
	pktData pktKind = iota
	pktFlush
	pktDelim
	pktEnd
)

// readPkt reads one pkt-line; an "ERR " line is returned as an error
// carrying the server's message (sluice's rejections arrive so).
func readPkt(r *bufio.Reader) (string, pktKind, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
	if err != nil {
		return "", 0, fmt.Errorf("bad pkt-line length %q", hdr[:])
	}
	switch n {
	case 0:
		return "", pktFlush, nil
	case 1:
		return "", pktDelim, nil
	case 2:
		return "", pktEnd, nil
	case 3:
		return "", 0, fmt.Errorf("bad pkt-line length %q", hdr[:])
	}
	buf := make([]byte, n-4)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", 0, err
	}
	line := string(buf)
	if msg, ok := strings.CutPrefix(line, "ERR "); ok {
		return "", 0, fmt.Errorf("remote error: %s", strings.TrimSpace(msg))
	}
	return line, pktData, nil
}

// skipSection reads pkt-lines up to a flush.
func skipSection(r *bufio.Reader) error {
	for {
		_, kind, err := readPkt(r)
		if err != nil {
			return err
		}
		if kind == pktFlush {
			return nil
		}
	}
}

func pkt(w *bufio.Writer, s string) {
	fmt.Fprintf(w, "%04x%s", len(s)+4, s)
}

// rawOp runs one discarding operation and classifies it like runGit.
func rawOp(hard context.Context, timeout time.Duration, rawURL, addr string, haves []string, depth int) (time.Duration, outcome, string, int64) {
	ctx, cancel := context.WithTimeout(hard, timeout)
	defer cancel()
	t0 := time.Now()
	n, err := rawFetch(ctx, rawURL, addr, haves, depth)
	d := time.Since(t0)
	switch {
	case err == nil:
		return d, ok, "", n
	case hard.Err() != nil:
		return d, cutOff, err.Error(), n
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return d, timedOut, err.Error(), n
	case strings.Contains(err.Error(), "sluice:"):
		return d, rejected, err.Error(), n
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), strings.Contains(err.Error(), "connection reset"):
		return d, hungUp, err.Error(), n
	}
	return d, failed, err.Error(), n
}
