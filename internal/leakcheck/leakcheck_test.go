package leakcheck

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestCheckSeesGoroutinesAndFiles(t *testing.T) {
	s := Take()
	stop := make(chan struct{})
	go func() { <-stop }()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Check(50 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "1 goroutines") || !strings.Contains(err.Error(), os.DevNull) {
		t.Errorf("Check with a goroutine running and %s open = %v", os.DevNull, err)
	}
	close(stop)
	f.Close()
	if err := s.Check(5 * time.Second); err != nil {
		t.Errorf("Check after both ended: %v", err)
	}
}
