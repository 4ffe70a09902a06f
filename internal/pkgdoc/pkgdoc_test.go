package pkgdoc

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

type listed struct {
	ImportPath, Name, Dir string
	GoFiles, TestGoFiles  []string
	Imports               []string
}

// packages lists every package of the module with `go list -json ./...`.
func packages(t *testing.T) []listed {
	t.Helper()
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Skipf("the go command is needed to list the module's packages: %v", err)
	}
	cmd := exec.Command("go", "list", "-e", "-json", "./...")
	cmd.Dir = strings.TrimSpace(string(root))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./... in %s: %v", cmd.Dir, err)
	}
	var pkgs []listed
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages; the module has more", len(pkgs))
	}
	return pkgs
}

// doc returns p's package doc comment, from the first of its files (test
// files after the others) that has one.
func doc(t *testing.T, p listed) string {
	t.Helper()
	fset := token.NewFileSet()
	for _, name := range append(append([]string(nil), p.GoFiles...), p.TestGoFiles...) {
		f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if f.Doc != nil {
			return strings.Join(strings.Fields(f.Doc.Text()), " ")
		}
	}
	return ""
}

// TestEveryPackageSaysWhatItOwns: see the package doc for the rule.
func TestEveryPackageSaysWhatItOwns(t *testing.T) {
	for _, p := range packages(t) {
		d := doc(t, p)
		var prefixes []string
		if p.Name == "main" {
			prefixes = []string{"Command " + filepath.Base(p.Dir) + " "}
		} else {
			prefixes = []string{"Package " + p.Name + " owns ", "Package " + p.Name + " holds "}
		}
		ok := false
		for _, pre := range prefixes {
			ok = ok || strings.HasPrefix(d, pre)
		}
		if !ok {
			t.Errorf("%s: its doc comment must start with \"%s\" and say what the package owns; it is %q (write it in doc.go)",
				p.ImportPath, strings.Join(prefixes, `" or "`), d)
		}
	}
}

// maxSluiceImports is how many of the module's packages a library may
// import; the agent (the admission service, which composes the limiter,
// the adaptive controller, the protocol and the policy) and the commands
// (wiring) are exempt.
const maxSluiceImports = 3

// TestImportBudget: no library but the agent imports more than three of
// the module's packages, so each idea stays in its own package (issue 15).
func TestImportBudget(t *testing.T) {
	const module = "github.com/sluicehq/sluice"
	for _, p := range packages(t) {
		if p.Name == "main" || p.ImportPath == module+"/agent" {
			continue
		}
		var own []string
		for _, imp := range p.Imports {
			if imp == module || strings.HasPrefix(imp, module+"/") {
				own = append(own, strings.TrimPrefix(imp, module+"/"))
			}
		}
		if len(own) > maxSluiceImports {
			t.Errorf("%s imports %d sluice packages %v, more than %d: split it, or let the agent or a command compose them",
				p.ImportPath, len(own), own, maxSluiceImports)
		}
	}
}
