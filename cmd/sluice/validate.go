package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/sluicehq/sluice/policy"
)

const validateUsage = `usage: sluice validate [FILE]
       sluice validate --print-defaults

Check a policy file (default ` + policy.DefaultPath + `) the way sluiced reads it:
strict TOML, every unknown key, wrong type and invalid value reported with its
line. Without FILE, when the default file does not exist, the embedded default
policy is checked instead.

Exit status: 0 valid, 1 invalid or unreadable, 2 usage error.

flags:
`

func runValidate(args []string, stdout, stderr io.Writer) int {
	return validate(args, policy.DefaultPath, stdout, stderr)
}

// validate is runValidate with the default file injected, for tests.
func validate(args []string, defaultPath string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("validate", flag.ContinueOnError)
	printDefaults := fset.Bool("print-defaults", false, "print the embedded default policy and exit")
	if code, ok := parseFlags(fset, validateUsage, args, stdout, stderr); !ok {
		return code
	}
	if *printDefaults {
		if fset.NArg() > 0 {
			fmt.Fprintln(stderr, "sluice validate: --print-defaults takes no FILE")
			return 2
		}
		if _, err := stdout.Write(policy.DefaultTOML()); err != nil {
			fmt.Fprintf(stderr, "sluice validate: %v\n", err)
			return 1
		}
		return 0
	}
	if fset.NArg() > 1 {
		fmt.Fprintln(stderr, "sluice validate: takes at most one FILE; run 'sluice validate -h'")
		return 2
	}

	path := defaultPath
	if fset.NArg() == 1 {
		path = fset.Arg(0)
	}
	cfg, err := policy.Load(path)
	if fset.NArg() == 0 && errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "sluice validate: %s does not exist; checking the embedded default policy, which sluiced uses without a file\n", path)
		cfg, err = policy.Default(), nil
	}
	if err != nil {
		var problems policy.Errors
		if errors.As(err, &problems) {
			for _, p := range problems {
				fmt.Fprintln(stderr, p.Error())
			}
		} else {
			fmt.Fprintf(stderr, "sluice validate: %v\n", err)
		}
		return 1
	}
	names := cfg.RuleNames()
	rules := "rules"
	if len(names) == 1 {
		rules = "rule"
	}
	summary := fmt.Sprintf("%d %s", len(names), rules)
	if len(names) > 0 {
		summary += ": " + strings.Join(names, ", ")
	}
	switch {
	case cfg.DefaultLimits:
		summary += "; the file defines no [[limit]], so the default rules apply (write limit = [] for none)"
	case len(names) == 0:
		summary += "; limit = []: no git command is limited"
	}
	fmt.Fprintf(stdout, "%s: ok (%s)\n", cfg.Source, summary)
	return 0
}
