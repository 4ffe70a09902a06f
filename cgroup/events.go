package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// EventKind says which kernel notification an [Event] is.
type EventKind int

// Kinds of [Event].
const (
	// EventOOM: the v1 memory cgroup hit its limit and the OOM killer is
	// about to run (eventfd on memory.oom_control). The kernel signals it
	// before it kills, so memory.oom_control's oom_kill may not have moved
	// yet when the event is read.
	EventOOM EventKind = iota + 1
	// EventPressure: v1 vmpressure reached Level ("medium" or
	// "critical") in the cgroup or below it (eventfd on
	// memory.pressure_level).
	EventPressure
	// EventMemoryEvents: a v2 memory.events or memory.events.local file
	// changed (inotify): a high, max, oom or oom_kill counter moved. The
	// counters are updated before the notification.
	EventMemoryEvents
)

// String names the kind for logs.
func (k EventKind) String() string {
	switch k {
	case EventOOM:
		return "oom"
	case EventPressure:
		return "pressure"
	case EventMemoryEvents:
		return "memory.events"
	default:
		return "unknown"
	}
}

// Event is one kernel notification about memory in a watched cgroup.
type Event struct {
	Kind EventKind
	// Dir is the cgroup directory the notification was registered on.
	Dir string
	// Level is the vmpressure level of an EventPressure.
	Level string
}

// EventTarget is one cgroup to register memory notifications on.
type EventTarget struct {
	// Dir is the cgroup's directory: a v1 memory directory, or a cgroup2
	// directory when V2 is set.
	Dir string
	// V2 selects inotify on memory.events and memory.events.local instead
	// of v1 eventfds.
	V2 bool
	// PressureLevels are the v1 memory.pressure_level levels to register
	// ("low", "medium", "critical"); vmpressure propagates up the
	// hierarchy, so the parent alone is enough. Ignored on v2.
	PressureLevels []string
	// OOM registers a v1 eventfd on memory.oom_control. v1 notifies a
	// cgroup and its descendants of an OOM, never its ancestors: register
	// every bucket as well as the parent. Ignored on v2.
	OOM bool
}

// EventListener delivers kernel memory notifications (v1 eventfds through
// cgroup.event_control, v2 inotify on memory.events) on one channel until
// it is closed.
type EventListener struct {
	c     chan Event
	done  chan struct{} // closed by Close
	files []*os.File    // eventfds and the inotify fd; closing them ends the readers
	wg    sync.WaitGroup
}

// ListenEvents registers every notification the targets ask for and starts
// delivering them on [EventListener.C]. Registrations that fail are
// returned as errors (one per failure, naming the file and the reason);
// the listener serves the ones that succeeded, and is nil only when none
// did. Pressure and memory.events notifications are coalesced (see send).
func ListenEvents(targets []EventTarget) (*EventListener, []error) {
	l := &EventListener{c: make(chan Event, 16), done: make(chan struct{})}
	var errs []error
	var inotify *os.File
	inotifyDirs := map[int]string{}
	for _, t := range targets {
		if t.V2 {
			if inotify == nil {
				fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
				if err != nil {
					errs = append(errs, fmt.Errorf("inotify_init1: %w", err))
					continue
				}
				inotify = os.NewFile(uintptr(fd), "inotify")
			}
			for _, name := range []string{"memory.events", "memory.events.local"} {
				p := filepath.Join(t.Dir, name)
				wd, err := unix.InotifyAddWatch(int(inotify.Fd()), p, unix.IN_MODIFY)
				if err != nil {
					errs = append(errs, fmt.Errorf("inotify watch %s: %w", p, err))
					continue
				}
				inotifyDirs[wd] = t.Dir
			}
			continue
		}
		if t.OOM {
			f, err := registerV1(t.Dir, "memory.oom_control", "")
			if err != nil {
				errs = append(errs, err)
			} else {
				l.start(f, Event{Kind: EventOOM, Dir: t.Dir})
			}
		}
		for _, lvl := range t.PressureLevels {
			f, err := registerV1(t.Dir, "memory.pressure_level", lvl)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			l.start(f, Event{Kind: EventPressure, Dir: t.Dir, Level: lvl})
		}
	}
	if inotify != nil {
		if len(inotifyDirs) == 0 {
			inotify.Close()
		} else {
			l.startInotify(inotify, inotifyDirs)
		}
	}
	if len(l.files) == 0 {
		return nil, errs
	}
	return l, errs
}

// registerV1 creates an eventfd and registers it for dir/file through
// dir/cgroup.event_control ("<eventfd> <fd of file> [args]"). The control
// file's fd may be closed once registered; the registration lives until
// the eventfd is closed or the cgroup is removed (which signals it once).
func registerV1(dir, file, args string) (*os.File, error) {
	target := filepath.Join(dir, file)
	tf, err := os.Open(target)
	if err != nil {
		return nil, fmt.Errorf("register a notification on %s: %w", target, err)
	}
	defer tf.Close()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd for %s: %w", target, err)
	}
	line := strconv.Itoa(efd) + " " + strconv.Itoa(int(tf.Fd()))
	if args != "" {
		line += " " + args
	}
	ctl := filepath.Join(dir, "cgroup.event_control")
	if err := os.WriteFile(ctl, []byte(line), 0); err != nil {
		unix.Close(efd)
		return nil, fmt.Errorf("register %s %q through %s: %w", file, args, ctl, err)
	}
	// Non-blocking: os.NewFile puts it in the runtime poller, so Read parks
	// the goroutine and Close wakes it.
	return os.NewFile(uintptr(efd), target), nil
}

// start reads eventfd f until it is closed, sending ev for each signal.
func (l *EventListener) start(f *os.File, ev Event) {
	l.files = append(l.files, f)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		var buf [8]byte
		for {
			if _, err := f.Read(buf[:]); err != nil {
				return // closed
			}
			l.send(ev)
		}
	}()
}

// startInotify reads inotify events until f is closed.
func (l *EventListener) startInotify(f *os.File, dirs map[int]string) {
	l.files = append(l.files, f)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				e := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				off += unix.SizeofInotifyEvent + int(e.Len)
				if e.Mask&unix.IN_MODIFY != 0 {
					l.send(Event{Kind: EventMemoryEvents, Dir: dirs[int(e.Wd)]})
				}
			}
		}
	}()
}

// send delivers ev. vmpressure fires by the hundred in a reclaim burst:
// those are dropped while the channel is full (the reader samples
// everything on the next one). An OOM notification is never dropped.
func (l *EventListener) send(ev Event) {
	if ev.Kind == EventOOM {
		select {
		case l.c <- ev:
		case <-l.done:
		}
		return
	}
	select {
	case l.c <- ev:
	default:
	}
}

// C delivers the events. It is never closed; see [EventListener.Done].
func (l *EventListener) C() <-chan Event { return l.c }

// Done is closed when the listener is closed.
func (l *EventListener) Done() <-chan struct{} { return l.done }

// Registrations is the number of live registrations (eventfds, plus one
// for the inotify instance).
func (l *EventListener) Registrations() int { return len(l.files) }

// Close unregisters everything and waits for the readers to stop.
func (l *EventListener) Close() error {
	close(l.done)
	var errs []error
	for _, f := range l.files {
		errs = append(errs, f.Close())
	}
	l.wg.Wait()
	return errors.Join(errs...)
}

// EventTargets returns where to register memory notifications for m's
// hierarchy: the parent (OOM and the given pressure levels on v1,
// memory.events on v2) and every bucket (OOM on v1, memory.events on v2).
// ModeHybrid is v1 for memory.
func EventTargets(m Manager, levels []string) []EventTarget {
	switch m := m.(type) {
	case *v1Manager:
		m.mu.RLock()
		n := len(m.buckets)
		m.mu.RUnlock()
		out := []EventTarget{{Dir: m.dir("memory", ""), OOM: true, PressureLevels: levels}}
		for i := 0; i < n; i++ {
			out = append(out, EventTarget{Dir: m.dir("memory", bucketRel(i)), OOM: true})
		}
		return out
	case *v2Manager:
		m.mu.RLock()
		n := len(m.buckets)
		m.mu.RUnlock()
		out := []EventTarget{{Dir: m.dir(""), V2: true}}
		for i := 0; i < n; i++ {
			out = append(out, EventTarget{Dir: m.dir(bucketRel(i)), V2: true})
		}
		return out
	}
	return nil
}
