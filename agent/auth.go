package agent

// Who may ask for admission. The socket's mode (0660, socket_group) is the
// first gate; [agent] admit_users and admit_groups narrow it further. Every
// identity comes from the kernel (SO_PEERCRED at accept, the supplementary
// groups from /proc/PID/status of that pid, checked against the peer's pidfd
// afterwards so a reused pid cannot lend its groups); nothing a request
// claims about itself — worker_pid included — is ever used to decide whom to
// trust or which process to act on.

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// admitACL is [agent] admit_users and admit_groups resolved to ids.
type admitACL struct {
	open   bool // both lists empty: anyone who can open the socket
	uids   []uint32
	gids   []uint32
	source string // the policy file, for messages
}

// aclCache resolves the lists once per policy (name lookups read
// /etc/passwd and /etc/group).
type aclCache struct {
	mu  sync.Mutex // guards the fields below
	pol *policy.Config
	acl *admitACL
}

// admitACL returns the resolved lists of the policy in force. A name that
// does not resolve is logged and matches nobody: a typo must not open the
// socket to everyone.
func (a *Agent) admitACL() *admitACL {
	pol := a.Policy()
	a.acl.mu.Lock()
	defer a.acl.mu.Unlock()
	if a.acl.pol == pol {
		return a.acl.acl
	}
	acl := &admitACL{source: pol.Source}
	if acl.source == "" || acl.source == policy.DefaultSource {
		acl.source = "the policy file, " + policy.DefaultPath
	}
	acl.open = len(pol.Agent.AdmitUsers) == 0 && len(pol.Agent.AdmitGroups) == 0
	for _, u := range pol.Agent.AdmitUsers {
		id, err := lookupUserID(u)
		if err != nil {
			a.log.Warn("[agent] admit_users: unknown user, it matches nobody", zap.String("user", u), zap.String("config", pol.Source), zap.Error(err))
			continue
		}
		acl.uids = append(acl.uids, id)
	}
	for _, g := range pol.Agent.AdmitGroups {
		id, err := lookupGroupID(g)
		if err != nil {
			a.log.Warn("[agent] admit_groups: unknown group, it matches nobody", zap.String("group", g), zap.String("config", pol.Source), zap.Error(err))
			continue
		}
		acl.gids = append(acl.gids, id)
	}
	a.acl.pol, a.acl.acl = pol, acl
	return acl
}

// lookupUserID resolves a user name or numeric uid.
func lookupUserID(name string) (uint32, error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
	}
	return uint32(n), nil
}

// allows decides whether peer may ask for admission; groups reads the
// supplementary groups of the peer (only called when needed). It returns
// nil, errNotAllowed, or the error that prevented an answer.
func (acl *admitACL) allows(peer PeerCred, groups func() ([]uint32, error)) error {
	if acl.open || peer.UID == 0 || slices.Contains(acl.uids, peer.UID) || slices.Contains(acl.gids, peer.GID) {
		return nil
	}
	if len(acl.gids) == 0 {
		return errNotAllowed
	}
	supp, err := groups()
	if err != nil {
		return err
	}
	for _, g := range supp {
		if slices.Contains(acl.gids, g) {
			return nil
		}
	}
	return errNotAllowed
}

// errNotAllowed: the peer is in neither admit list.
var errNotAllowed = errors.New("not in admit_users or admit_groups")

// authorizeAdmit returns nil when peer may ask for admission, else the
// Rejected message to send (reason PERMISSION).
func (a *Agent) authorizeAdmit(peer PeerCred) *admitpb.ServerMsg {
	acl := a.admitACL()
	err := acl.allows(peer, func() ([]uint32, error) {
		g, err := procfs.Default.Groups(int(peer.PID))
		// Read by pid, so make sure the pid was still the peer's.
		if err == nil && !peer.alive() {
			err = errors.New("peer process exited")
		}
		return g, err
	})
	if err == nil {
		return nil
	}
	var msg string
	if errors.Is(err, errNotAllowed) {
		msg = fmt.Sprintf("sluice: permission denied: uid %d (gid %d) may not ask for admission ([agent] admit_users / admit_groups in %s); add the Git server's user or group there", peer.UID, peer.GID, acl.source)
	} else {
		msg = fmt.Sprintf("sluice: permission denied: the groups of uid %d could not be checked against [agent] admit_groups in %s: %v; try again", peer.UID, acl.source, err)
	}
	a.log.Warn("admission refused: permission", zap.Int32("pid", peer.PID), zap.Uint32("uid", peer.UID), zap.Uint32("gid", peer.GID), zap.Error(err))
	a.obs.CommandRejected(cmdLabel, "denied")
	return rejected(admitpb.RejectReason_REJECT_REASON_PERMISSION, "", msg)
}

// accessChanges lists reload changes to the [agent] settings read per
// request (they apply at once).
func accessChanges(old, cfg *policy.Agent) []string {
	var out []string
	if !slices.Equal(old.AdmitUsers, cfg.AdmitUsers) {
		out = append(out, fmt.Sprintf("admit_users [%s] -> [%s]", strings.Join(old.AdmitUsers, ", "), strings.Join(cfg.AdmitUsers, ", ")))
	}
	if !slices.Equal(old.AdmitGroups, cfg.AdmitGroups) {
		out = append(out, fmt.Sprintf("admit_groups [%s] -> [%s]", strings.Join(old.AdmitGroups, ", "), strings.Join(cfg.AdmitGroups, ", ")))
	}
	if old.MaxConnections != cfg.MaxConnections {
		out = append(out, fmt.Sprintf("max_connections %d -> %d", old.MaxConnections, cfg.MaxConnections))
	}
	if old.ConnectionsPerUID() != cfg.ConnectionsPerUID() {
		out = append(out, fmt.Sprintf("max_connections_per_uid %d -> %d", old.ConnectionsPerUID(), cfg.ConnectionsPerUID()))
	}
	return out
}
