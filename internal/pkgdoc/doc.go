// Package pkgdoc owns the checks that keep the package map as the README
// draws it (issue 15). Its tests run `go list ./...` and check that every
// package says, in its doc comment, what it owns (read from its files,
// test files included: a package of tests only, such as test and
// packaging, documents itself in one of them), and that no library but
// the agent imports more than three of the module's packages (commands
// are wiring and exempt).
//
// The rule: a library or test package's doc starts "Package <name> owns"
// or "Package <name> holds", and names what it owns in that sentence; a
// command's starts "Command <name> " and says what the command does. A new
// package without such a comment fails the test, so the package map in
// the README and the code cannot drift apart silently.
package pkgdoc
