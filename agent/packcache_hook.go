package agent

import (
	"net"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// PackCache serves pack cache connections (shimproto.PackCacheMagic; the cache
// itself is agent/packcache). Kept in its own file so the hook into
// dispatch is one case.
type PackCache interface {
	// ServeConn serves c, whose first byte was read; uid and gid are the
	// peer's SO_PEERCRED. It closes c.
	ServeConn(c *net.UnixConn, uid, gid uint32)
	// Status is the cache's part of `sluice status`.
	Status() *admitpb.PackCacheStatus
}

// packCacheFirst is the first byte of a pack cache connection.
const packCacheFirst = 'C' // shimproto.PackCacheMagic[0]

// servePackCache hands c to the pack cache, or closes it when there is none
// (the shim then runs pack-objects uncached).
func (a *Agent) servePackCache(c *net.UnixConn, cred PeerCred) {
	if a.packCache == nil {
		c.Close()
		return
	}
	// A pack-objects hook asking the cache ends its upload-pack's
	// negotiation, as its admission would (a hit is never admitted).
	if a.timeouts != nil {
		a.timeouts.noteStart(int(cred.PID), "pack-objects", "pack cache")
	}
	a.packCache.ServeConn(c, cred.UID, cred.GID)
}
