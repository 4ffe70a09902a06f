// Package procfs owns sluice's reading of the proc file system: the
// parsers of /proc/PID/stat (state, parent, CPU times, start time),
// status (name, uids, gids, supplementary groups, CapEff), cmdline, comm,
// environ, io (rchar, wchar) and cgroup (v1 and v2 lines), the exe and
// cwd links, and a snapshot of every process's parent and CPU time from
// which descendants and a tree's CPU are found. Everything is read below
// one injectable root (FS.Root, "/proc" when empty) so tests run on
// fixture trees.
//
// It is the standard library only: the shim's dependency budget and the
// agent's start-up cost must not grow with it. Acting on processes
// (pidfds, signals) is not its business; the agent does that.
//
// A file that does not exist (the process exited) yields the error of
// the os package, so errors.Is(err, fs.ErrNotExist) tells it apart, and
// its text names the path as os.Open does.
package procfs
