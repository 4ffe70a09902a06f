// Package pkgdoc owns the check that every package of the module says, in
// its doc comment, what it owns (issue 15): the test in this package runs
// `go list ./...` and reads each package's doc comment from its files,
// test files included (a package of tests only, such as test and
// packaging, documents itself in one of them).
//
// The rule: a library or test package's doc starts "Package <name> owns"
// or "Package <name> holds", and names what it owns in that sentence; a
// command's starts "Command <name> " and says what the command does. A new
// package without such a comment fails the test, so the package map in
// the README and the code cannot drift apart silently.
package pkgdoc
