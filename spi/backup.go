package spi

// BackupAwareOperation is an operation whose effect is copied to the
// partition's backup replicas after it ran on the primary. The engine
// calls these methods as the primary's partition executor (on its
// goroutine, or in its place for a NonBlockingOperation), right after a
// successful Run (and Response): ShouldBackup first, then the two counts,
// then BackupOperation when the table holds a replica to send to. They
// must not block.
//
// The backups go to the partition's replicas 1..n from the partition
// table, in replica order: the first SyncBackupCount of them are
// synchronous (Invoke returns only after each applied its backup, or was
// declared dead), the next AsyncBackupCount asynchronous (not waited for).
// Both counts are clamped, silently, to the backups the table holds for the
// partition (at most members-1 and partitions.backup-count).
//
// Any other operation of the partition (a read), and a run of this one
// with no synchronous backup (ShouldBackup false, SyncBackupCount 0, or
// none in the table), is answered only once the synchronous backups of
// every backed-up run before it on the partition are acknowledged (or
// given up, as their own callers are told): no caller sees a write that
// can still be lost with the primary. A run with synchronous backups
// answers after its own acknowledgements, which cover the earlier runs:
// replicas apply backups in order.
type BackupAwareOperation interface {
	Operation
	// SyncBackupCount returns the number of synchronous backups.
	SyncBackupCount() int
	// AsyncBackupCount returns the number of asynchronous backups.
	AsyncBackupCount() int
	// ShouldBackup reports whether this run changed anything worth
	// copying (a read-only or no-op run returns false).
	ShouldBackup() bool
	// BackupOperation returns the operation the backup replicas run. It
	// must be one of the service's OperationTypes and should implement
	// BackupOperation. It is also called once when the service registers,
	// on a value from New that never ran, to learn its type: it must not
	// panic or return nil there, and a type that is not registered stops
	// Node.Start (see OperationType). Should it return an unregistered
	// type after Run all the same, the operation fails with an error (it
	// ran on the primary, with no backup) instead of being acknowledged.
	BackupOperation() Operation
}

// BackupOperation marks an operation that runs on a backup replica. It runs
// as the backup member's executor of the partition (on its goroutine, or,
// for a NonBlockingOperation, in its place on the reader goroutine of the
// connection the backup arrived on), in the order the primary stamped the
// backups (each backup exactly once), and its OpContext.ReplicaIndex is the
// backup's replica index (1..6). Its response and errors are not returned
// to the caller. An error is logged and refuses the backup (a primary
// waiting for its ack sends it again), and the replica takes a full copy
// from its primary rather than claim a write it lacks.
type BackupOperation interface {
	Operation
	// Backup is a marker; it does nothing.
	Backup()
}

// PartitionLostListener is implemented by a service that wants to know
// when a partition lost every replica in sync (its data is gone or may
// lack acknowledged writes; the partition starts empty on a new owner, or
// from a backup that was still syncing). PartitionLost is called on the
// master only, on a goroutine of the migration manager (its planning loop
// or one of its moves; two calls may overlap), and must not block.
type PartitionLostListener interface {
	PartitionLost(partitionID int)
}
