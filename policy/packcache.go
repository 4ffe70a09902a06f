package policy

import (
	"fmt"
	"path/filepath"
	"time"
)

// PackCache configures the pack-objects cache (issue 18, agent/packcache):
// identical fetches share one git pack-objects, while it runs and for
// MaxAge after.
type PackCache struct {
	// Enabled turns the cache on (shim.conf tells hook-mode shims).
	// Default false.
	Enabled bool `toml:"enabled"`
	// Dir holds the cache files: owned by the agent, mode 0700, its cache
	// files removed on start. Default /var/cache/sluice/packs.
	Dir string `toml:"dir"`
	// MaxAge is how long an entry is served after it was created. Default
	// 5m; 1s to 24h.
	MaxAge Duration `toml:"max_age"`
	// MaxBytes caps the sum of the entries' sizes; least recently used
	// entries are evicted first. Default 10 GiB; 1 MiB to 16 TiB.
	MaxBytes int64 `toml:"max_bytes"`
	// MinOccurrences is how many times a key must be asked for within
	// MaxAge before its pack is cached: 1 caches (and dedupes) from the
	// first request. Default 1; 1 to 100.
	MinOccurrences int `toml:"min_occurrences"`
}

// Pack cache defaults and bounds.
const (
	DefaultPackCacheDir      = "/var/cache/sluice/packs"
	DefaultPackCacheMaxAge   = 5 * time.Minute
	DefaultPackCacheMaxBytes = 10 << 30
	minPackCacheBytes        = 1 << 20
	maxPackCacheBytes        = 16 << 40
)

func defaultPackCache() PackCache {
	return PackCache{
		Dir:            DefaultPackCacheDir,
		MaxAge:         Duration{DefaultPackCacheMaxAge},
		MaxBytes:       DefaultPackCacheMaxBytes,
		MinOccurrences: 1,
	}
}

func (v *validator) packCache() {
	p := &v.c.PackCache
	switch {
	case p.Dir == "":
		v.add("pack_cache.dir", p.Dir, "must not be empty", fmt.Sprintf("set an absolute path such as %q", DefaultPackCacheDir))
	case !filepath.IsAbs(p.Dir):
		v.add("pack_cache.dir", p.Dir, "must be an absolute path", fmt.Sprintf("set an absolute path such as %q", DefaultPackCacheDir))
	case badPathChar(p.Dir):
		v.add("pack_cache.dir", p.Dir, "contains a control character", "remove it")
	case filepath.Clean(p.Dir) == "/" || filepath.Clean(p.Dir) == "/tmp" || filepath.Clean(p.Dir) == "/var/tmp":
		v.add("pack_cache.dir", p.Dir, "must be a directory of its own (the agent empties it of cache files and makes it 0700)", fmt.Sprintf("set a dedicated directory such as %q", DefaultPackCacheDir))
	}
	v.within("pack_cache.max_age", p.MaxAge, time.Second, 24*time.Hour, "5m")
	if p.MaxBytes < minPackCacheBytes || p.MaxBytes > maxPackCacheBytes {
		v.add("pack_cache.max_bytes", p.MaxBytes, "must be between 1048576 (1 MiB) and 17592186044416 (16 TiB)", "set a size in bytes such as 10737418240 (10 GiB); it should hold a few of your largest clones")
	}
	if p.MinOccurrences < 1 || p.MinOccurrences > 100 {
		v.add("pack_cache.min_occurrences", p.MinOccurrences, "must be between 1 and 100", "set 1 to cache and share from the first request, 2 to cache a key only once it was asked for twice within max_age")
	}
}
