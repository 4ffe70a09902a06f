// Command sluice is the operator CLI of sluice: it checks policies and talks
// to the agent. main.go owns command dispatch (`sluice <command> [flags]`,
// `sluice help [command]`); each command lives in its own file and registers
// itself in the commands table below.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// command is one `sluice <name>` subcommand.
type command struct {
	name    string
	summary string // one line for `sluice help`
	// run executes the command with the arguments after its name and
	// returns the exit status: 0 ok, 1 failure, 2 usage error.
	run func(args []string, stdout, stderr io.Writer) int
}

// commands is the dispatch table, in the order `sluice help` lists them.
var commands = []command{
	{"status", "show what sluiced is doing: rules, counts, cgroups, eBPF", runStatus},
	{"top", "list the git commands in flight and queued, live", runTop},
	{"reload", "make sluiced re-read its policy file", runReload},
	{"validate", "check a policy file, or print the default policy", runValidate},
	{"check", "check the installation: agent, socket, config, cgroups, BPF, shim wiring, git", runCheck},
	{"demo", "run a clone storm against a sandboxed sluiced and git daemon", runDemo},
	{"version", "print the version", runVersion},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a command and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch name := args[0]; name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && name == "help" {
			if c := lookup(args[1]); c != nil {
				return c.run([]string{"-h"}, stdout, stderr)
			}
			fmt.Fprintf(stderr, "sluice: unknown command %q; run 'sluice help' for the list\n", args[1])
			return 2
		}
		usage(stdout)
		return 0
	default:
		c := lookup(name)
		if c == nil {
			fmt.Fprintf(stderr, "sluice: unknown command %q; run 'sluice help' for the list\n", name)
			return 2
		}
		return c.run(args[1:], stdout, stderr)
	}
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

func usage(w io.Writer) {
	var b strings.Builder
	b.WriteString("usage: sluice <command> [flags] [arguments]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-10s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'sluice help <command>' or 'sluice <command> -h' for a command's flags.\n")
	io.WriteString(w, b.String())
}

// parseFlags parses a command's flags. It prints the usage to stdout and
// returns (0, false) for -h, prints the problem and usage to stderr and
// returns (2, false) for a usage error, and returns (0, true) to go on.
// fs must have been created with flag.ContinueOnError.
func parseFlags(fs *flag.FlagSet, usageText string, args []string, stdout, stderr io.Writer) (int, bool) {
	printUsage := func(w io.Writer) {
		io.WriteString(w, usageText)
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	fs.SetOutput(stderr) // where flag reports a bad flag
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout)
			return 0, false
		}
		printUsage(stderr)
		return 2, false
	}
	return 0, true
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if code, ok := parseFlags(fs, "usage: sluice version\n\nPrint the version of sluice and the Go it was built with.\n", args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sluice version: takes no arguments")
		return 2
	}
	fmt.Fprintf(stdout, "sluice %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return 0
}
