package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
)

// repoParams shape a generated repository. Everything is derived from them
// and a fixed seed, so one set of parameters always gives the same
// repository, and the cache directory is keyed by them.
type repoParams struct {
	Files   int // files in the first commit
	Bytes   int // size of each file
	Fanout  int // files per directory (two directory levels above them)
	Commits int // further commits
	Changes int // files rewritten in part by each further commit
}

func (p repoParams) key() string {
	return fmt.Sprintf("f%d-b%d-d%d-c%d-x%d-v2", p.Files, p.Bytes, p.Fanout, p.Commits, p.Changes)
}

// ensureRepo returns the path of the bare repository for p under cache,
// generating it with git fast-import the first time. A repository is only
// used once its "complete" marker exists, so an interrupted generation is
// redone rather than half-used.
func ensureRepo(cache, name string, p repoParams, env []string, logf func(string, ...any)) (string, error) {
	dir := filepath.Join(cache, p.key(), name+".git")
	if _, err := os.Stat(filepath.Join(dir, "sluice-storm-complete")); err == nil {
		return dir, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	logf("generating %s (%s) with git fast-import", dir, p.key())
	if out, err := gitCmd(env, "", "init", "-q", "--bare", dir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("git init: %v: %s", err, out)
	}
	fi := gitCmd(env, dir, "fast-import", "--quiet")
	stdin, err := fi.StdinPipe()
	if err != nil {
		return "", err
	}
	fi.Stdout, fi.Stderr = os.Stderr, os.Stderr
	if err := fi.Start(); err != nil {
		return "", err
	}
	werr := writeHistory(stdin, p)
	stdin.Close()
	if err := fi.Wait(); err != nil {
		return "", fmt.Errorf("git fast-import: %w", err)
	}
	if werr != nil {
		return "", werr
	}
	// One pack with deltas that clones reuse, as on a maintained server,
	// but no reachability bitmap: with one, a full clone is a near-verbatim
	// copy of the pack (measured: ~5 MiB of server memory per clone), and
	// the storm would measure the network, not pack-objects walking the
	// history, which is what big repositories cost (and what servers
	// without fresh bitmaps pay).
	for _, args := range [][]string{{"symbolic-ref", "HEAD", "refs/heads/main"}, {"-c", "repack.writeBitmaps=false", "repack", "-a", "-d", "-q"}} {
		if out, err := gitCmd(env, dir, args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("git %v: %v: %s", args, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "sluice-storm-complete"), nil, 0o644); err != nil {
		return "", err
	}
	return dir, nil
}

func gitCmd(env []string, dir string, args ...string) *exec.Cmd {
	c := exec.Command("git", args...)
	c.Env, c.Dir = env, dir
	return c
}

// writeHistory writes a fast-import stream: one commit adding p.Files text
// files of p.Bytes each under two directory levels, then p.Commits commits
// each rewriting an eighth of p.Changes files (so history is mostly deltas
// and every commit adds new trees along each changed path).
func writeHistory(w io.Writer, p repoParams) error {
	if p.Files < 1 || p.Bytes < 16 || p.Fanout < 1 || p.Changes > p.Files {
		return errors.New("repo parameters out of range")
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	content := make([][]byte, p.Files)
	path := func(i int) string {
		return fmt.Sprintf("d%03d/e%03d/f%05d.txt", i/(p.Fanout*p.Fanout)%1000, i/p.Fanout%p.Fanout, i)
	}
	mark := 0
	blob := func(b []byte) int {
		mark++
		fmt.Fprintf(bw, "blob\nmark :%d\ndata %d\n", mark, len(b))
		bw.Write(b)
		bw.WriteByte('\n')
		return mark
	}
	ts := int64(1_700_000_000)
	commit := func(n int, from int, files map[int]int) int {
		mark++
		msg := fmt.Sprintf("commit %d\n", n)
		fmt.Fprintf(bw, "commit refs/heads/main\nmark :%d\ncommitter Storm <storm@example.com> %d +0000\ndata %d\n%s", mark, ts+int64(n)*60, len(msg), msg)
		if from > 0 {
			fmt.Fprintf(bw, "from :%d\n", from)
		}
		for _, i := range slices.Sorted(maps.Keys(files)) {
			fmt.Fprintf(bw, "M 100644 :%d %s\n", files[i], path(i))
		}
		bw.WriteByte('\n')
		return mark
	}
	files := map[int]int{}
	for i := range content {
		content[i] = randomText(rng, p.Bytes)
		files[i] = blob(content[i])
	}
	last := commit(0, 0, files)
	for c := 1; c <= p.Commits; c++ {
		files = map[int]int{}
		for len(files) < p.Changes {
			i := rng.IntN(p.Files)
			if _, ok := files[i]; ok {
				continue
			}
			b := append([]byte(nil), content[i]...)
			n := len(b) / 8
			off := rng.IntN(len(b) - n + 1)
			copy(b[off:off+n], randomText(rng, n))
			content[i] = b
			files[i] = blob(b)
		}
		last = commit(c, last, files)
	}
	return bw.Flush()
}

// randomText returns n bytes of lowercase words and newlines: text that
// compresses and deltas like source code does, roughly.
func randomText(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		switch r := rng.IntN(64); {
		case r == 0:
			b[i] = '\n'
		case r < 9:
			b[i] = ' '
		default:
			b[i] = 'a' + byte(rng.IntN(26))
		}
	}
	return b
}
