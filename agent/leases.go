package agent

import (
	"encoding/hex"
	"math/rand/v2"
	"sort"
	"sync"
	"time"
)

// Lease states.
const (
	StateQueued  = "queued"
	StateRunning = "running"
)

// Lease is one admission request, from the moment it arrives (queued) until
// its git process ends. Fields other than State and Admitted are fixed at
// creation.
type Lease struct {
	ID            string
	CorrelationID string
	Command       string
	Subcommand    string
	Repo          []byte
	RemoteIP      string
	User          string
	Limit         string // rule name; "" when no rule matched
	Key           string
	Peer          PeerCred
	Bucket        string // cgroup bucket path; "" without placement
	Arrived       time.Time
	// queuedSince is when the request first queued under the previous
	// agent (requeue.go); zero for a fresh request.
	queuedSince time.Time

	// Guarded by LeaseTable.mu.
	State    string
	Admitted time.Time
}

// LeaseTable holds every lease the agent knows of, queued or running. It is
// the source for status and top; limiting itself lives in Limiter.
type LeaseTable struct {
	mu     sync.Mutex // guards the fields below
	leases map[string]*Lease
}

// NewLeaseTable returns an empty table.
func NewLeaseTable() *LeaseTable {
	return &LeaseTable{leases: make(map[string]*Lease)}
}

// newLeaseID returns a random 16-hex-digit id.
func newLeaseID() string {
	var b [8]byte
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return hex.EncodeToString(b[:])
}

// Add registers l as queued and assigns its ID.
func (t *LeaseTable) Add(l *Lease) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		l.ID = newLeaseID()
		if _, dup := t.leases[l.ID]; !dup {
			break
		}
	}
	l.State = StateQueued
	t.leases[l.ID] = l
}

// MarkRunning records that l was admitted at now.
func (t *LeaseTable) MarkRunning(l *Lease, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l.State = StateRunning
	l.Admitted = now
}

// adopt registers l, already running since admitted, under its own ID (a
// lease recovered after a restart).
func (t *LeaseTable) adopt(l *Lease, admitted time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l.State = StateRunning
	l.Admitted = admitted
	t.leases[l.ID] = l
}

// Remove forgets l.
func (t *LeaseTable) Remove(l *Lease) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.leases, l.ID)
}

// Snapshot returns copies of all leases, oldest first.
func (t *LeaseTable) Snapshot() []Lease {
	t.mu.Lock()
	out := make([]Lease, 0, len(t.leases))
	for _, l := range t.leases {
		out = append(out, *l)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Arrived.Before(out[j].Arrived) })
	return out
}
