package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

// agentSaw is what sluiced's JSON log says it did in one run: the
// harness's only view of which client addresses the agent saw (the
// remote_ip of every admitted command that finished), its rejections and
// the commands that died by a signal.
type agentSaw struct {
	Finished map[string]int // by subcommand: admitted commands that finished
	// RemoteIPs counts finished commands by remote_ip (all subcommands).
	RemoteIPs map[string]int
	// Rejected counts rejections by `limit: reason` (reason as logged:
	// max_size = queue full, max_time = waited max_queue_wait,
	// unavailable = shutting down).
	Rejected map[string]int
	// Signaled counts finished commands by the signal that ended them
	// (9 under memory pressure is the OOM killer's SIGKILL).
	Signaled map[string]int
	// Lines that were not JSON (start-up notes, panics): counted only.
	Other int
}

type agentLogLine struct {
	Msg      string `json:"msg"`
	Subcmd   string `json:"subcmd"`
	RemoteIP string `json:"remote_ip"`
	Limit    string `json:"limit"`
	Reason   string `json:"reason"`
	Signal   int    `json:"signal"`
}

// parseAgentLog reads sluiced's log file.
func parseAgentLog(path string) agentSaw {
	s := agentSaw{Finished: map[string]int{}, RemoteIPs: map[string]int{}, Rejected: map[string]int{}, Signaled: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return s
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l agentLogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			s.Other++
			continue
		}
		switch l.Msg {
		case "command finished", "lease released without an exit report", "lease released without a report: the shim exited or was killed":
			s.Finished[l.Subcmd]++
			s.RemoteIPs[l.RemoteIP]++
			if l.Signal != 0 {
				s.Signaled[fmt.Sprint(l.Signal)]++
			}
		case "rejected":
			s.Rejected[l.Limit+": "+l.Reason]++
		}
	}
	return s
}
