package agenttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeSluiced writes a script that logs like sluiced and exits with code
// on SIGTERM.
func fakeSluiced(t *testing.T, code int) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sluiced")
	script := `#!/bin/sh
trap 'echo "{\"msg\":\"stopping\"}"; exit ` + string(rune('0'+code)) + `' TERM
echo '{"msg":"metrics listening","addr":"127.0.0.1:1"}'
echo '{"msg":"sluiced ready"}'
echo '{"msg":"command finished","n":1}'
echo '{"msg":"command finished","n":2}'
while :; do sleep 0.05; done
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestStartLogsStop(t *testing.T) {
	a := &Agent{Bin: fakeSluiced(t, 0), Dir: t.TempDir()}
	if err := a.Start("[agent]\n"); err != nil {
		t.Fatal(err)
	}
	if a.Metrics != "http://127.0.0.1:1" {
		t.Errorf("Metrics = %q", a.Metrics)
	}
	if b, err := os.ReadFile(a.ConfigPath()); err != nil || string(b) != "[agent]\n" {
		t.Errorf("config %q, %v", b, err)
	}
	lines, err := a.WaitLogLines("command finished", 2, 5*time.Second)
	if err != nil || lines[1]["n"] != 2.0 {
		t.Errorf("WaitLogLines = %v, %v", lines, err)
	}
	if err := a.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if !strings.Contains(a.Logs(), `"stopping"`) {
		t.Errorf("the log lacks the last line:\n%s", a.Logs())
	}
}

func TestStopChecksTheExit(t *testing.T) {
	a := &Agent{Bin: fakeSluiced(t, 3), Dir: t.TempDir(), LogFile: filepath.Join(t.TempDir(), "sluiced.log")}
	if err := a.Start(""); err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Stop = %v, want exit status 3", err)
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader("# HELP x\nx 1\ny{a=\"b c\"} 2.5\nbad\n"))
	if err != nil || m["x"] != 1 || m[`y{a="b c"}`] != 2.5 || len(m) != 2 {
		t.Errorf("ParseMetrics = %v, %v", m, err)
	}
}
