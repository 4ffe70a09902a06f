package cgroup

import "hash/fnv"

// BucketFor maps a repository to one of n buckets: FNV-1a 64 of the repository
// path bytes, mod n. It is stable across runs, hosts and versions (changing it
// would move every repository to another bucket), accepts any bytes (4 KiB
// paths, "..", non-UTF-8, NUL) and always returns a valid index in [0, n); for
// n < 1 it returns 0. The path is only hashed: it never becomes a file name.
// Callers should pass the same spelling of a repository every time (e.g. the
// cleaned absolute path of the bare repository).
func BucketFor(repo []byte, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New64a()
	h.Write(repo) // never fails
	return int(h.Sum64() % uint64(n))
}
