// Package ebpf owns sluice's kernel tracer: BPF programs on the sched
// tracepoints that report every exec of a git binary (to find git processes
// that bypassed the shim) and the death of tracked process trees with the
// CPU time, max RSS and exit status that wait4(2) would report, read at
// exit so a lease can be released and accounted without a resident parent.
//
// The C source is bpf/tracer.bpf.c; the bpf2go output is committed (see
// gen.go). Everything here needs Linux with BTF, tp_btf tracepoints and
// CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN); Open reports anything missing as
// an error wrapping ErrUnavailable. Probe is what `sluice check` asks (BTF
// and CAP_BPF, without loading anything); Setup is how sluiced starts the
// tracer from the policy, or says in one log line why it runs without.
package ebpf
