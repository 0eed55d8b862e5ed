// Package operation is a member's operation service: it takes operations
// to the members that must run them and runs them there. It holds the
// invocation path (invoke.go: routing, retries with back-off, timeouts
// on a coarse clock), the partition and generic executors (executor.go,
// service.go), the dispatch of what arrives and the send paths of
// requests, backups, answers and responses (link.go), backups
// (backup.go), the read gate that holds answers behind unacknowledged
// writes (readgate.go) and the exactly-once record (dedup.go). Frames
// and connections are internal/transport's; the state machine of one
// partition replica is operation/replica's; where partitions and members
// are is the node engine's, asked through Routing.
//
// # Who calls what
//
// The node engine makes one Service per member (New), registers each
// service's operation types (Register, before Start), starts the
// executors (Start), hands it the connections accepted on the member's
// port (HandleConn) and stops it (Shutdown). Services reach it as
// spi.OperationService; the engine also uses InvokeOnPartitionOf and
// InvokeOnceAt for its own steps, and the replica and migration methods
// (SetMigrating, ReplicaSynced, ResetReplica, AppendDedup...).
//
// It calls up through its Config: Routing, on any goroutine, often, so
// it must not block; OnReplicaGap as a partition's executor; Hook (tests'
// fault rules) on the goroutine that sends or receives. Below it, the
// transport calls the Service's Handler methods (Opened, Frame, Closed),
// and the Service sends through transport.Transport.
//
// # Goroutines
//
//   - Invoke and InvokeOnMember run their attempts on the caller's
//     goroutine, which sends the request and waits for the answer.
//   - Partition p runs on executor p % N (Config.PartitionThreads), a
//     goroutine with its own queue, one task at a time. A
//     spi.NonBlockingOperation may run in its place, under the executor's
//     lock, on the invoking caller's goroutine or a connection's reader,
//     when nothing is queued or running there (runInline).
//     InvokeOnMember's operations run on the generic executors
//     (Config.GenericThreads goroutines sharing one queue).
//   - Each connection's reader (the transport's) calls Frame: it decodes
//     requests and backups and queues them (or runs them in place), and
//     completes the calls whose responses, errors, backup acks and
//     forwarded answers it reads; an ack may finish a backed-up
//     operation and release held answers there.
//   - One clock goroutine ticks every sixteenth of the invocation
//     timeout (1 ms to 100 ms): invocation timeouts, the transport's Tick,
//     overdue backup acks.
//   - Backup re-sends, dials for backups and forwarded answers, and
//     delayed sync requests run on goroutines of their own, never on an
//     executor.
//
// Methods documented "call it on p's executor" (SetMigrating,
// SetReplicaVersion, BumpEpoch, MarkSyncing, ReplicaSynced, AbandonSync,
// ResetReplica, and the record's DropDedup, AppendDedup, ReadDedup) must
// run as partition p's executor: in an operation of p or a function
// queued with RunOnPartition. Shutdown closes the connections, stops the
// executors once the running operations return and fails every waiting
// call with spi.ErrShutdown.
package operation
