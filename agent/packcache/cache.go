package packcache

import (
	"bufio"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/shimproto"
)

// Config configures a Cache (policy [pack_cache]).
type Config struct {
	Dir            string
	MaxAge         time.Duration
	MaxBytes       int64
	MinOccurrences int
	// Reserve is the free space the cache file system must keep: a lookup
	// finding less bypasses. 0 means min(64 MiB, 5% of the file system).
	Reserve int64
}

// Stats are the cache's counters (sluice_pack_cache_*).
type Stats struct {
	Hits, Joins, Misses, Writes  uint64
	BytesServed, BytesWritten    uint64
	EvictionsSize, EvictionsAge  uint64
	WriterFailures               uint64
	BypassCold, BypassDisk       uint64
	BypassTooLarge               uint64
	Entries                      int
	SizeBytes                    int64
	MaxBytes                     int64
	MaxAgeSeconds, MinOccurrence float64
}

const (
	stateWriting = iota
	stateComplete
	stateFailed
)

type entry struct {
	key     [32]byte
	path    string
	state   int
	size    int64
	created time.Time
	used    time.Time
	readers int // hits and joins served
	why     string
	done    chan struct{}
	elem    *list.Element // in lru while complete
}

type seen struct {
	count int
	first time.Time
}

// Cache is the agent's pack-objects cache. Create it with New; serve
// connections that start with shimproto.PackCacheMagic with ServeConn.
type Cache struct {
	cfg Config
	log *zap.Logger

	mu      sync.Mutex
	entries map[[32]byte]*entry
	lru     *list.List // front: most recently used complete entry
	total   int64      // bytes of complete entries
	seen    map[[32]byte]seen
	seq     uint64

	hits, joins, misses, writes            atomic.Uint64
	bytesServed, bytesWritten              atomic.Uint64
	evictSize, evictAge, writerFailures    atomic.Uint64
	bypassCold, bypassDisk, bypassTooLarge atomic.Uint64
	lastDiskWarn                           atomic.Int64

	stop   context.CancelFunc
	ctx    context.Context
	closed sync.WaitGroup
	now    func() time.Time
}

// maxSeen bounds the keys remembered for min_occurrences (about 100 bytes
// each); past it a new key counts as seen for the first time until expiry
// makes room.
const maxSeen = 100_000

// filePrefix names cache files; only such files are removed on start.
const filePrefix = "pc-"

// New prepares dir (created 0700 if missing; refused if it is a symbolic
// link, not a directory, or owned by someone else or writable by group or
// others), removes cache files left by an earlier run and starts expiry.
func New(cfg Config, log *zap.Logger) (*Cache, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.MinOccurrences < 1 {
		cfg.MinOccurrences = 1
	}
	if err := prepareDir(cfg.Dir); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Cache{
		cfg: cfg, log: log,
		entries: map[[32]byte]*entry{}, lru: list.New(), seen: map[[32]byte]seen{},
		ctx: ctx, stop: cancel, now: time.Now,
	}
	c.closed.Add(1)
	go c.sweep()
	return c, nil
}

func prepareDir(dir string) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return fmt.Errorf("pack cache directory %q: must be an absolute path", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pack cache directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("pack cache directory %s: %w", dir, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("pack cache directory %s is a symbolic link; point [pack_cache] dir at a real directory", dir)
	case !fi.IsDir():
		return fmt.Errorf("pack cache directory %s is not a directory", dir)
	case st != nil && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("pack cache directory %s is owned by uid %d, not the agent's uid %d; chown it or choose another [pack_cache] dir", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("pack cache directory %s has mode %#o and cannot be made 0700: %w", dir, fi.Mode().Perm(), err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("pack cache directory %s: %w", dir, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), filePrefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return nil
}

// Close stops expiry and removes every cache file. Readers holding a
// descriptor keep reading.
func (c *Cache) Close() {
	c.stop()
	c.closed.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if e.state == stateComplete {
			os.Remove(e.path)
			delete(c.entries, k)
		}
	}
	c.lru.Init()
	c.total = 0
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	n, size := len(c.entries), c.total
	c.mu.Unlock()
	return Stats{
		Hits: c.hits.Load(), Joins: c.joins.Load(), Misses: c.misses.Load(), Writes: c.writes.Load(),
		BytesServed: c.bytesServed.Load(), BytesWritten: c.bytesWritten.Load(),
		EvictionsSize: c.evictSize.Load(), EvictionsAge: c.evictAge.Load(),
		WriterFailures: c.writerFailures.Load(),
		BypassCold:     c.bypassCold.Load(), BypassDisk: c.bypassDisk.Load(),
		BypassTooLarge: c.bypassTooLarge.Load(),
		Entries:        n, SizeBytes: size, MaxBytes: c.cfg.MaxBytes,
		MaxAgeSeconds: c.cfg.MaxAge.Seconds(), MinOccurrence: float64(c.cfg.MinOccurrences),
	}
}

// sweep expires entries and forgets old occurrences.
func (c *Cache) sweep() {
	defer c.closed.Done()
	every := min(max(c.cfg.MaxAge/4, 100*time.Millisecond), 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			c.expire()
		}
	}
}

func (c *Cache) expire() {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.lru.Back(); el != nil; {
		prev := el.Prev()
		e := el.Value.(*entry)
		if now.Sub(e.created) > c.cfg.MaxAge {
			c.removeLocked(e)
			c.evictAge.Add(1)
		}
		el = prev
	}
	for k, s := range c.seen {
		if now.Sub(s.first) > c.cfg.MaxAge {
			delete(c.seen, k)
		}
	}
}

// removeLocked forgets a complete entry and unlinks its file.
func (c *Cache) removeLocked(e *entry) {
	if e.elem != nil {
		c.lru.Remove(e.elem)
		e.elem = nil
		c.total -= e.size
	}
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	os.Remove(e.path)
}

// Key computes the cache key of a lookup from uid/gid of the peer.
func Key(uid, gid uint32, dev, ino uint64, l *shimproto.PackLookup, stdin []byte) [32]byte {
	h := sha256.New()
	var num [8]byte
	field := func(b []byte) {
		n := uint64(len(b))
		for i := range num {
			num[i] = byte(n >> (8 * i))
		}
		h.Write(num[:])
		h.Write(b)
	}
	field([]byte("sluice-packcache-v1"))
	field([]byte(strconv.FormatUint(uint64(uid), 10) + ":" + strconv.FormatUint(uint64(gid), 10)))
	field([]byte(strconv.FormatUint(dev, 10) + ":" + strconv.FormatUint(ino, 10)))
	field(l.ObjDir)
	field([]byte("args"))
	for _, a := range l.Args {
		if shimproto.PackKeyArg(string(a)) {
			field(a)
		}
	}
	env := make([]string, 0, len(l.Env))
	for _, e := range l.Env {
		if shimproto.PackKeyEnv(string(e)) {
			env = append(env, string(e))
		}
	}
	sort.Strings(env)
	field([]byte("env"))
	for _, e := range env {
		field([]byte(e))
	}
	field([]byte("stdin"))
	field(stdin)
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// helloTimeout bounds reading the lookup.
const helloTimeout = 5 * time.Second

// ServeConn serves one pack cache connection whose first byte (of
// shimproto.PackCacheMagic) the caller has read. uid and gid are the peer's
// SO_PEERCRED. It closes c.
func (c *Cache) ServeConn(conn *net.UnixConn, uid, gid uint32) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(helloTimeout))
	r := bufio.NewReaderSize(conn, 64<<10)
	magic := make([]byte, len(shimproto.PackCacheMagic)-1)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != shimproto.PackCacheMagic[1:] {
		c.log.Warn("pack cache: bad handshake", zap.Uint32("uid", uid))
		return
	}
	frame, err := shimproto.ReadFrame(r, nil)
	if err != nil {
		c.log.Warn("pack cache: reading lookup", zap.Uint32("uid", uid), zap.Error(err))
		return
	}
	l, err := shimproto.DecodePackLookup(frame)
	if err != nil {
		c.log.Warn("pack cache: malformed lookup", zap.Uint32("uid", uid), zap.Error(err))
		return
	}
	stdin := make([]byte, 0, l.StdinLen)
	var buf []byte
	for int64(len(stdin)) < l.StdinLen {
		chunk, err := shimproto.ReadFrame(r, buf)
		if err != nil || int64(len(stdin)+len(chunk)) > l.StdinLen {
			c.log.Warn("pack cache: reading lookup stdin", zap.Uint32("uid", uid), zap.Error(err))
			return
		}
		stdin = append(stdin, chunk...)
		buf = chunk
	}
	_ = conn.SetReadDeadline(time.Time{})

	var st syscall.Stat_t
	if err := syscall.Stat(string(l.ObjDir), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		c.misses.Add(1)
		c.bypass(conn, "object directory not found")
		return
	}
	key := Key(uid, gid, st.Dev, st.Ino, &l, stdin)
	c.lookup(conn, r, key)
}

func (c *Cache) answer(conn *net.UnixConn, a *shimproto.PackAnswer, fd int) error {
	b := shimproto.AppendFrame(nil, shimproto.AppendPackAnswer(nil, a))
	_ = conn.SetWriteDeadline(time.Now().Add(helloTimeout))
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	_, _, err := conn.WriteMsgUnix(b, oob, nil)
	return err
}

func (c *Cache) bypass(conn *net.UnixConn, why string) {
	_ = c.answer(conn, &shimproto.PackAnswer{Kind: shimproto.PackBypass, Message: why}, -1)
}

func (c *Cache) lookup(conn *net.UnixConn, r *bufio.Reader, key [32]byte) {
	now := c.now()
	c.mu.Lock()
	e := c.entries[key]
	if e != nil && e.state == stateComplete && now.Sub(e.created) > c.cfg.MaxAge {
		c.removeLocked(e)
		c.evictAge.Add(1)
		e = nil
	}
	if e != nil {
		fd, err := syscall.Open(e.path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			// Removed under us (should not happen while in the map):
			// treat as a miss without caching.
			c.mu.Unlock()
			c.misses.Add(1)
			c.bypass(conn, "cache file vanished")
			return
		}
		e.readers++
		if e.state == stateComplete {
			e.used = now
			c.lru.MoveToFront(e.elem)
			size := e.size
			c.mu.Unlock()
			c.hits.Add(1)
			if c.answer(conn, &shimproto.PackAnswer{Kind: shimproto.PackHit, Size: size}, fd) == nil {
				c.bytesServed.Add(uint64(size))
			}
			syscall.Close(fd)
			return
		}
		c.mu.Unlock()
		c.joins.Add(1)
		err = c.answer(conn, &shimproto.PackAnswer{Kind: shimproto.PackJoin}, fd)
		syscall.Close(fd)
		if err == nil {
			c.waitJoined(conn, e)
		}
		return
	}
	c.misses.Add(1)
	// min_occurrences: count this request; cache only from the Nth.
	if c.cfg.MinOccurrences > 1 {
		s := c.seen[key]
		if s.count == 0 || now.Sub(s.first) > c.cfg.MaxAge {
			s = seen{first: now}
		}
		s.count++
		if s.count > 1 || len(c.seen) < maxSeen {
			c.seen[key] = s
		}
		if s.count < c.cfg.MinOccurrences {
			c.mu.Unlock()
			c.bypassCold.Add(1)
			c.bypass(conn, "key seen "+strconv.Itoa(s.count)+" time(s), min_occurrences "+strconv.Itoa(c.cfg.MinOccurrences))
			return
		}
	}
	if why := c.lowSpace(); why != "" {
		c.mu.Unlock()
		c.bypassDisk.Add(1)
		c.warnDisk(why)
		c.bypass(conn, why)
		return
	}
	c.seq++
	path := filepath.Join(c.cfg.Dir, filePrefix+hex.EncodeToString(key[:])+"-"+strconv.FormatUint(c.seq, 10)+".pack")
	wfd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		c.mu.Unlock()
		c.bypassDisk.Add(1)
		c.warnDisk("create " + path + ": " + err.Error())
		c.bypass(conn, "cache file not created")
		return
	}
	e = &entry{key: key, path: path, state: stateWriting, created: now, used: now, done: make(chan struct{})}
	c.entries[key] = e
	delete(c.seen, key)
	c.mu.Unlock()
	c.writes.Add(1)
	err = c.answer(conn, &shimproto.PackAnswer{Kind: shimproto.PackWrite, MaxBytes: c.cfg.MaxBytes}, wfd)
	syscall.Close(wfd)
	if err != nil {
		c.fail(e, "writer gone before the answer: "+err.Error())
		return
	}
	// The writer's PackStatus, or EOF when it died.
	frame, err := shimproto.ReadFrame(r, nil)
	if err != nil {
		c.fail(e, "writer went away ("+errText(err)+")")
		return
	}
	s, err := shimproto.DecodePackStatus(frame)
	if err != nil || !s.OK {
		why := s.Message
		if err != nil {
			why = "malformed status: " + err.Error()
		}
		if strings.Contains(why, "disk") || strings.Contains(why, "max_bytes") {
			if strings.Contains(why, "max_bytes") {
				c.bypassTooLarge.Add(1)
			} else {
				c.bypassDisk.Add(1)
				c.warnDisk(why)
			}
		}
		c.fail(e, "writer: "+why)
		return
	}
	c.complete(e, s.Size)
}

func errText(err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "connection closed without a status"
	}
	return err.Error()
}

// waitJoined waits for e's writer and tells the reader how it ended.
func (c *Cache) waitJoined(conn *net.UnixConn, e *entry) {
	select {
	case <-e.done:
	case <-c.ctx.Done():
		return // closing conn tells the reader: unknown, fall back or fail
	}
	c.mu.Lock()
	s := shimproto.PackStatus{OK: e.state == stateComplete, Size: e.size, Message: e.why}
	c.mu.Unlock()
	b := shimproto.AppendFrame(nil, shimproto.AppendPackStatus(nil, &s))
	_ = conn.SetWriteDeadline(time.Now().Add(helloTimeout))
	if _, err := conn.Write(b); err == nil && s.OK {
		c.bytesServed.Add(uint64(s.Size))
	}
}

func (c *Cache) fail(e *entry, why string) {
	c.writerFailures.Add(1)
	c.mu.Lock()
	e.state = stateFailed
	e.why = why
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	readers := e.readers
	c.mu.Unlock()
	os.Remove(e.path)
	close(e.done)
	c.log.Warn("pack cache: fill failed", zap.String("key", hex.EncodeToString(e.key[:6])),
		zap.String("why", why), zap.Int("readers_joined", readers))
}

func (c *Cache) complete(e *entry, size int64) {
	var st syscall.Stat_t
	if err := syscall.Stat(e.path, &st); err != nil || st.Size != size {
		got := int64(-1)
		if err == nil {
			got = st.Size
		}
		c.fail(e, "writer reported "+strconv.FormatInt(size, 10)+" bytes, file has "+strconv.FormatInt(got, 10))
		return
	}
	c.bytesWritten.Add(uint64(size))
	now := c.now()
	c.mu.Lock()
	e.state = stateComplete
	e.size = size
	e.used = now
	e.elem = c.lru.PushFront(e)
	c.total += size
	readers := e.readers
	c.evictLocked(e)
	c.mu.Unlock()
	close(e.done)
	c.log.Info("pack cache: filled", zap.String("key", hex.EncodeToString(e.key[:6])),
		zap.Int64("bytes", size), zap.Duration("took", now.Sub(e.created)), zap.Int("readers_joined", readers+1))
}

// evictLocked removes least recently used complete entries until the
// total fits max_bytes; keep is removed last (only when it alone is over).
func (c *Cache) evictLocked(keep *entry) {
	for c.total > c.cfg.MaxBytes {
		el := c.lru.Back()
		if el == nil {
			return
		}
		v := el.Value.(*entry)
		if v == keep && c.lru.Len() > 1 {
			// keep is the newest; it is at the front, so Back is
			// never keep while others remain.
			return
		}
		c.removeLocked(v)
		c.evictSize.Add(1)
	}
}

// lowSpace says why the cache file system is too full for a new entry.
func (c *Cache) lowSpace() string {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(c.cfg.Dir, &fs); err != nil {
		return "statfs " + c.cfg.Dir + ": " + err.Error()
	}
	free := int64(fs.Bavail) * fs.Bsize
	reserve := c.cfg.Reserve
	if reserve <= 0 {
		reserve = min(64<<20, int64(fs.Blocks)*fs.Bsize/20)
	}
	if free <= reserve {
		return "disk full: " + c.cfg.Dir + " has " + strconv.FormatInt(free, 10) + " bytes free, reserve " + strconv.FormatInt(reserve, 10)
	}
	return ""
}

// warnDisk logs a disk problem at most once a minute (every one is counted).
func (c *Cache) warnDisk(why string) {
	now := time.Now().UnixNano()
	last := c.lastDiskWarn.Load()
	if now-last < int64(time.Minute) || !c.lastDiskWarn.CompareAndSwap(last, now) {
		return
	}
	c.log.Warn("pack cache: bypassing (fetches run uncached)", zap.String("why", why),
		zap.String("fix", "free space in [pack_cache] dir or lower [pack_cache] max_bytes"))
}
