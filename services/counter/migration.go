package counter

import (
	"fmt"
	"slices"

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
// Encoding: the number of counters as an unsigned varint, then for each
// counter, in ascending name order, its name (string) and value (varint).
// The order makes the encoding deterministic.
type CounterMigrationOperation struct {
	// Values are the counters of the partition by name.
	Values map[string]int64
}

// Run implements spi.Operation. It runs on the destination, on the
// partition's executor goroutine, and sets each counter of Values in the
// partition's container, replacing the value held for that name. It copies
// Values into the container rather than keep the map: the container stays
// the partition's own.
func (op *CounterMigrationOperation) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*Service)
	c := &s.containers[ctx.PartitionID]
	if c.values == nil {
		c.values = make(map[string]int64, len(op.Values))
	}
	for name, v := range op.Values {
		c.values[name] = v
	}
	return nil
}

// WriteData implements spi.Operation.
func (op *CounterMigrationOperation) WriteData(w *spi.Writer) {
	names := make([]string, 0, len(op.Values))
	for name := range op.Values {
		names = append(names, name)
	}
	slices.Sort(names)
	w.WriteUvarint(uint64(len(names)))
	for _, name := range names {
		w.WriteString(name)
		w.WriteVarint(op.Values[name])
	}
}

// minPairSize is the smallest encoding of one counter: an empty name (one
// length byte) and a one-byte varint.
const minPairSize = 2

// ReadData implements spi.Operation. It rejects a count that the bytes
// left cannot hold (so an untrusted count never sizes an allocation) and a
// name that appears twice.
func (op *CounterMigrationOperation) ReadData(r *spi.Reader) error {
	n := r.ReadUvarint()
	if err := r.Err(); err != nil {
		return err
	}
	if left := r.Remaining(); n > uint64(left/minPairSize) {
		return fmt.Errorf("%w: counter migration lists %d counters in %d bytes",
			spi.ErrProtocol, n, left)
	}
	op.Values = make(map[string]int64, n)
	for range n {
		name, v := r.ReadString(), r.ReadVarint()
		if r.Err() != nil {
			break
		}
		if _, dup := op.Values[name]; dup {
			return fmt.Errorf("%w: counter migration lists counter %q twice", spi.ErrProtocol, name)
		}
		op.Values[name] = v
	}
	return r.Err()
}

// PrepareReplicationOperation implements spi.MigrationAwareService. It runs
// on the source (or the primary, for a backup replica's full copy), on the
// partition's executor goroutine, and returns nil when the partition holds
// no counter, else a CounterMigrationOperation with a copy of its
// counters, so that the operation never shares the container, which stays
// live here until the commit.
func (s *Service) PrepareReplicationOperation(e spi.PartitionReplicationEvent) spi.Operation {
	values := s.containers[e.PartitionID].values
	if len(values) == 0 {
		return nil
	}
	return &CounterMigrationOperation{Values: maps(values)}
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
// nothing to do.
func (s *Service) CommitMigration(e spi.PartitionMigrationEvent) {
	c := &s.containers[e.PartitionID]
	n := len(c.values)
	drop := e.Endpoint == spi.MigrationSource && e.NewReplicaIndex == -1
	if drop {
		clear(c.values)
	}
	s.log.Debug("migration committed", "partition", e.PartitionID, "endpoint", e.Endpoint.String(),
		"counters", n, "dropped", drop)
}

// RollbackMigration implements spi.MigrationAwareService. It runs on the
// partition's executor goroutine. On the destination, when this member held
// no replica of the partition before (e.CurrentReplicaIndex == -1), it drops
// the partition's counters, which it received from the failed migration. On
// the source nothing changes: its counters stay live.
func (s *Service) RollbackMigration(e spi.PartitionMigrationEvent) {
	c := &s.containers[e.PartitionID]
	n := len(c.values)
	drop := e.Endpoint == spi.MigrationDestination && e.CurrentReplicaIndex == -1
	if drop {
		clear(c.values)
	}
	s.log.Debug("migration rolled back", "partition", e.PartitionID, "endpoint", e.Endpoint.String(),
		"counters", n, "dropped", drop)
}

// ClearPartitionReplica implements spi.MigrationAwareService. It runs on
// the partition's executor goroutine and drops the partition's counters.
func (s *Service) ClearPartitionReplica(partitionID int) {
	clear(s.containers[partitionID].values)
}
