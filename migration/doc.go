// Package migration moves partitions between members when members join or
// leave. The master alone plans: Plan compares the current partition table
// with a balanced target (partition.Rebalance) and lists the moves; a
// Manager runs them a few at a time through the node engine (Engine), each
// move in the steps below, rolling back on any failure:
//
//  1. Prepare on the source: the partition is marked migrating (its
//     operations are refused with a retryable error), services get
//     BeforeMigration and hand over their data as replication operations.
//  2. Apply on the destination: BeforeMigration, then the replication
//     operations run on the destination's executor of that partition.
//  3. Commit on the destination.
//  4. Publish the table with the new owner; the source and the destination
//     must acknowledge it.
//  5. Commit on the source, which drops the data.
//
// A failure before step 3 rolls both sides back (the source keeps its
// data). A destination that dies before acknowledging step 4 makes the
// master publish the source as owner again and roll the source back. A
// source that dies after step 1 does not stop the move: its data is
// already on its way.
//
// Before each round and each move the Manager also repairs the table: a
// partition whose primary died gets its most advanced in-sync backup
// promoted, missing backups are chosen again (partition.RebalanceBackups),
// a backup replica that moves is named incoming beside the one it
// replaces and swapped in once it caught up, and a partition with no
// in-sync replica left is reported lost (Engine.Lost). No table names a
// member for two replicas of one partition (partition.Table.Validate):
// a member keeps the backup slot it holds.
//
// # Who calls what, on which goroutine
//
// The node engine makes one Manager per member and runs Run on a goroutine
// of its own; Run plans only while Engine.IsMaster, a round at a time,
// when Trigger wakes it (on membership changes; Trigger may be called from
// any goroutine and never blocks) and every 250 ms. A round runs up to
// Config.Parallel moves at once, each on a goroutine of its own, and the
// Manager calls the Engine from all of them. Every change of the master's
// table, from the round or from a move's repair, is made on a copy under
// the Manager's lock and installed with Engine.Install. The Engine's
// steps (Prepare, Apply, Finish, Push, ReplicaStatus, CaughtUp) wait for
// the member asked, where the migration steps and CaughtUp run on its
// executor of the partition; each is bounded by Config.Timeout (the state
// questions by shorter limits). Lost is called outside the lock, from
// whichever goroutine repaired. Plan is a pure function; Idle, InFlight
// and Stats may be called from any goroutine.
package migration
