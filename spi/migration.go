package spi

// MigrationEndpoint says which side of a migration this member is.
type MigrationEndpoint uint8

const (
	// MigrationSource is the member that held the partition replica.
	MigrationSource MigrationEndpoint = iota + 1
	// MigrationDestination is the member that receives it.
	MigrationDestination
)

func (e MigrationEndpoint) String() string {
	switch e {
	case MigrationSource:
		return "source"
	case MigrationDestination:
		return "destination"
	}
	return "unknown"
}

// PartitionMigrationEvent describes one migration of a partition replica
// as seen by one of its two endpoints.
type PartitionMigrationEvent struct {
	// PartitionID is the partition that moves.
	PartitionID int
	// Endpoint is this member's side of the migration.
	Endpoint MigrationEndpoint
	// CurrentReplicaIndex is this member's replica index of the partition
	// before the migration (0: primary, -1: none).
	CurrentReplicaIndex int
	// NewReplicaIndex is this member's replica index after a commit.
	NewReplicaIndex int
	// Source and Destination are the member IDs of the two endpoints.
	Source, Destination string
}

// PartitionReplicationEvent asks a service for the data of one partition
// replica.
type PartitionReplicationEvent struct {
	// PartitionID is the partition whose data is wanted.
	PartitionID int
	// ReplicaIndex is the replica index the destination will hold.
	ReplicaIndex int
	// Destination is the member ID that will run the operation.
	Destination string
}

// MigrationAwareService is a service whose per-partition data moves with
// its partition when members join or leave.
//
// Every method runs on the executor goroutine of e.PartitionID, never
// concurrently with an operation of that partition, so it may touch the partition's container
// without a lock. None may block on remote calls.
//
// Contract: on each endpoint, every BeforeMigration is followed by exactly
// one CommitMigration or RollbackMigration with the same event, also when
// the service had nothing to send. While a partition migrates, operations
// on it are rejected with ErrPartitionMigrating (callers retry them), so
// the data a service hands over is a consistent snapshot.
//
// The same hooks serve the partition's backup replicas. A backup promoted
// to primary when its primary died gets BeforeMigration then
// CommitMigration with Endpoint MigrationDestination, CurrentReplicaIndex
// its backup index and NewReplicaIndex 0 (no data moves: it holds it
// already). A backup replica that needs a full copy (new, or behind its
// primary) gets ClearPartitionReplica, then runs the operation that
// PrepareReplicationOperation returned on the primary.
type MigrationAwareService interface {
	// PrepareReplicationOperation returns an operation that rebuilds the
	// partition's data on the destination, or nil when the service holds
	// nothing for it. It runs on a migration's source after
	// BeforeMigration (e.ReplicaIndex 0), and on a primary asked for a
	// full copy by one of its backup replicas (e.ReplicaIndex that
	// replica's index, no BeforeMigration). The operation is encoded at
	// once, on the same goroutine, sent, and run on the destination's
	// executor of the same partition (its OpContext.PartitionID is
	// e.PartitionID, its ReplicaIndex the index the destination holds).
	// It must be one of the service's OperationTypes.
	PrepareReplicationOperation(e PartitionReplicationEvent) Operation

	// BeforeMigration is called on both endpoints before any data moves.
	BeforeMigration(e PartitionMigrationEvent)

	// CommitMigration ends a migration that succeeded. On the source the
	// service drops the data it no longer replicates (see
	// NewReplicaIndex); on the destination the received data is now live.
	CommitMigration(e PartitionMigrationEvent)

	// RollbackMigration ends a migration that failed. On the destination
	// the service drops whatever it received; on the source it keeps its
	// data, which stays live.
	RollbackMigration(e PartitionMigrationEvent)

	// ClearPartitionReplica drops everything the service holds for the
	// partition: this member no longer holds any replica of it, or its
	// data is about to be replaced by a full copy (a backup replica that
	// resynchronises, a migration's destination clearing what an
	// unfinished earlier migration left).
	ClearPartitionReplica(partitionID int)
}
