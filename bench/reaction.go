package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluicehq/sluice/agent/wire"
	"github.com/sluicehq/sluice/cgroup"
)

// reactionRun measures, once, how long the adaptive limiter takes to back
// off after memory pressure appears: a hog run through the shim fills the
// parent cgroup (256 MiB) past the working-set threshold and holds it; the
// time from "hog in place" to the agent's backoff log line is the reaction.
// sampleInterval is the agent's [adaptive] sample_interval: 1s is sluice's
// default; 30s reproduces Gitaly's calibration, which looks for pressure
// only once per 30 s calibration.
func reactionRun(o options, dir, realGit string, env []string, sampleInterval string, run int) (time.Duration, error) {
	rdir := filepath.Join(dir, fmt.Sprintf("reaction-%s-%d", sampleInterval, run))
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return 0, err
	}
	root := fmt.Sprintf("sluice-bench-%d-%d", os.Getpid(), run)
	socket := filepath.Join(rdir, "run", "sluice.sock")
	cfg := fmt.Sprintf(`
[agent]
socket = %q
metrics_addr = "off"
[git]
bin = %q
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_queue_size = 10
max_queue_wait = "10s"
adaptive = true
min_limit = 1
initial_limit = 8
max_limit = 8
[adaptive]
sample_interval = %q
calibration_interval = "30s"
watchers = ["memory"]
[cgroups]
enabled = true
required = true
hierarchy_root = %q
memory_bytes = 268435456
[cgroups.repositories]
count = 1
`, socket, realGit, sampleInterval, root)
	path := filepath.Join(rdir, "sluice.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return 0, err
	}
	defer func() {
		if m, err := cgroup.New(cgroup.Config{Root: root, Buckets: 1}, nil); err == nil {
			for i := 0; i < 100 && m.Destroy() != nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	cmd := cmdEnv(env, filepath.Join(o.bin, "sluiced"), "-config", path)
	logs, err := cmd.StderrPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	a := &agentProc{cmd: cmd, pid: cmd.Process.Pid, socket: socket}
	defer a.stop()
	backoff := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var l map[string]any
			if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == "adaptive limit backed off" {
				if ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", fmt.Sprint(l["time"])); err == nil {
					select {
					case backoff <- ts:
					default:
					}
				}
			}
		}
		io.Copy(io.Discard, logs)
	}()
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := wire.Dial(socket, 100*time.Millisecond); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return 0, errors.New("sluiced did not start listening within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Spread the onset of pressure over the agent's sampling period (golden
	// ratio steps), as a real storm arrives at any phase of it.
	period, _ := time.ParseDuration(sampleInterval)
	time.Sleep(time.Duration(math.Mod(float64(run+1)*0.618034, 1) * float64(period)))

	mark, stop := filepath.Join(rdir, "mark"), filepath.Join(rdir, "stop")
	hog := filepath.Join(rdir, "hog")
	script := fmt.Sprintf("#!/bin/sh\n(head -c 246415360 /dev/zero; date +%%s.%%N > %s; i=0; while [ ! -e %s ] && [ $i -lt 700 ]; do sleep 0.1; i=$((i+1)); done) | tail -n 1 > /dev/null\n", mark, stop)
	if err := os.WriteFile(hog, []byte(script), 0o755); err != nil {
		return 0, err
	}
	shimDir := filepath.Join(rdir, "shimbin")
	os.MkdirAll(shimDir, 0o755)
	shim, _ := filepath.Abs(filepath.Join(o.bin, "sluice-shim"))
	os.Symlink(shim, filepath.Join(shimDir, "git-upload-pack"))
	h := exec.Command(filepath.Join(shimDir, "git-upload-pack"), rdir)
	h.Env = append(append([]string{}, env...), "SLUICE_SOCKET="+socket, "SLUICE_REAL_GIT="+hog)
	if err := h.Start(); err != nil {
		return 0, err
	}
	defer func() {
		os.WriteFile(stop, nil, 0o644)
		h.Wait()
	}()
	select {
	case at := <-backoff:
		b, err := os.ReadFile(mark)
		if err != nil {
			return 0, fmt.Errorf("backoff before the hog was in place: %v", err)
		}
		var sec, nsec int64
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d.%d", &sec, &nsec); err != nil {
			return 0, err
		}
		return at.Sub(time.Unix(sec, nsec)), nil
	case <-time.After(70 * time.Second):
		return 0, errors.New("no backoff within 70s")
	}
}
