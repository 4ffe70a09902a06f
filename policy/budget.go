package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Budget classes: what the host budget counts, and which subcommands fall
// in each. Why these three, and their numbers, is in agent/limiter's
// package doc; the policy only names them.
const (
	// ClassPack is the expensive work: git pack-objects (a core and
	// hundreds of MiB each) and git upload-archive (a whole tree
	// compressed per request). Its limit is derived from the host and
	// adapted.
	ClassPack = "pack"
	// ClassUploadPack is upload-pack itself: a few MiB and almost no CPU
	// while it negotiates and relays its pack-objects' output.
	ClassUploadPack = "upload-pack"
	// ClassReceivePack is pushes: their own class, so no clone storm can
	// take their slots.
	ClassReceivePack = "receive-pack"
)

// BudgetClasses are the budget classes in status order.
var BudgetClasses = []string{ClassPack, ClassUploadPack, ClassReceivePack}

// BudgetClassFor returns the budget class of a git subcommand, "" for a
// subcommand the budget does not count.
func BudgetClassFor(subcommand string) string {
	switch subcommand {
	case "pack-objects", "upload-archive":
		return ClassPack
	case "upload-pack":
		return ClassUploadPack
	case "receive-pack":
		return ClassReceivePack
	}
	return ""
}

// Budget configures the host budget: one limit per class for the whole
// host, on top of the rules' per-key limits, with max-min fair shares of
// it across fair_key.
type Budget struct {
	// Enabled turns the budget on (the default).
	Enabled bool `toml:"enabled"`
	// FairKey is what fair shares are computed across: a key like a
	// rule's ("remote_ip", "user", "repo", joins; "global" turns
	// fairness off). Parse fills in "remote_ip".
	FairKey string `toml:"fair_key"`
	// Pack, UploadPack and ReceivePack fix a class's limit; 0 (the
	// default) derives it from the host's CPUs and memory, and for pack
	// adapts it (agent/adaptive's budget controller).
	Pack        int `toml:"pack"`
	UploadPack  int `toml:"upload_pack"`
	ReceivePack int `toml:"receive_pack"`
	// DefaultWeight is the fair-share weight of a client no [[class]]
	// matches. Parse fills in 1.
	DefaultWeight int `toml:"default_weight"`

	// parts and prefixes of FairKey, set by Validate.
	fair Limit
}

func defaultBudget() Budget {
	return Budget{Enabled: true, FairKey: KeyRemoteIP, DefaultWeight: 1}
}

// Keys says how request keys are derived.
type Keys struct {
	// IPv6Prefix aggregates IPv6 client addresses into networks of this
	// prefix length in remote_ip keys (a host usually owns a /64 and can
	// rotate inside it). 1..128; Parse fills in 64.
	IPv6Prefix int `toml:"ipv6_prefix"`
	// IPv4Prefix does the same for IPv4: 32 (the default) keeps one key
	// per address, 24 joins a /24.
	IPv4Prefix int `toml:"ipv4_prefix"`
}

// Class weights a group of clients' fair share of the budget.
type Class struct {
	// Name labels the class (a-z, 0-9, _ and -).
	Name string `toml:"name"`
	// Weight is the share relative to other keys: a key of weight 4 gets
	// four slots for every one of a key of weight 1 when both wait.
	Weight int `toml:"weight"`
	// Users are user names the class matches.
	Users []string `toml:"users"`
	// Networks are client networks (CIDR, "10.0.0.0/8") or addresses.
	Networks []string `toml:"networks"`

	nets []netip.Prefix
}

// ClientNetwork returns the key of a client address: the address itself,
// or its network when v4 (IPv4) or v6 (IPv6) is a shorter prefix (0 means
// the whole address). An IPv4-mapped IPv6 address counts as IPv4. A value
// that is not an address is returned as is.
func ClientNetwork(ip string, v4, v6 int) string {
	if ip == "" {
		return ""
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap().WithZone("")
	bits := v6
	if a.Is4() {
		bits = v4
	}
	if bits <= 0 || bits >= a.BitLen() {
		return a.String()
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return a.String()
	}
	return p.String()
}

// FairKeyFor derives the key fair shares of the budget are computed
// across for a request.
func (c *Config) FairKeyFor(in KeyInput) string {
	f := c.Budget.fair
	if f.Key == "" {
		f = Limit{Key: c.Budget.FairKey, v4: c.Keys.IPv4Prefix, v6: c.Keys.IPv6Prefix}
	}
	return f.KeyFor(in)
}

// WeightFor returns a request's fair-share weight: the first [[class]]
// matching its user or client address, else [budget] default_weight.
func (c *Config) WeightFor(in KeyInput) int {
	var addr netip.Addr
	if a, err := netip.ParseAddr(in.RemoteIP); err == nil {
		addr = a.Unmap().WithZone("")
	}
	for i := range c.Classes {
		cl := &c.Classes[i]
		if in.User != "" && slices.Contains(cl.Users, in.User) {
			return cl.Weight
		}
		if addr.IsValid() {
			for _, n := range cl.nets {
				if n.Contains(addr) {
					return cl.Weight
				}
			}
		}
	}
	return max(c.Budget.DefaultWeight, 1)
}

// ClassNameFor returns the name of the [[class]] a request falls in, ""
// when none matches (for logs).
func (c *Config) ClassNameFor(in KeyInput) string {
	var addr netip.Addr
	if a, err := netip.ParseAddr(in.RemoteIP); err == nil {
		addr = a.Unmap().WithZone("")
	}
	for i := range c.Classes {
		cl := &c.Classes[i]
		if in.User != "" && slices.Contains(cl.Users, in.User) {
			return cl.Name
		}
		for _, n := range cl.nets {
			if addr.IsValid() && n.Contains(addr) {
				return cl.Name
			}
		}
	}
	return ""
}

const maxWeight = 1000

// budget checks [budget], [keys] and [[class]], and sets the derived
// fields key derivation reads.
func (v *validator) budget() {
	c := v.c
	k := &c.Keys
	if k.IPv6Prefix < 1 || k.IPv6Prefix > 128 {
		v.add("keys.ipv6_prefix", k.IPv6Prefix, "must be between 1 and 128", "write 64 (one key per /64, what one host usually owns), or 128 for one key per address")
	}
	if k.IPv4Prefix < 1 || k.IPv4Prefix > 32 {
		v.add("keys.ipv4_prefix", k.IPv4Prefix, "must be between 1 and 32", "write 32 (one key per address) or 24 (one per /24)")
	}
	for i := range c.Limits {
		c.Limits[i].v4, c.Limits[i].v6 = k.IPv4Prefix, k.IPv6Prefix
	}
	b := &c.Budget
	parts, problem := parseKey(b.FairKey)
	if problem != "" {
		v.add("budget.fair_key", b.FairKey, problem, `use "remote_ip", "user", "repo" or a join such as "user+remote_ip" ("global" turns fairness off)`)
	} else {
		b.fair = Limit{Key: b.FairKey, parts: parts, v4: k.IPv4Prefix, v6: k.IPv6Prefix}
	}
	for _, f := range []struct {
		key string
		val int
	}{{"budget.pack", b.Pack}, {"budget.upload_pack", b.UploadPack}, {"budget.receive_pack", b.ReceivePack}} {
		if f.val < 0 || f.val > maxLimit {
			v.add(f.key, f.val, fmt.Sprintf("must be between 0 and %d", maxLimit), "write 0 to derive the limit from the host's CPUs and memory, or a fixed number of commands")
		}
	}
	if b.DefaultWeight < 1 || b.DefaultWeight > maxWeight {
		v.add("budget.default_weight", b.DefaultWeight, fmt.Sprintf("must be between 1 and %d", maxWeight), "write 1")
	}
	names := map[string]bool{}
	for i := range c.Classes {
		cl := &c.Classes[i]
		at := func(key string) string { return fmt.Sprintf("class[%d].%s", i, key) }
		switch {
		case !validName(cl.Name):
			v.add(at("name"), cl.Name, fmt.Sprintf("must be 1 to %d characters of a-z, 0-9, _ and -", maxNameLen), `name the class, such as "ci"`)
		case names[cl.Name]:
			v.add(at("name"), cl.Name, "names two classes", "give each [[class]] a unique name")
		}
		names[cl.Name] = true
		if cl.Weight < 1 || cl.Weight > maxWeight {
			v.add(at("weight"), cl.Weight, fmt.Sprintf("must be between 1 and %d", maxWeight), "write a weight such as 1 for CI or 4 for people")
		}
		if len(cl.Users) == 0 && len(cl.Networks) == 0 {
			v.add(at("users"), cl.Users, "the class matches nobody: it has no users and no networks", `list users = ["ci"] or networks = ["10.0.0.0/8"]`)
		}
		cl.nets = cl.nets[:0]
		for _, n := range cl.Networks {
			p, err := netip.ParsePrefix(n)
			if err != nil {
				a, aerr := netip.ParseAddr(n)
				if aerr != nil {
					v.add(at("networks"), cl.Networks, fmt.Sprintf("%q is not a network or an address", n), `write CIDR networks such as "10.0.0.0/8" or "2001:db8::/48"`)
					continue
				}
				p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			}
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
			}
			cl.nets = append(cl.nets, p.Masked())
		}
		for _, u := range cl.Users {
			if u == "" || strings.ContainsAny(u, "\x00\n") {
				v.add(at("users"), cl.Users, fmt.Sprintf("%q is not a user name", u), `write user names such as ["ci-bot"]`)
			}
		}
	}
}
