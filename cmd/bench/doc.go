// Command bench is a load generator for the counter service that checks
// its own result: after the load it reads every counter and compares it
// with the increments that were acknowledged.
//
// Usage:
//
//	go run ./cmd/bench [flags]
//
// By default it starts 3 members in this process, on free ports of
// 127.0.0.1 over real TCP (multicast off, members 1.. join member 0), waits
// until the cluster is stable (every member sees the others, all hold the
// same partition table version, nothing migrates, every backup holds what
// its primary holds; 60 s at most), creates the proxies of all counters on
// every member, and then runs 64 callers for a 2 s warm-up and a 10 s
// measured period. Each caller loops: it picks a counter uniformly at
// random (its own PCG source) and increments it by one, with no deadline
// of its own: the members' invocation timeout (set to 10 s) bounds it, as
// it would for a service that leaves timeouts to the engine. It goes
// through the proxies of one local member (callers are spread
// round-robin over the members, so an increment runs locally or one hop
// away depending on the partition's owner).
//
// The target workload (3 members, 64 callers, 10,000 counters, one
// synchronous backup):
//
//	go run ./cmd/bench -members 3 -callers 64 -counters 10000 -sync-backups 1 -duration 10s
//
// One hot counter, every caller on the same partition:
//
//	go run ./cmd/bench -hot
//
// One caller, for the latency of a single increment without queueing:
//
//	go run ./cmd/bench -callers 1
//
// Machine-readable output, for scripts comparing runs:
//
//	go run ./cmd/bench -json
//
// The flags are:
//
//	-members N            members started in this process (default 3)
//	-join host:port       instead of -members: start one member that joins
//	                      the cluster of the member at host:port, and drive
//	                      the load through it
//	-callers C            concurrent callers (default 64)
//	-counters K           counters, named bench-0 .. bench-<K-1> (default 10000)
//	-hot                  one counter, bench-0, instead of K
//	-duration D           measured period (default 10s)
//	-warmup W             load before it, not measured (default 2s)
//	-sync-backups S       synchronous backups per increment (default 1)
//	-async-backups A      asynchronous backups per increment (default 0)
//	-partition-threads T  partition executors per member (default 0: the
//	                      member's share of GOMAXPROCS, at least 1; see below)
//	-json                 print one JSON object instead of the text report
//	-cpuprofile FILE      write a CPU profile of the load (warm-up included)
//	-trace FILE           write a Go execution trace of the load (warm-up
//	                      included; large: use a short -duration)
//
// Every member gets partitions.backup-count S+A and the counter properties
// backup-count=S and async-backup-count=A. The members started in this
// process share its cores, so by default each gets GOMAXPROCS/N partition
// executors (at least 1) rather than a member's own default of GOMAXPROCS:
// at 3 members on 2 cores, 1 each (with -join, GOMAXPROCS). Backups need members: with N
// members a partition has at most N-1 backups. With -join the local member
// binds the interface that reaches host:port (on a free port), uses the
// default failure detection and cluster name "dev", and the backup flags
// hold for the partitions it owns only: the other members keep their own
// configuration. Since the counters of such a cluster may hold values of
// earlier runs, the bench reads them before the load and checks the
// increase (do not run two benches on one cluster at once).
//
// While the load runs, a progress line goes to stderr every second: time
// since the start, phase, successful increments in the last second and the
// errors so far. The members log to stderr at warn.
//
// The report (stdout) gives, over the measured period: the throughput
// (successful increments per second; an increment counts in the period in
// which it completes), the latency percentiles p50, p99, p999 and the
// maximum of those increments (an increment's latency runs from the end of
// its caller's previous one: one clock read per increment), the errors,
// and the CPU time of the whole
// process (callers and members, user+sys from getrusage) per 1,000
// increments (with -join, the other members' CPU is not in it). Then the
// self-check: the load is stopped, every counter is
// read and compared with the number of successful increments of that
// counter, warm-up included:
//
//	self-check: lost=0 duplicated=0 indeterminate=0 OK
//
// lost is the sum over counters of the acknowledged increments missing
// from the value. An increment that failed (timeout, member gone) may or
// may not have been applied, so failures are reported as indeterminate and
// duplicated counts only the excess beyond them. The exit status is 1 when
// lost or duplicated is not 0 (or a counter cannot be read), or when the
// cluster could not be started; 2 for bad flags. -json prints all of it as
// one object: throughput_ops, p50_us, p99_us, p999_us, max_us, errors,
// cpu_s_per_1k, lost, duplicated, indeterminate, ok, and the run's
// parameters.
//
// Ctrl-C ends the load early; the calls in flight finish, the self-check
// runs on what was done, and the members shut down. The members always
// shut down gracefully at the end (each within 30 s), which hands their
// partitions over and takes a few seconds.
//
// The bench measures everything in one process: callers and all members
// share the CPUs. On a small machine the members' work and the callers'
// compete, so compare runs made on the same machine.
package main
