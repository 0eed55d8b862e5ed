package counter

import (
	"github.com/partita-go/partita/spi"
)

// The counter service moves its counters with their partition, as the
// CounterService of Hazelcast's guide does with its CounterMigrationOperation.
// A member holds a partition's counters while it holds a replica of it,
// primary or backup, in the same container; a backup replica that takes a
// full copy from its primary gets it through the same
// PrepareReplicationOperation and CounterMigrationOperation.
var _ spi.MigrationAwareService = (*Service)(nil)

// CounterMigrationOperation carries the counters of one partition from the
// source of a migration to its destination (or from the primary to a
// backup replica that takes a full copy), where Run installs them in the
// container of the partition it runs on.
//
// Encoding: the format byte (2), then the counters' states as state.go
// describes. Format 1 (before issue 20: values alone, no format byte) is
// not read: members of builds on either side of that change cannot share
// a cluster's counters.
type CounterMigrationOperation struct {
	// Counters are the states of the partition's counters by name.
	Counters map[string]State
}

// Run implements spi.Operation. It runs on the destination, on the
// partition's executor goroutine, and sets each counter of Counters in
// the partition's container, replacing the one held for that name. It
// copies the states into the container rather than keep them: the
// container stays the partition's own. The replica's data is replaced, so
// its origin goes (state.go).
func (op *CounterMigrationOperation) Run(ctx *spi.OpContext) error {
	c := &ctx.Service.(*Service).containers[ctx.PartitionID]
	c.set(op.Counters)
	c.origin = 0
	return nil
}

// WriteData implements spi.Operation.
func (op *CounterMigrationOperation) WriteData(w *spi.Writer) {
	w.WriteUint8(stateFormat)
	writeStates(w, op.Counters)
}

// ReadData implements spi.Operation. It rejects another format, a count
// that the bytes left cannot hold (so an untrusted count never sizes an
// allocation), a name that appears twice and entries out of order.
func (op *CounterMigrationOperation) ReadData(r *spi.Reader) (err error) {
	const what = "counter migration"
	if err := readFormat(r, what, stateFormat); err != nil {
		return err
	}
	op.Counters, err = readStates(r, what)
	return err
}

// PrepareReplicationOperation implements spi.MigrationAwareService. It runs
// on the source (or the primary, for a backup replica's full copy), on the
// partition's executor goroutine, and returns nil when the partition holds
// no counter, else a CounterMigrationOperation with a copy of its
// counters, so that the operation never shares the container, which stays
// live here until the commit.
func (s *Service) PrepareReplicationOperation(e spi.PartitionReplicationEvent) spi.Operation {
	c := &s.containers[e.PartitionID]
	if len(c.counters) == 0 {
		return nil
	}
	return &CounterMigrationOperation{Counters: c.states()}
}

// BeforeMigration implements spi.MigrationAwareService. It runs on both
// endpoints, on the partition's executor goroutine, and does nothing: the
// engine rejects the partition's operations while it migrates, so the
// counters cannot change under the copy PrepareReplicationOperation takes,
// and the counters keep no other state (no lock, no pending work) that would
// have to be frozen or flushed first.
func (s *Service) BeforeMigration(e spi.PartitionMigrationEvent) {}

// CommitMigration implements spi.MigrationAwareService. It runs on the
// partition's executor goroutine. On the source, when this member holds no
// replica of the partition any more (e.NewReplicaIndex == -1), it drops the
// partition's counters, which now live on the destination. On the
// destination the counters received are already in place, so there is
// nothing to do. On both, this member's replica changed hands or index, so
// the origin it counted increments under as primary goes (state.go).
func (s *Service) CommitMigration(e spi.PartitionMigrationEvent) {
	c := &s.containers[e.PartitionID]
	n := len(c.counters)
	drop := e.Endpoint == spi.MigrationSource && e.NewReplicaIndex == -1
	if drop {
		clear(c.counters)
	}
	c.origin = 0
	s.log.Debug("migration committed", "partition", e.PartitionID, "endpoint", e.Endpoint.String(),
		"counters", n, "dropped", drop)
}

// RollbackMigration implements spi.MigrationAwareService. It runs on the
// partition's executor goroutine. On the destination, when this member held
// no replica of the partition before (e.CurrentReplicaIndex == -1), it drops
// the partition's counters, which it received from the failed migration. On
// the source nothing changes: its counters stay live. The origin goes on
// both, as on a commit.
func (s *Service) RollbackMigration(e spi.PartitionMigrationEvent) {
	c := &s.containers[e.PartitionID]
	n := len(c.counters)
	drop := e.Endpoint == spi.MigrationDestination && e.CurrentReplicaIndex == -1
	if drop {
		clear(c.counters)
	}
	c.origin = 0
	s.log.Debug("migration rolled back", "partition", e.PartitionID, "endpoint", e.Endpoint.String(),
		"counters", n, "dropped", drop)
}

// ClearPartitionReplica implements spi.MigrationAwareService. It runs on
// the partition's executor goroutine and drops the partition's counters
// and origin.
func (s *Service) ClearPartitionReplica(partitionID int) {
	s.containers[partitionID].clear()
}
