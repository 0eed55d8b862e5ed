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
package migration
