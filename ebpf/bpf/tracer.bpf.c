//go:build ignore

// tracer.bpf.c reports execs of git binaries and the deaths of tracked
// process trees. It is compiled by bpf2go (see ../gen.go); the Go side in
// tracer.go loads it, fills git_inodes and tracked, and reads events.
//
// The kernel side only copies raw fields; the arithmetic that turns them
// into what wait4(2) would report (cputime_adjust, page counts to KiB,
// wait status decoding) happens in Go, where it can be tested.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TASK_COMM_LEN 16
#define FILENAME_MAX_LEN 256
#define ARGV_MAX_LEN 512
// MAX_THREADS bounds the walk over a dying thread group's thread list.
#define MAX_THREADS 512

enum event_type {
	EVENT_EXEC = 1,
	EVENT_EXIT = 2,
};

// counter indexes in the counters map.
enum counter {
	COUNTER_LOST = 0,       // ring buffer full: event dropped
	COUNTER_TRACK_FULL = 1, // tracked map full: a forked child not tracked
	COUNTER_MAX = 2,
};

// inode_key identifies an executable: inode number and the kernel's
// encoding of its superblock's device (MAJOR<<20 | MINOR).
struct inode_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

struct exec_event {
	__u32 type;
	__u32 pid;  // tgid
	__u32 ppid; // real parent's tgid
	__u32 root; // tracked root, 0 when untracked
	__u64 cgroup_id;
	__u64 ktime; // CLOCK_MONOTONIC ns
	__u32 argv_len;
	__u32 pad;
	char comm[TASK_COMM_LEN];
	char parent_comm[TASK_COMM_LEN];
	char filename[FILENAME_MAX_LEN];
	char argv[ARGV_MAX_LEN];
};

struct exit_event {
	__u32 type;
	__u32 pid;  // tgid
	__u32 root; // tracked root
	__u32 threads; // threads still linked to the group, walked below
	__u64 ktime;      // CLOCK_MONOTONIC ns at the tracepoint
	__u64 start_time; // group leader's start_time, CLOCK_MONOTONIC ns
	// signal_struct: times of threads already released.
	__u64 sig_utime;
	__u64 sig_stime;
	__u64 sig_runtime;
	// sum over the threads still linked (this one, a zombie leader, threads
	// exiting concurrently): utime, stime, se.sum_exec_runtime.
	__u64 thr_utime;
	__u64 thr_stime;
	__u64 thr_runtime;
	// signal->prev_cputime, the floor cputime_adjust keeps monotonic.
	__u64 prev_utime;
	__u64 prev_stime;
	// reaped children.
	__u64 cutime;
	__u64 cstime;
	// in pages.
	__u64 maxrss;
	__u64 cmaxrss;
	__u64 hiwater_rss;
	__u64 rss;
	__u32 sig_flags;
	__s32 group_exit_code;
	__s32 exit_code;        // the exiting thread's
	__s32 leader_exit_code; // the group leader's
	__u32 truncated;        // thread walk hit MAX_THREADS
	__u32 pad;
};

// Force BTF for the event types so bpf2go -type can generate them.
const struct exec_event *unused_exec_event __attribute__((unused));
const struct exit_event *unused_exit_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); // resized by the loader
} events SEC(".maps");

// git_inodes holds the git executables whose execs are reported.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct inode_key);
	__type(value, __u8);
} git_inodes SEC(".maps");

// tracked maps a tgid to the root of its tracked tree.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // resized by the loader
	__type(key, __u32);
	__type(value, __u32);
} tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct inode_key key = {};
	struct inode *inode = BPF_CORE_READ(bprm, file, f_inode);

	key.ino = BPF_CORE_READ(inode, i_ino);
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (!bpf_map_lookup_elem(&git_inodes, &key))
		return 0;

	struct exec_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_LOST);
		return 0;
	}
	__u32 tgid = BPF_CORE_READ(p, tgid);
	__u32 *root = bpf_map_lookup_elem(&tracked, &tgid);

	e->type = EVENT_EXEC;
	e->pid = tgid;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->root = root ? *root : 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ktime = bpf_ktime_get_ns();
	e->pad = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, p, comm);
	BPF_CORE_READ_STR_INTO(&e->parent_comm, p, real_parent, comm);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));

	unsigned long start = BPF_CORE_READ(p, mm, arg_start);
	unsigned long end = BPF_CORE_READ(p, mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	if (len > ARGV_MAX_LEN)
		len = ARGV_MAX_LEN;
	e->argv_len = 0;
	if (len > 0 && bpf_probe_read_user(e->argv, len, (void *)start) == 0)
		e->argv_len = len;

	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);

	if (ptgid == ctgid) // a new thread, not a new process
		return 0;
	__u32 *root = bpf_map_lookup_elem(&tracked, &ptgid);
	if (!root)
		return 0;
	__u32 r = *root;
	if (bpf_map_update_elem(&tracked, &ctgid, &r, BPF_ANY))
		count(COUNTER_TRACK_FULL);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p, bool group_dead)
{
	if (!group_dead)
		return 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	__u32 *rootp = bpf_map_lookup_elem(&tracked, &tgid);
	if (!rootp)
		return 0;
	__u32 root = *rootp;

	struct exit_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_LOST);
		bpf_map_delete_elem(&tracked, &tgid);
		return 0;
	}
	struct signal_struct *sig = BPF_CORE_READ(p, signal);
	struct task_struct *leader = BPF_CORE_READ(p, group_leader);

	e->type = EVENT_EXIT;
	e->pid = tgid;
	e->root = root;
	e->ktime = bpf_ktime_get_ns();
	e->start_time = BPF_CORE_READ(leader, start_time);
	e->sig_utime = BPF_CORE_READ(sig, utime);
	e->sig_stime = BPF_CORE_READ(sig, stime);
	e->sig_runtime = BPF_CORE_READ(sig, sum_sched_runtime);
	e->prev_utime = BPF_CORE_READ(sig, prev_cputime.utime);
	e->prev_stime = BPF_CORE_READ(sig, prev_cputime.stime);
	e->cutime = BPF_CORE_READ(sig, cutime);
	e->cstime = BPF_CORE_READ(sig, cstime);
	e->maxrss = BPF_CORE_READ(sig, maxrss);
	e->cmaxrss = BPF_CORE_READ(sig, cmaxrss);
	e->sig_flags = BPF_CORE_READ(sig, flags);
	e->group_exit_code = BPF_CORE_READ(sig, group_exit_code);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->leader_exit_code = BPF_CORE_READ(leader, exit_code);

	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	e->hiwater_rss = 0;
	e->rss = 0;
	if (mm) {
		e->hiwater_rss = BPF_CORE_READ(mm, hiwater_rss);
		// get_mm_rss(): file + anon + shmem pages, as
		// percpu_counter_read_positive reads them.
		__s64 file = BPF_CORE_READ(mm, rss_stat[MM_FILEPAGES].count);
		__s64 anon = BPF_CORE_READ(mm, rss_stat[MM_ANONPAGES].count);
		__s64 shmem = BPF_CORE_READ(mm, rss_stat[MM_SHMEMPAGES].count);
		e->rss = (file > 0 ? file : 0) + (anon > 0 ? anon : 0) + (shmem > 0 ? shmem : 0);
	}

	// What thread_group_cputime() adds to the signal totals: every thread
	// still on the group's list. Threads already released (non-leader
	// threads that exited earlier, or were zapped by exec) are folded into
	// signal->utime/stime/sum_sched_runtime by __exit_signal. The exiting
	// thread, a zombie leader and threads still in do_exit are not yet: they
	// are on the list and summed here. What the exiting thread runs after
	// this tracepoint (exit_mm tearing down the address space, exit_files,
	// exit_notify) is not seen: measured ~8-20 ms of system time for a
	// 200-400 MiB process on this machine, negligible for small ones.
	struct list_head *head = (struct list_head *)((void *)sig + bpf_core_field_offset(struct signal_struct, thread_head));
	struct list_head *pos = BPF_CORE_READ(sig, thread_head.next);
	__u64 off = bpf_core_field_offset(struct task_struct, thread_node);
	__u64 ut = 0, st = 0, rt = 0;
	__u32 n = 0;
	e->truncated = 1;
	for (int i = 0; i < MAX_THREADS; i++) {
		if (pos == head || !pos) {
			e->truncated = 0;
			break;
		}
		struct task_struct *t = (struct task_struct *)((void *)pos - off);
		ut += BPF_CORE_READ(t, utime);
		st += BPF_CORE_READ(t, stime);
		rt += BPF_CORE_READ(t, se.sum_exec_runtime);
		n++;
		pos = BPF_CORE_READ(pos, next);
	}
	e->thr_utime = ut;
	e->thr_stime = st;
	e->thr_runtime = rt;
	e->threads = n;
	e->pad = 0;

	bpf_ringbuf_submit(e, 0);
	bpf_map_delete_elem(&tracked, &tgid);
	return 0;
}
