package gitwrap

import (
	"errors"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// forwardedSignals are passed on to git while the shim supervises it:
// those the shim's parent did not ignore. A signal ignored at start (nohup
// ignores SIGHUP, a shell's background job SIGINT) stays ignored, so git
// inherits SIG_IGN as it would without the shim; catching it to forward
// would hand git the default action instead (the process dies of a SIGHUP
// it was started to survive).
func forwardedSignals() []os.Signal {
	all := []os.Signal{
		syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH,
	}
	out := all[:0]
	for _, s := range all {
		if !signal.Ignored(s) {
			out = append(out, s)
		}
	}
	return out
}

// GitArgv returns the argv for the real git: "git" followed by inv.Args.
func GitArgv(inv *Invocation) []string {
	argv := make([]string, 0, len(inv.Args)+1)
	return append(append(argv, "git"), inv.Args...)
}

// SetEnv returns env with key=value, replacing an existing entry (getenv
// takes the first of duplicates, so appending would not override it).
func SetEnv(env []string, key, value string) []string {
	for i, kv := range env {
		if len(kv) > len(key) && kv[len(key)] == '=' && kv[:len(key)] == key {
			env[i] = key + "=" + value
			return env
		}
	}
	return append(env, key+"="+value)
}

// Exec replaces the shim with git (no supervision, nothing left behind). It
// sets ExecGuardEnv in env first. It returns only on error.
func Exec(git string, argv, env []string) error {
	env = SetEnv(env, ExecGuardEnv, execGuardValue())
	err := syscall.Exec(git, argv, env)
	return errors.New("sluice: exec " + git + ": " + err.Error())
}

// Result is how a supervised git ended.
type Result struct {
	Status syscall.WaitStatus
	Rusage syscall.Rusage
	Real   time.Duration
}

// ExitCode is the exit status, or -1 when git was killed by a signal.
func (r *Result) ExitCode() int32 {
	if r.Status.Signaled() {
		return -1
	}
	return int32(r.Status.ExitStatus())
}

// Signal is the terminating signal, 0 when git exited.
func (r *Result) Signal() int32 {
	if r.Status.Signaled() {
		return int32(r.Status.Signal())
	}
	return 0
}

// UserUsec, SystemUsec and MaxRSSKiB report git's resource use (its own and
// that of its waited-for children, as wait4 does).
func (r *Result) UserUsec() int64   { return tvUsec(r.Rusage.Utime) }
func (r *Result) SystemUsec() int64 { return tvUsec(r.Rusage.Stime) }
func (r *Result) MaxRSSKiB() int64  { return int64(r.Rusage.Maxrss) } // KiB on Linux

func tvUsec(tv syscall.Timeval) int64 { return int64(tv.Sec)*1e6 + int64(tv.Usec) }

// Supervise runs git as a child and waits for it. It locks the calling
// goroutine to its OS thread and never unlocks it (call it from main, and
// exit soon after): Pdeathsig (SIGKILL, so git dies with the shim) fires
// when the forking THREAD exits. stdin, stdout and stderr are passed as they
// are (nothing is copied), and so is every other descriptor the shim
// inherited without close-on-exec (the Go runtime's and the lease socket are
// close-on-exec). SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and
// SIGWINCH are forwarded to git from the moment Supervise is called, except
// those ignored when the shim started, which git inherits ignored.
//
// Start-up cost matters here (measured), so: syscall.ForkExec and wait4,
// not os.StartProcess (whose first use probes pidfd support by forking a
// throwaway child); signal.Notify before LockOSThread (a locked thread makes
// the runtime start threads through a template thread); one goroutine that
// waits for SIGCHLD and forwarded signals on the same channel instead of a
// forwarding goroutine plus a blocking wait (an extra goroutine costs a
// thread and dozens of context switches while git runs); no signal.Stop
// (it waits for the runtime's signal goroutine to be scheduled).
func Supervise(git string, argv, env []string) (Result, error) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, append(forwardedSignals(), syscall.SIGCHLD)...)
	runtime.LockOSThread()

	start := time.Now()
	pid, err := syscall.ForkExec(git, argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		signal.Stop(sigs)
		return Result{}, errors.New("sluice: start " + git + ": " + err.Error())
	}
	var r Result
	for {
		// Reap first: signals coalesce, so every wake-up checks. Until git
		// is reaped here its pid cannot be reused, so forwarding with
		// kill(2) is safe.
		wpid, err := syscall.Wait4(pid, &r.Status, syscall.WNOHANG, &r.Rusage)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return Result{}, errors.New("sluice: wait for git: " + err.Error())
		}
		if wpid == pid {
			break
		}
		if s := (<-sigs).(syscall.Signal); s != syscall.SIGCHLD {
			syscall.Kill(pid, s)
		}
	}
	r.Real = time.Since(start)
	return r, nil
}

// ExitLike ends the shim the way git ended, so the shim's parent sees the
// same wait status: the same exit code, or death by the same signal (reset
// to its default action, unblocked and raised on the shim itself; SIGKILL
// too). Core dumps of the shim are disabled first: git's is the useful one.
// It never returns.
func ExitLike(ws syscall.WaitStatus) {
	if !ws.Signaled() {
		os.Exit(ws.ExitStatus())
	}
	sig := ws.Signal()
	syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{})
	// The Go runtime would turn SIGQUIT/SIGSEGV/… into a traceback and exit 2:
	// put the kernel default back with a raw rt_sigaction. A zeroed struct is
	// SIG_DFL, no flags, empty mask on every Linux layout.
	var act [4]uint64
	syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	set := uint64(1) << (uint(sig) - 1)
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 1 /* SIG_UNBLOCK */, uintptr(unsafe.Pointer(&set)), 0, 8, 0, 0)
	syscall.Tgkill(syscall.Getpid(), syscall.Gettid(), sig)
	// Still here: a signal whose default is to ignore or stop (git cannot
	// have died of it), or a stop we were continued from.
	os.Exit(128 + int(sig))
}
