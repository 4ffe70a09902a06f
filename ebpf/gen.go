package ebpf

// The BPF programs live in bpf/tracer.bpf.c. bpf2go compiles them and writes
// tracer_{x86,arm64}_bpfel.go and .o beside this file; both are committed so
// a build needs no clang. To regenerate (Debian: apt-get install -y
// --no-install-recommends clang libbpf-dev bpftool):
//
//	make generate            # or: go generate ./ebpf/...
//
// bpf/vmlinux.h is the kernel's BTF dumped as C; refresh it only to use a
// type or field it lacks (CO-RE relocates field offsets at load time):
//
//	bpftool btf dump file /sys/kernel/btf/vmlinux format c > ebpf/bpf/vmlinux.h

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type exec_event -type exit_event -type inode_key tracer bpf/tracer.bpf.c -- -I./bpf -O2 -g -Wall -Werror
