package agent

import (
	"context"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// adminService answers the operator CLI.
type adminService struct {
	admitpb.UnimplementedAdminServer
	a *Agent
}

func (s adminService) Status(ctx context.Context, _ *admitpb.StatusRequest) (*admitpb.StatusResponse, error) {
	return s.a.Status(), nil
}

// Status describes the agent's limits and leases.
func (a *Agent) Status() *admitpb.StatusResponse {
	pol := a.Policy()
	resp := &admitpb.StatusResponse{
		Version:         a.version,
		StartedUnixUsec: a.started.UnixMicro(),
		ConfigPath:      pol.Source,
		FailMode:        pol.Agent.FailMode,
	}
	stats := a.Limiters()
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
	}
	for _, l := range a.leases.Snapshot() {
		info := &admitpb.LeaseInfo{
			LeaseId:       l.ID,
			CorrelationId: l.CorrelationID,
			Subcommand:    l.Subcommand,
			Repo:          l.Repo,
			RemoteIp:      l.RemoteIP,
			User:          l.User,
			Limit:         l.Limit,
			State:         l.State,
			Pid:           l.Peer.PID,
			Uid:           int32(l.Peer.UID),
			SinceUnixUsec: l.Arrived.UnixMicro(),
		}
		if l.State == StateRunning {
			info.WaitedUsec = l.Admitted.Sub(l.Arrived).Microseconds()
		}
		resp.Leases = append(resp.Leases, info)
	}
	return resp
}
