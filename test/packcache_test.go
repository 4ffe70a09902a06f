package test

// packcache_test.go: the pack-objects cache (issue 18) on real servers.
// TestPackCacheGitDaemon runs every fetch shape through git daemon, then 50
// concurrent identical clones with the writer SIGKILLed midway, then a
// cache directory on a full tmpfs. TestServerSSH and TestServerHTTP run the
// fetch shapes too (s.packCacheScenarios).

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// packCacheLimits lets 50 clones of one repository in at once; pack-objects
// misses queue 4 at a time.
var packCacheLimits = limitRule("upload-pack", "repo", 64, 100, "60s") + `

[[limit]]
name = "pack-objects"
match = ["pack-objects"]
key = "remote_ip"
max_per_key = 4
max_queue_size = 100
max_queue_wait = "120s"

[[limit]]
name = "receive-pack"
match = ["receive-pack"]
key = "repo"
max_per_key = 2
max_queue_size = 10
max_queue_wait = "10s"
`

// enablePackCache restarts the setup's agent with the pack cache on
// (extra: more [pack_cache] keys, or whole tables after it) and lets the
// servers serve --filter.
func (s *serverSetup) enablePackCache(t *testing.T, dir, extra string) {
	t.Helper()
	s.restartAgent(packCacheLimits + fmt.Sprintf("\n[pack_cache]\nenabled = true\ndir = %q\n%s\n", dir, extra))
	conf, err := os.ReadFile(s.gitconfig)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "allowFilter") {
		conf = append(conf, "[uploadpack]\n\tallowFilter = true\n"...)
		if err := os.WriteFile(s.gitconfig, conf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// restartAgent restarts the agent with limits (more TOML), keeping the
// group shareWith gave the socket and its directory.
func (s *serverSetup) restartAgent(limits string) {
	var st syscall.Stat_t
	syscall.Stat(s.a.socket, &st)
	s.a.stop()
	s.a.start(limits, "open")
	if st.Gid != 0 {
		os.Chown(filepath.Dir(s.a.socket), -1, int(st.Gid))
		os.Chown(s.a.socket, -1, int(st.Gid))
	}
}

func (s *serverSetup) cacheServed() float64 {
	m := s.a.scrape()
	return m["sluice_pack_cache_hits_total"] + m["sluice_pack_cache_joins_total"]
}

// packCacheScenarios clones and fetches through url with the cache on:
// each shape twice (the second must be served from the cache), each result
// fsck --strict clean with refs equal to an uncached clone of upstream.
// extra is more agent configuration (e.g. "[ebpf]\nenabled = false" for
// supervising mode).
func (s *serverSetup) packCacheScenarios(t *testing.T, url string, env []string, extra string) {
	s.enablePackCache(t, filepath.Join(s.a.dir, "packcache"), extra)
	defer s.restartAgent(serverLimits) // the caller's tests go on with the agent it started
	cases := []struct {
		name string
		args []string
	}{
		{"v2 mirror", []string{"-c", "protocol.version=2", "clone", "-q", "--mirror"}},
		{"v0 mirror", []string{"-c", "protocol.version=0", "clone", "-q", "--mirror"}},
		{"v2 shallow", []string{"-c", "protocol.version=2", "clone", "-q", "--bare", "--depth=2", "--no-single-branch"}},
		{"v0 shallow", []string{"-c", "protocol.version=0", "clone", "-q", "--bare", "--depth=1"}},
		{"v2 blob:none", []string{"-c", "protocol.version=2", "clone", "-q", "--bare", "--filter=blob:none"}},
		{"v0 blob:none", []string{"-c", "protocol.version=0", "clone", "-q", "--bare", "--filter=blob:none"}},
	}
	var mirrors []string
	for i, c := range cases {
		direct := filepath.Join(s.client, fmt.Sprintf("pc-direct-%d", i))
		dargs := append(append([]string{}, c.args...), "--no-local", "file://"+s.upstream, direct)
		git(t, s.client, s.clientEnv(), dargs...)
		for round := 0; round < 2; round++ {
			before := s.cacheServed()
			dest := filepath.Join(s.client, fmt.Sprintf("pc-%d-%d", i, round))
			if out, err := gitTry(s.client, env, append(append([]string{}, c.args...), url, dest)...); err != nil {
				t.Fatalf("%s clone %d through %s: %v\n%s", c.name, round, url, err, out)
			}
			git(t, dest, s.clientEnv(), "fsck", "--strict", "--no-progress")
			if got, want := refs(t, dest), refs(t, direct); got != want {
				t.Fatalf("%s: clone through the cache differs from an uncached clone:\n%s\nvs\n%s", c.name, got, want)
			}
			if round == 1 && s.cacheServed() <= before {
				t.Errorf("%s: the second identical clone was not served from the cache (hits+joins %v)", c.name, before)
			}
			if strings.HasSuffix(c.name, "mirror") {
				mirrors = append(mirrors, dest)
			}
		}
	}
	// Incremental: two identical mirrors fetch the same new commit; the
	// second fetch (same haves) is served from the cache.
	work := filepath.Join(s.client, "pc-work")
	git(t, s.client, s.clientEnv(), "clone", "-q", "--no-local", "file://"+s.upstream, work)
	if err := os.WriteFile(filepath.Join(work, "pc.txt"), []byte(work+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, work, s.clientEnv(), "add", "pc.txt")
	git(t, work, s.clientEnv(), "commit", "-q", "-m", "pack cache incremental")
	git(t, work, s.clientEnv(), "push", "-q", "origin", "HEAD:refs/heads/pc-incremental")
	// The server's user must still read what root pushed.
	filepath.Walk(s.upstream, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == 0 {
				var up syscall.Stat_t
				if syscall.Stat(s.upstream, &up) == nil {
					os.Lchown(p, int(up.Uid), int(up.Gid))
				}
			}
		}
		return nil
	})
	direct := filepath.Join(s.client, "pc-direct-incr")
	git(t, s.client, s.clientEnv(), "clone", "-q", "--mirror", "--no-local", "file://"+s.upstream, direct)
	for i, m := range mirrors[:2] {
		before := s.cacheServed()
		if out, err := gitTry(m, env, "fetch", "-q", "origin"); err != nil {
			t.Fatalf("incremental fetch into %s: %v\n%s", m, err, out)
		}
		git(t, m, s.clientEnv(), "fsck", "--strict", "--no-progress")
		if got, want := refs(t, m), refs(t, direct); got != want {
			t.Fatalf("incremental fetch through the cache differs from upstream:\n%s\nvs\n%s", got, want)
		}
		if i == 1 && s.cacheServed() <= before {
			t.Errorf("the second identical incremental fetch was not served from the cache")
		}
	}
	m := s.a.scrape()
	t.Logf("pack cache after the scenarios: hits %v joins %v misses %v fills %v served %v B written %v B",
		m["sluice_pack_cache_hits_total"], m["sluice_pack_cache_joins_total"], m["sluice_pack_cache_misses_total"],
		m["sluice_pack_cache_fills_total"], m["sluice_pack_cache_served_bytes_total"], m["sluice_pack_cache_written_bytes_total"])
	if len(s.a.LogLines("pack cache: filled")) == 0 {
		t.Error("no \"pack cache: filled\" log line")
	}
}

// makeBigRepo makes a bare repository of files of random bytes (no
// deltas, slow enough to pack that a writer can be killed midway).
func makeBigRepo(t *testing.T, dest string, files, size int) {
	t.Helper()
	work := t.TempDir()
	git(t, work, baseEnv(work), "init", "-q", "-b", "main", "src")
	src := filepath.Join(work, "src")
	rng := rand.New(rand.NewSource(18))
	buf := make([]byte, size)
	for i := 0; i < files; i++ {
		rng.Read(buf)
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%04d.bin", i)), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git(t, src, baseEnv(work), "add", ".")
	git(t, src, baseEnv(work), "commit", "-q", "-m", "big")
	git(t, work, baseEnv(work), "clone", "-q", "--bare", src, dest)
}

// writerShim finds the sluice-shim that has a pack-objects child (the
// cache writer); 0 when none.
func writerShim() int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmd), "pack-objects") || !strings.Contains(string(cmd), "--stdout") {
			continue
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid)); strings.Contains(exe, "sluice-shim") {
			return ppid
		}
	}
	return 0
}

func cacheFileSize(dir string) int64 {
	ents, _ := os.ReadDir(dir)
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && strings.HasPrefix(e.Name(), "pc-") {
			n = max(n, fi.Size())
		}
	}
	return n
}

func TestPackCacheGitDaemon(t *testing.T) {
	daemon := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(daemon); err != nil {
		t.Skipf("git daemon is not installed (%v): apt-get install git", err)
	}
	s := newServerSetup(t)
	port := freePort(t)
	logf := filepath.Join(s.a.dir, "git-daemon.log")
	startGroup(t, s.serverEnv(), logf, daemon, "--reuseaddr", "--base-path="+s.repos, "--export-all",
		"--enable=receive-pack", "--max-connections=0", "--listen=127.0.0.1", "--port="+strconv.Itoa(port))
	waitListening(t, port, "git daemon")
	base := fmt.Sprintf("git://127.0.0.1:%d", port)

	t.Run("fetch shapes", func(t *testing.T) { s.packCacheScenarios(t, base+"/project.git", s.clientEnv(), "") })

	big := filepath.Join(s.repos, "big.git")
	makeBigRepo(t, big, 150, 128<<10) // ~19 MiB of incompressible blobs
	bigDirect := filepath.Join(s.client, "big-direct")
	git(t, s.client, s.clientEnv(), "clone", "-q", "--bare", "--no-local", "file://"+big, bigDirect)
	wantRefs := refs(t, bigDirect)

	t.Run("50 clones, writer killed", func(t *testing.T) {
		dir := filepath.Join(s.a.dir, "packcache-kill")
		s.enablePackCache(t, dir, "")
		const n = 50
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		type result struct {
			dest string
			err  error
			out  string
		}
		results := make([]result, n)
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				dest := filepath.Join(s.client, fmt.Sprintf("big-%d", i))
				cmd := exec.CommandContext(ctx, bins.realGit, "clone", "-q", "--bare", base+"/big.git", dest)
				cmd.Dir, cmd.Env = s.client, s.clientEnv()
				out, err := cmd.CombinedOutput()
				results[i] = result{dest, err, string(out)}
			}(i)
		}
		// Kill the writer once it has written part of the pack.
		killed := 0
		deadline := time.Now().Add(60 * time.Second)
		for killed == 0 && time.Now().Before(deadline) {
			if cacheFileSize(dir) > 1<<20 {
				if pid := writerShim(); pid > 0 && syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed = pid
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
		wg.Wait()
		if ctx.Err() != nil {
			t.Fatal("clones hung: not all finished within 4 minutes")
		}
		if killed == 0 {
			t.Fatal("never saw a writer with part of the pack written to kill")
		}
		ok, failed := 0, 0
		for _, r := range results {
			if r.err == nil {
				ok++
				git(t, r.dest, s.clientEnv(), "fsck", "--strict", "--no-progress")
				if got := refs(t, r.dest); got != wantRefs {
					t.Fatalf("clone %s refs differ:\n%s\nvs\n%s", r.dest, got, wantRefs)
				}
				continue
			}
			failed++
			// A failed clone leaves no repository behind.
			if _, err := os.Stat(r.dest); !os.IsNotExist(err) {
				t.Errorf("failed clone left %s behind (%v): %s", r.dest, err, r.out)
			}
		}
		m := s.a.scrape()
		t.Logf("writer shim %d killed: %d clones succeeded, %d failed cleanly; fill failures %v, fills %v, joins %v, hits %v",
			killed, ok, failed, m["sluice_pack_cache_fill_failures_total"], m["sluice_pack_cache_fills_total"],
			m["sluice_pack_cache_joins_total"], m["sluice_pack_cache_hits_total"])
		if m["sluice_pack_cache_fill_failures_total"] < 1 {
			t.Error("the killed writer was not counted as a fill failure")
		}
		// How many succeed depends on timing: readers that had sent
		// nothing when the writer died ask again (one becomes the new
		// writer) and succeed; readers already streaming fail cleanly.
		// With sendfile the readers keep up with the writer, so usually
		// all have sent bytes by the time the file holds 1 MiB.
		for _, r := range results {
			os.RemoveAll(r.dest)
		}
	})

	t.Run("full disk", func(t *testing.T) {
		dir := filepath.Join(s.a.dir, "packcache-tmpfs")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m,mode=0700"); err != nil {
			t.Skipf("cannot mount a tmpfs (%v): needs CAP_SYS_ADMIN", err)
		}
		t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
		s.enablePackCache(t, dir, "")
		for i := 0; i < 2; i++ {
			dest := filepath.Join(s.client, fmt.Sprintf("big-full-%d", i))
			if out, err := gitTry(s.client, s.clientEnv(), "clone", "-q", "--bare", base+"/big.git", dest); err != nil {
				t.Fatalf("clone with the cache on a full disk: %v\n%s", err, out)
			}
			git(t, dest, s.clientEnv(), "fsck", "--strict", "--no-progress")
			if got := refs(t, dest); got != wantRefs {
				t.Fatalf("refs differ:\n%s\nvs\n%s", got, wantRefs)
			}
		}
		if v := s.a.metric(`sluice_pack_cache_bypasses_total{reason="disk"}`); v < 1 {
			t.Errorf("bypasses{reason=disk} = %v, want >= 1", v)
		}
		if len(s.a.LogLines("pack cache: bypassing (fetches run uncached)")) == 0 {
			t.Error("no warning logged for the full disk")
		}
		// The small repository still fits: cached as usual.
		for i := 0; i < 2; i++ {
			dest := filepath.Join(s.client, fmt.Sprintf("small-full-%d", i))
			if out, err := gitTry(s.client, s.clientEnv(), "clone", "-q", "--bare", base+"/project.git", dest); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		if s.cacheServed() < 1 {
			t.Error("a small pack was not cached beside the full one")
		}
	})
}
