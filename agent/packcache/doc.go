// Package packcache owns sluice's pack-objects cache (issue 18): identical
// fetches share one git pack-objects, while it runs and for max_age after.
//
// # Where the work happens
//
// The agent owns the cache; the shim does the work. sluice-shim runs as
// uploadpack.packObjectsHook. For `git pack-objects --stdout …` it reads
// pack-objects' whole stdin (wants, haves, shallow lines; at most
// shimproto.MaxPackStdin, else it bypasses), opens a second connection on the
// agent's socket (shimproto.PackCacheMagic) and sends the lookup. The agent
// hashes the key, and answers with a file descriptor passed over the Unix
// socket (SCM_RIGHTS):
//
//   - hit (complete entry) or join (entry still being written): a
//     read-only descriptor. The shim streams it to upload-pack from offset
//     0 at its own pace with pread(2); it takes no admission slot at all
//     and runs no git, so in exec mode nothing is charged to it but its own
//     copy loop, and never the writer's CPU.
//   - write (miss): a write-only descriptor. The shim asks for admission
//     exactly as today (so a miss takes a pack-objects slot, queues and is
//     rejected as before), runs pack-objects as a supervised child (the
//     lease reports the child's CPU, so the writer's client is charged the
//     writer's CPU) and tees its stdout: to upload-pack and to the cache
//     file. Then it reports the outcome (PackStatus) to the agent, which
//     tells every joined reader.
//   - bypass: as if there were no cache.
//
// Why not the shim alone with file locks in a directory of the Git
// server's user: several server users (git, www-data, the daemon's) would
// each need a private, trusted directory the shim can find without a
// lookup; counters, LRU eviction across all of them, the size cap and
// "cleared on start" need one owner anyway; and the shim may not link
// crypto (its start-up budget, cmd/sluice-shim/deps_test.go), so hashing a
// large stdin belongs in the agent. Why not the agent running pack-objects
// itself: it is root, so it would have to run git as the caller, in the
// caller's repository, with the caller's environment; keeping git in the
// shim keeps every git process where admission, cgroup placement and CPU
// accounting already put it.
//
// Why the writer tees rather than pack-objects writing into the file
// directly: the writer's own client must never fail because of the cache.
// If the cache file cannot take more (disk full, quota, the entry would
// exceed max_bytes) the shim stops writing it, reports failure (counted as
// a bypass, warned about in the agent's log) and keeps serving its own
// client from the pipe. If the writer's client goes away, the shim keeps
// draining pack-objects into the file, so joined readers still get their
// pack: the writer is not killed when its first client leaves (it does not
// forward SIGHUP/SIGINT/SIGTERM to pack-objects; SIGKILL of course ends it).
//
// # A reader never sees a partial pack
//
// A reader knows the length only when the entry is complete (hit: in the
// answer; join: in the final PackStatus), and exits 0 only after copying
// exactly that many bytes. When the writer fails (pack-objects dies, the
// writer's shim is killed, the cache file fills the disk, the agent goes
// away), a reader that has not sent a byte yet asks the cache once more
// (one of the waiting requests becomes the new writer, the others join it;
// a storm is not turned into N pack-objects by one failure) and, if that
// fails too, runs its own pack-objects through admission as if there were
// no cache; one that
// has already sent bytes to upload-pack cannot restart the pack (pack-objects
// output is not deterministic with threads), so it prints one line
// "sluice: the shared pack for this fetch failed …; try again" and exits
// 75: upload-pack reports pack-objects' failure, the client's index-pack
// discards the partial pack, no repository is left corrupt.
//
// # Key
//
// sha256 over: a version tag; the caller's uid and gid (SO_PEERCRED, not
// anything the caller says); the object directory's device and inode as
// the agent stats it, and its resolved path as the shim found it
// ($GIT_OBJECT_DIRECTORY, else $GIT_DIR or the working directory, plus
// /objects, symbolic links resolved); the pack-objects arguments except
// progress switches (shimproto.PackKeyArg), in order; the GIT_* environment
// except per-caller and tracing variables (shimproto.PackKeyEnv), sorted; and
// every byte of stdin.
//
// Not in the key, so identical fetches from different clients share: the
// remote address (REMOTE_ADDR, SSH_CONNECTION), the correlation id, the
// authenticated user name, GIT_TRACE2 session ids, --progress/-q. They
// describe who asks, not what the pack is: the wants, haves, shallow lines
// and filter determine the objects, and objects are immutable, so a pack
// made for one client is correct for another asking the same thing of the
// same object directory.
//
// # Security
//
// The agent runs as root; cache files are root's, mode 0600, in a
// directory of mode 0700 (the agent refuses a directory someone else owns
// or can write, or a symbolic link). A shim never opens a cache path: it
// only gets descriptors. The uid is in the key, so one Unix user can never
// be handed a pack another user's pack-objects wrote (and a local user in
// the socket group cannot ask for a key of the Git server's user); the
// object directory's identity is in the key, so a client of one repository
// never gets another repository's objects. A writer can only write the one
// file it was given.
//
// # Store
//
// An entry lives max_age from its creation (Gitaly's semantics). Complete
// entries are evicted least recently used first when the sum of their
// sizes exceeds max_bytes; a single entry larger than max_bytes is not
// kept. min_occurrences = 1 writes every cacheable request's pack to the
// cache (so a storm dedupes from its very first request); 2 and more cache
// a key only once it has been seen that many times within max_age
// (Gitaly's default is 1 previous occurrence, i.e. 2 here). A lookup when
// the cache file system has less than a reserve free, or when a cache
// file cannot be created, bypasses (counted, warned at most once a
// minute). The directory's cache files are removed on start.
package packcache
