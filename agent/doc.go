// Package agent owns sluiced's admission path: the Unix socket and its
// protocol demultiplexer, the admission service (gRPC and the shim's
// framing), the admin API, reload and the lease table. It asks
// agent/limiter for slots (the keyed semaphores and queues of each rule)
// and lets agent/adaptive move the limits of adaptive rules.
//
// # Lifecycle
//
// sluiced builds its parts (cgroup.Setup, ebpf.Setup, packcache.Open, the
// exporter), hands them to New, and calls Start (socket, shim.conf,
// restart recovery) and Run (serving, the tracer's events, the adaptive
// controller, reload on SIGHUP, the stop and its cleanup); run.go. What
// the agent does with those parts — shim.conf from the policy, the
// [cgroups] section on reload, their state in Status — is in parts.go.
//
// # One socket, two protocols
//
// The shim runs once per git process and must start in about a
// millisecond, so it cannot afford grpc-go (PLATFORM.md: ~2.4 ms of package
// init and ~1 ms for the first call). The agent therefore serves the same
// protobuf messages (agent/admitpb) two ways on one socket and tells them
// apart by the first byte a client sends: 'P' starts gRPC's HTTP/2 preface,
// 'S' starts the shim's magic "SLUICE/1\n" followed by length-prefixed
// frames (package agent/shimproto). Both paths end in the same admission code.
//
// # Leases
//
// A lease lives as long as the connection (or gRPC stream) that asked for
// it and the peer process that opened it, whichever ends first. The shim
// keeps it open while git runs and sends Finished with the exit status and
// resource usage before closing; if the shim dies, even by SIGKILL, the
// kernel closes the socket and the slot is released at once. A peer that
// exits while its connection lives on (handed to a child) releases the
// slot too: the agent watches the peer's pidfd (execmode.go,
// holdSupervised). A waiter whose connection closes leaves its queue at
// once.
//
// The caller is identified by SO_PEERCRED, read when the connection is
// accepted; nothing the request claims about pid, uid or gid is used.
// [agent] admit_users / admit_groups may narrow who can ask (auth.go); the
// admin API needs root or admin_group (admin.go).
//
// # Bounds
//
// Connections, message sizes, request fields, the hello, queues and keys
// are all bounded, so no client count or key count can exhaust the agent's
// memory or file descriptors (bounds.go lists them).
//
// # Keys that cannot be derived
//
// When a rule's key needs a part the request lacks (no client IP for a
// file:// clone or a cron job, no user), that part is the literal "unknown":
// all such requests of a rule share one key and one queue. Gitaly instead
// lets them through unlimited; sluice does not, because local jobs and
// misconfigured servers are exactly the storms it exists to stop.
//
// # Timeouts
//
// A running lease may be bounded by its rule's max_runtime and, for
// upload-pack and upload-archive, by the [timeouts] negotiation timeouts,
// which end when the server starts its pack-objects (or archive writer).
// timeouts.go says how that start is seen and why it is the right point for
// protocol v0/v1 and v2; on expiry the command is told on stderr, SIGTERMed
// and, after kill_grace, SIGKILLed with its descendants.
//
// # Trust boundaries
//
// The agent is root; its callers are not. Three rules keep it from acting
// for them beyond what they could do themselves:
//
//   - It trusts only files it could have written (safedir.go): the socket
//     directory and leases/ must belong to the agent's uid and not be
//     writable by group or others, every directory above them must belong
//     to root or the agent and not be writable by others (unless sticky),
//     and no symlink is followed on the way; sluiced refuses to start
//     otherwise, naming the path, owner, mode and the fix. Lease records
//     are created, read and removed relative to the checked directory's
//     descriptor, with O_NOFOLLOW, and adopted only from a regular,
//     singly linked file owned by the agent and not writable by others.
//   - It writes to a caller only through a descriptor the caller holds
//     open for writing (stderr.go): never by reopening a path, never
//     blocking, never on a set-id file or a kernel pseudo file.
//     Caller-supplied text (correlation id, user, command, remote address,
//     repository) is escaped and bounded once, where a request enters
//     (sanitize.go), before any log line or message shows it.
//   - It signals only through pidfds (timeouts.go): the peer's, taken when
//     its connection was accepted, and those of descendants proven to
//     descend from it while that pidfd was alive. Nothing is ever signalled
//     by pid number, so a reused pid is never hit.
//
// # Rejections
//
// A request is rejected when its key's queue is full (max_size), when it
// waited max_queue_wait (max_time), when it is malformed (invalid), while
// the agent shuts down (unavailable: the shim then applies fail_mode), when
// the agent already serves max_connections (max_size) or the caller's uid
// max_connections_per_uid (permission), or when the caller may not admit
// (permission). Only unavailable is a fail-over: a saturated agent never
// turns into git without a lease (bounds.go). The rejection carries one
// line for the git client, starting with "sluice: ".
package agent
