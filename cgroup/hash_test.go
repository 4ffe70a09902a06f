package cgroup

import (
	"bytes"
	"testing"
)

func TestBucketForStable(t *testing.T) {
	// Golden values: changing the hash moves every repository to another
	// bucket, so these must never change.
	for _, tc := range []struct {
		repo string
		n    int
		want int
	}{
		{"", 64, int(14695981039346656037 % 64)}, // FNV-1a 64 offset basis
		{"/srv/git/linux.git", 64, 11},
		{"/srv/git/linux.git", 1000, 931},
		{"/srv/git/linux.git", 1, 0},
	} {
		got := BucketFor([]byte(tc.repo), tc.n)
		if got != tc.want {
			t.Errorf("BucketFor(%q, %d) = %d, want %d", tc.repo, tc.n, got, tc.want)
		}
		if again := BucketFor([]byte(tc.repo), tc.n); again != got {
			t.Errorf("BucketFor(%q, %d) not stable: %d then %d", tc.repo, tc.n, got, again)
		}
	}
	// Known FNV-1a 64 vector: "a" → 0xaf63dc4c8601ec8c.
	if got, want := BucketFor([]byte("a"), 1000), int(uint64(0xaf63dc4c8601ec8c)%1000); got != want {
		t.Errorf("BucketFor(a, 1000) = %d, want %d", got, want)
	}
}

func TestBucketForSpread(t *testing.T) {
	const n = 16
	seen := make(map[int]int)
	for i := range 1600 {
		seen[BucketFor([]byte("/srv/git/group/repo-"+string(rune('a'+i%26))+string(rune('0'+i/26%10))+string(rune('A'+i/260))+".git"), n)]++
	}
	if len(seen) != n {
		t.Errorf("1600 repositories hit only %d of %d buckets: %v", len(seen), n, seen)
	}
}

func TestBucketForBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		repo []byte
	}{
		{"4KiB", bytes.Repeat([]byte("x/"), 2048)},
		{"dotdot", []byte("..")},
		{"traversal", []byte("../../../../etc/passwd")},
		{"non-UTF-8", []byte{0xff, 0xfe, 0x80, '/', 0xc3}},
		{"NUL", []byte("repo\x00.git")},
		{"nil", nil},
		{"newline", []byte("a\nb")},
	} {
		for _, n := range []int{-1, 0, 1, 2, 7, 64, 1 << 20} {
			got := BucketFor(tc.repo, n)
			hi := max(n, 1)
			if got < 0 || got >= hi {
				t.Errorf("%s: BucketFor(n=%d) = %d, want in [0, %d)", tc.name, n, got, hi)
			}
		}
	}
}
