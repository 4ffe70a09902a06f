// Package policy owns sluice's configuration: the schema of sluice.toml, its
// defaults (the embedded default policy, default.toml), strict TOML parsing,
// validation with operator-facing errors, rule matching (which [[limit]] rule
// admits a git subcommand) and key derivation (which queue a request joins).
//
// # Strictness
//
// Parse rejects unknown keys, values of the wrong type and durations that are
// not quoted Go duration strings, and reports every problem it finds at once,
// each naming the file, line, key and value, what is wrong and how to fix it.
// Keys are matched exactly (case-sensitively): "Name" is not "name".
//
// # Defaults
//
// Parse starts from the defaults and decodes the file over them, so a key the
// file does not mention keeps its default, while a key written with a zero
// value (for example calibration_interval = "0s") is taken as written and
// rejected by Validate where zero is not allowed. A Config built by hand gets
// no defaults: every field's doc comment says what its zero value means.
//
// # Keys
//
// A rule's key names the parts of a request that select its queue: "repo",
// "remote_ip", "user", or a join such as "repo+remote_ip"; "global" puts all
// requests the rule matches in one queue. A part that the shim could not learn
// (an empty repository, address or user) becomes the literal "unknown".
// Requests whose key cannot be derived therefore share one bucket per rule
// (or per known part, for joins) instead of being let through unlimited, as
// Gitaly does for requests without a repository. The usual sources of such
// requests are local jobs (cron mirrors, backup scripts calling git directly)
// and servers that do not pass client identity to git; both are exactly the
// kind of load sluice exists to bound, so they must not bypass protection. The
// price is that unrelated unidentified requests can queue behind each other;
// operators who mind can key those rules on another part.
//
// The key string joins its parts with the ASCII unit separator (0x1f). It is
// internal to the limiter and is never used as a metric label.
package policy
