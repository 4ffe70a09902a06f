package agent

// The admin API: Status and Reload for the operator CLI, open to root and
// to members of [agent] admin_group only. Admission is open to anyone who
// can reach the socket (its 0660 group is that gate) unless [agent]
// admit_users / admit_groups narrow it (auth.go); the admin API can reveal
// every repository, address and user in flight and change the policy, so it
// asks for more.

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/internal/procfs"
	"github.com/sluicehq/sluice/policy"
)

// adminService answers the operator CLI.
type adminService struct {
	admitpb.UnimplementedAdminServer
	a *Agent
}

func (s adminService) Status(ctx context.Context, _ *admitpb.StatusRequest) (*admitpb.StatusResponse, error) {
	if err := s.a.authorizeAdmin(ctx); err != nil {
		return nil, err
	}
	return s.a.Status(), nil
}

func (s adminService) Reload(ctx context.Context, _ *admitpb.ReloadRequest) (*admitpb.ReloadResponse, error) {
	if err := s.a.authorizeAdmin(ctx); err != nil {
		return nil, err
	}
	return s.a.Reload(), nil
}

// authorizeAdmin allows the gRPC caller if it is root or in the admin
// group, and returns a PermissionDenied status naming the fix otherwise.
func (a *Agent) authorizeAdmin(ctx context.Context) error {
	cred, ok := credFromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "sluice: no peer credentials: connect over the agent's Unix socket")
	}
	pol := a.Policy()
	err := authorize(cred, pol.Agent.AdminGroup, func(pid int32) ([]uint32, error) {
		groups, err := procfs.Default.Groups(int(pid))
		// The pid was read from SO_PEERCRED at accept time: make sure
		// the groups were those of that very process, not of a
		// successor that reused its pid.
		if err == nil && !cred.alive() {
			err = errors.New("peer process exited")
		}
		return groups, err
	}, lookupGroupID)
	if err == nil {
		return nil
	}
	cfg := pol.Source
	if cfg == "" || cfg == policy.DefaultSource {
		cfg = "the policy file, " + policy.DefaultPath
	}
	var msg string
	var notMember errNotAdmin
	switch {
	case errors.As(err, &notMember) && pol.Agent.AdminGroup == "":
		msg = fmt.Sprintf("sluice: permission denied: uid %d is not root and no admin group is configured ([agent] admin_group in %s); run as root or set admin_group to a group of the user", cred.UID, cfg)
	case errors.As(err, &notMember):
		msg = fmt.Sprintf("sluice: permission denied: uid %d is not root and not in admin group %q ([agent] admin_group in %s); run as root or add the user to that group", cred.UID, pol.Agent.AdminGroup, cfg)
	default:
		msg = fmt.Sprintf("sluice: permission denied: uid %d is not root and admin group %q ([agent] admin_group in %s) could not be checked: %v; run as root", cred.UID, pol.Agent.AdminGroup, cfg, err)
	}
	return status.Error(codes.PermissionDenied, msg)
}

// errNotAdmin says the caller is neither root nor in the admin group.
type errNotAdmin struct{}

func (errNotAdmin) Error() string { return "not root and not in the admin group" }

// authorize decides whether cred may use the admin API: uid 0 always; with
// adminGroup set (a group name or numeric gid), a caller whose gid or any
// supplementary group (groups(pid)) is that group. It returns errNotAdmin
// for a plain refusal and another error when the answer could not be found.
func authorize(cred PeerCred, adminGroup string, groups func(pid int32) ([]uint32, error), lookup func(string) (uint32, error)) error {
	if cred.UID == 0 {
		return nil
	}
	if adminGroup == "" {
		return errNotAdmin{}
	}
	gid, err := lookup(adminGroup)
	if err != nil {
		return err
	}
	if cred.GID == gid {
		return nil
	}
	supp, err := groups(cred.PID)
	if err != nil {
		return fmt.Errorf("reading the groups of pid %d: %w", cred.PID, err)
	}
	for _, g := range supp {
		if g == gid {
			return nil
		}
	}
	return errNotAdmin{}
}

// lookupGroupID resolves a group name or numeric gid.
func lookupGroupID(name string) (uint32, error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(n), nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("no such group: %w", err)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %s: gid %q: %w", name, g.Gid, err)
	}
	return uint32(n), nil
}

// Status describes the agent's limits and leases.
func (a *Agent) Status() *admitpb.StatusResponse {
	pol, stats := a.limitsSnapshot()
	resp := &admitpb.StatusResponse{
		Version:           a.version,
		StartedUnixUsec:   a.started.UnixMicro(),
		ConfigPath:        pol.Source,
		FailMode:          pol.Agent.FailMode,
		Socket:            a.socketPath(),
		LeaseStateErrors:  int64(a.StateErrors()),
		LeaseStateProblem: a.StateProblem(),
	}
	for _, sv := range a.Servers() {
		resp.Servers = append(resp.Servers, &admitpb.ServerStatus{
			Comm: sv.Comm, Pid: int32(sv.PID),
			RequestsTotal: int64(sv.Requests), LastRequestUnixUsec: unixUsec(sv.LastRequest),
			UnwrappedTotal: int64(sv.Unwrapped), LastUnwrappedUnixUsec: unixUsec(sv.LastUnwrapped),
			LastUnwrapped: sv.LastUnwrappedCmd,
		})
	}
	for i, r := range pol.Limits {
		st := stats[i]
		resp.Limits = append(resp.Limits, &admitpb.LimitStatus{
			Name:             r.Name,
			Match:            r.Match,
			Key:              r.Key,
			QueueOrder:       r.Order(),
			Adaptive:         r.Adaptive,
			CurrentLimit:     int32(st.Limit),
			MaxQueueSize:     int32(r.MaxQueueSize),
			MaxQueueWaitUsec: r.MaxQueueWait.Microseconds(),
			InFlight:         int64(st.Running),
			Queued:           int64(st.Queued),
			AdmittedTotal:    int64(st.Admitted),
			DroppedMaxSize:   int64(st.DroppedSize),
			DroppedMaxTime:   int64(st.DroppedTime),
			Keys:             int64(st.Keys),
		})
		if at, why := a.calib.LastBackoff(r.Name); !at.IsZero() {
			resp.Limits[len(resp.Limits)-1].LastBackoffUnixUsec = at.UnixMicro()
			resp.Limits[len(resp.Limits)-1].LastBackoffReason = why
		}
	}
	leases := a.leases.Snapshot()
	var procs *procfs.Table
	for _, l := range leases {
		info := &admitpb.LeaseInfo{
			LeaseId:       l.ID,
			CorrelationId: l.CorrelationID,
			Subcommand:    l.Subcommand,
			Repo:          l.Repo,
			RemoteIp:      l.RemoteIP,
			User:          l.User,
			Limit:         l.Limit,
			Key:           l.Key,
			State:         l.State,
			Pid:           l.Peer.PID,
			Uid:           int32(l.Peer.UID),
			SinceUnixUsec: l.Arrived.UnixMicro(),
			Bucket:        l.Bucket,
		}
		if l.State == StateRunning {
			info.WaitedUsec = l.Admitted.Sub(l.Arrived).Microseconds()
			// Only a live peer's pid is still the lease's process.
			if l.Peer.alive() {
				if procs == nil {
					t := procfs.Default.ReadTable()
					procs = &t
				}
				info.CpuUsec = procs.TreeCPU(int(l.Peer.PID)).Microseconds()
			}
		}
		resp.Leases = append(resp.Leases, info)
	}
	resp.Budgets = a.budgetStatus(pol)
	a.describeParts(resp)
	if a.describe != nil {
		a.describe(resp)
	}
	return resp
}

// unixUsec is t in microseconds since the epoch, 0 for the zero time.
func unixUsec(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}
