package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Shim modes compared: supervising (the shim stays as git's parent) and
// exec-in-place (the shim execs git; the agent's eBPF tracer follows it).

// compareModes starts one agent per mode and measures, against plain git in
// the same run: the latency a matched command pays, and the memory each
// in-flight command holds with k commands running at once.
func compareModes(o options, dir, realGit string, env []string, repo string, results map[string]any) error {
	sup, err := startAgentMode(o, dir, realGit, env, "supervising", false)
	if err != nil {
		return err
	}
	defer sup.stop()
	ex, err := startAgentMode(o, dir, realGit, env, "exec", true)
	if err != nil {
		return err
	}
	defer ex.stop()
	shim, _ := filepath.Abs(filepath.Join(o.bin, "sluice-shim"))
	shimUP := filepath.Join(dir, "modes-shim", "git-upload-pack")
	if err := os.MkdirAll(filepath.Dir(shimUP), 0o755); err != nil {
		return err
	}
	if err := os.Symlink(shim, shimUP); err != nil && !os.IsExist(err) {
		return err
	}
	envFor := func(a *agentProc) []string {
		return append(append([]string{}, env...), "SLUICE_SOCKET="+a.socket, "SLUICE_REAL_GIT="+realGit)
	}
	// Is the exec agent really in exec mode? Its held process must be git
	// itself, not a shim parent.
	if h, err := holdOne(append([]string{shimUP}, repo), envFor(ex)); err == nil {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(h.cmd.Process.Pid) + "/exe")
		h.release()
		if !sameFile(exe, realGit) {
			fmt.Printf("## Shim modes: skipped — the agent did not run in exec mode (held process is %s, not git): eBPF unavailable here?\n\n", exe)
			return nil
		}
	} else {
		return err
	}

	fmt.Printf("## Shim modes: matched git-upload-pack --advertise-refs (%d interleaved runs each)\n\n", o.n)
	fmt.Printf("%-44s %9s %9s %9s %9s\n", "variant", "p50 ms", "p95 ms", "p99 ms", "mean ms")
	direct := []string{realGit, "upload-pack", "--advertise-refs", repo}
	via := []string{shimUP, "--advertise-refs", repo}
	lat, err := interleaveN(o.n, repo, [][]string{direct, via, via}, [][]string{env, envFor(sup), envFor(ex)})
	if err != nil {
		return err
	}
	names := []string{"direct", "via shim, supervising", "via shim, exec in place"}
	var st []stats
	for i, v := range lat {
		st = append(st, summarize(v))
		printRow("  "+names[i], st[i])
	}
	for i := 1; i < 3; i++ {
		fmt.Printf("  %-42s p50 +%.2f ms (x%.2f)  p95 +%.2f  p99 +%.2f  mean +%.2f ms (x%.2f)\n", "added, "+names[i]+":",
			st[i].P50-st[0].P50, st[i].P50/st[0].P50, st[i].P95-st[0].P95, st[i].P99-st[0].P99, st[i].Mean-st[0].Mean, st[i].Mean/st[0].Mean)
	}
	fmt.Println()
	results["modes/latency"] = map[string]any{"direct": st[0], "supervising": st[1], "exec": st[2]}

	k := o.resident
	fmt.Printf("## Shim modes: memory per in-flight command (%d concurrent upload-packs waiting for their client)\n\n", k)
	fmt.Printf("  %-26s %12s %12s %14s\n", "variant", "RSS MiB/cmd", "PSS MiB/cmd", "agent RSS MiB")
	type mem struct{ rss, pss, agent float64 }
	measure := func(argv []string, env []string, a *agentProc) (mem, error) {
		var ps []*held
		defer func() {
			for _, h := range ps {
				h.release()
			}
		}()
		for i := 0; i < k; i++ {
			p, err := holdOne(argv, env)
			if err != nil {
				return mem{}, fmt.Errorf("command %d: %w", i, err)
			}
			ps = append(ps, p)
		}
		time.Sleep(200 * time.Millisecond)
		tree := childrenTable()
		var rss, pss int64
		for _, h := range ps {
			for _, pid := range tree.subtree(h.cmd.Process.Pid) {
				r, s := smapsRollup(pid)
				rss += r
				pss += s
			}
		}
		var agentRSS int64
		if a != nil {
			agentRSS, _ = procStats(a.pid)
		}
		return mem{float64(rss) / float64(k) / 1024, float64(pss) / float64(k) / 1024, float64(agentRSS) / (1 << 20)}, nil
	}
	var m [3]mem
	for i, v := range []struct {
		argv []string
		env  []string
		a    *agentProc
	}{
		{[]string{realGit, "upload-pack", repo}, env, nil},
		{[]string{shimUP, repo}, envFor(sup), sup},
		{[]string{shimUP, repo}, envFor(ex), ex},
	} {
		if m[i], err = measure(v.argv, v.env, v.a); err != nil {
			return fmt.Errorf("%s: %w", names[i], err)
		}
		agent := "—"
		if v.a != nil {
			agent = fmt.Sprintf("%.1f", m[i].agent)
		}
		fmt.Printf("  %-26s %12.2f %12.2f %14s\n", names[i], m[i].rss, m[i].pss, agent)
	}
	for i := 1; i < 3; i++ {
		fmt.Printf("  added per command, %-24s RSS +%.2f MiB, PSS +%.2f MiB\n", names[i]+":", m[i].rss-m[0].rss, m[i].pss-m[0].pss)
	}
	fmt.Println()
	results["modes/resident"] = map[string]any{"commands": k,
		"direct_rss_mib": m[0].rss, "direct_pss_mib": m[0].pss,
		"supervising_rss_mib": m[1].rss, "supervising_pss_mib": m[1].pss, "supervising_agent_rss_mib": m[1].agent,
		"exec_rss_mib": m[2].rss, "exec_pss_mib": m[2].pss, "exec_agent_rss_mib": m[2].agent}
	return nil
}

// held is an upload-pack waiting for its client on stdin.
type held struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// holdOne starts argv (an upload-pack) and waits for its advertisement: it
// is then admitted and waits for its client on stdin.
func holdOne(argv, env []string) (*held, error) {
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = env
	c.Stderr = os.Stderr
	in, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	var b [1]byte
	if _, err := io.ReadFull(out, b[:]); err != nil {
		in.Close()
		c.Wait()
		return nil, fmt.Errorf("%v: no advertisement: %w", argv, err)
	}
	go io.Copy(io.Discard, out)
	return &held{cmd: c, stdin: in}, nil
}

// release tells a held upload-pack the client wants nothing and reaps it.
func (h *held) release() {
	h.stdin.Write([]byte("0000"))
	h.stdin.Close()
	h.cmd.Wait()
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// interleaveN runs each argv[i] with env[i] n times, rotating the order
// every round so machine noise hits all alike; it returns wall times in ms.
func interleaveN(n int, dir string, argv, env [][]string) ([][]float64, error) {
	out := make([][]float64, len(argv))
	once := func(i int) (float64, error) {
		c := exec.Command(argv[i][0], argv[i][1:]...)
		c.Dir, c.Env, c.Stdout, c.Stderr = dir, env[i], io.Discard, io.Discard
		t0 := time.Now()
		if err := c.Run(); err != nil {
			return 0, fmt.Errorf("%v: %w", argv[i], err)
		}
		return float64(time.Since(t0).Microseconds()) / 1000, nil
	}
	for r := 0; r < n+5; r++ {
		for j := range argv {
			i := (j + r) % len(argv)
			ms, err := once(i)
			if err != nil {
				return nil, err
			}
			if r >= 5 { // the first rounds warm caches
				out[i] = append(out[i], ms)
			}
		}
	}
	return out, nil
}

// procChildren maps a pid to its children, from one scan of /proc.
type procChildren map[int][]int

func childrenTable() procChildren {
	t := procChildren{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		t[ppid] = append(t[ppid], pid)
	}
	return t
}

// subtree returns pid and all its descendants.
func (t procChildren) subtree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, t[out[i]]...)
	}
	return out
}

// smapsRollup returns a process's Rss and Pss in KiB.
func smapsRollup(pid int) (rss, pss int64) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss
}
