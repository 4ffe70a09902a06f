package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/sluicehq/sluice/agent/admitpb"
)

const reloadUsage = `usage: sluice reload [--socket S]

Ask sluiced to re-read its policy file and apply it without a restart
(the same as SIGHUP, but with an answer). An invalid file changes nothing:
every problem is printed and the old policy stays in force. Requests in
flight and queued are never dropped by a reload.

Needs root or membership of [agent] admin_group.

Exit status: 0 applied, 1 not applied or the agent could not be asked,
2 usage error.

flags:
`

func runReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	socket := fs.String("socket", "", "agent socket (default: $SLUICE_SOCKET, else /run/sluice/sluice.sock as root)")
	if code, ok := parseFlags(fs, reloadUsage, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sluice reload: takes no arguments; run 'sluice reload -h'")
		return 2
	}
	c, err := dialAdmin(resolveSocket(*socket))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer c.Close()
	resp, err := c.Reload(context.Background())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return printReload(resp, stdout, stderr)
}

// printReload reports a reload's outcome and returns the exit status.
func printReload(resp *admitpb.ReloadResponse, stdout, stderr io.Writer) int {
	if !resp.Applied {
		fmt.Fprintf(stderr, "sluice reload: %s not applied; the previous policy stays in force:\n", orDash(resp.ConfigPath))
		for _, e := range resp.Errors {
			fmt.Fprintf(stderr, "  %s\n", e)
		}
		if len(resp.Errors) == 0 {
			fmt.Fprintln(stderr, "  (sluiced gave no reason; see its log)")
		}
		return 1
	}
	if len(resp.Changes) == 0 {
		fmt.Fprintf(stdout, "reloaded %s: no changes\n", orDash(resp.ConfigPath))
		return 0
	}
	fmt.Fprintf(stdout, "reloaded %s:\n", orDash(resp.ConfigPath))
	for _, c := range resp.Changes {
		fmt.Fprintf(stdout, "  %s\n", c)
	}
	return 0
}
