// Package adaptive owns adaptive limiting: the AIMD [Controller] that
// moves the limits of adaptive rules, the [Watcher]s that turn cgroup
// statistics into pressure verdicts, and the [Sensor] that decides what
// is watched, reads it once per sample and turns the kernel's memory
// notifications into immediate samples.
//
// It also owns the host budget's control law: the [BudgetController],
// which derives the pack class's starting point from the host's CPUs and
// memory and adapts it to memory pressure, CPU oversubscription and
// goodput (docs/host-budget.md; the simulation test in
// budget_sim_test.go states its convergence time and band).
//
// It consumes package cgroup (statistics readers, the kernel event
// listener, the agent's own cgroup) and moves limits of package
// agent/limiter through the small [Limits] interface, which the agent
// implements; it never imports the agent.
//
// # Words
//
//   - sample: one reading of the watched cgroup ([cgroup.Stats]), taken
//     every [adaptive] sample_interval, or at once on a kick.
//   - watcher: one signal's threshold over successive samples (memory,
//     oom, cpu_throttle, psi_memory, psi_cpu, and the saturation gate
//     increase_gate_psi_cpu); its verdict is a [Verdict]. "Watcher" means
//     this and nothing else here; it is the `watcher` metric label.
//   - pressure: a verdict over its threshold, handed to the controller
//     ([Pressure]); saturation (HoldOnly) only holds increases back.
//   - kick: a kernel notification (v1 OOM eventfd, vmpressure, v2
//     memory.events) that asks for a sample now.
//   - backoff / increase: the controller's multiplicative decrease and
//     additive increase; [Controller] documents the law and its constants.
//
// # What is watched
//
// sluice's parent cgroup with its buckets' OOM kills added (a v1 parent
// does not count its children's); without sluice cgroups, the agent's own
// memory cgroup when it has a limit (it stands for the Git server's when
// sluiced runs beside it); else the host. The Sensor logs which, once.
//
// # Tests
//
// The controller is tested on a simulated host (controller_test.go,
// sim_test.go): a fake stats sequence through a Sensor into a running
// Controller in a testing/synctest bubble, so time is exact and no test
// waits for real time.
package adaptive
