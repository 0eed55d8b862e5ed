package nodeengine

import (
	"fmt"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
)

// A snapshot is one partition replica as it travels: to a migration's
// destination (migPrepareOp, migApplyOp) and to a backup replica that
// syncs (replicaSyncOp, installSync). Its codec is here, once: the
// replica version (uvarint), the exactly-once record, then the
// replication operations of every migration-aware service.

// snapshots writes and installs snapshots of this member's partitions,
// on the partition's executor: the migration endpoints and replicas call
// it there.
type snapshots struct {
	engine   spi.NodeEngine // what the installed replication operations see
	ops      *operation.Service
	services []migrationAware
}

// append writes partition p's snapshot for replica index k to w
// (executor p).
func (s *snapshots) append(w *spi.Writer, p, k int, dest string) error {
	w.WriteUvarint(uint64(s.ops.ReplicaVersion(p)))
	s.ops.AppendDedup(w, p)
	return s.appendBundle(w, p, k, dest)
}

// snapshotVersion reads a snapshot's version and returns a reader at its
// exactly-once record.
func snapshotVersion(data []byte) (int64, *spi.Reader, error) {
	r := spi.NewReader(data)
	v := int64(r.ReadUvarint())
	if err := r.Err(); err != nil {
		return 0, nil, fmt.Errorf("%w: snapshot: %w", spi.ErrProtocol, err)
	}
	return v, r, nil
}

// install installs the rest of a snapshot read by snapshotVersion
// as partition p's replica index k (executor p): the exactly-once record,
// then the services' replication operations. The caller cleared the
// services' data and sets the version once it succeeded.
func (s *snapshots) install(r *spi.Reader, p int, caller string, k int) error {
	if err := s.ops.ReadDedup(r, p); err != nil {
		return err
	}
	return s.runBundle(p, r, caller, k)
}

// runBundle runs the replication operations in r on partition p's
// executor (the caller's goroutine).
func (s *snapshots) runBundle(p int, r *spi.Reader, caller string, replica int) error {
	for r.Remaining() > 0 {
		name, inst, rop, err := s.ops.ReadOperation(r)
		if err == nil {
			rctx := spi.OpContext{Engine: s.engine, Service: inst, PartitionID: p, Caller: caller,
				Executor: p % s.ops.PartitionThreads(), ReplicaIndex: replica}
			if err = rop.Run(&rctx); err != nil {
				err = fmt.Errorf("service %q: %T: %w", name, rop, err)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// appendBundle writes the replication operations of every migration-aware
// service for replica index k of partition p (executor p).
func (s *snapshots) appendBundle(w *spi.Writer, p, k int, dest string) error {
	for _, ma := range s.services {
		rop := ma.svc.PrepareReplicationOperation(spi.PartitionReplicationEvent{PartitionID: p, ReplicaIndex: k, Destination: dest})
		if rop == nil {
			continue
		}
		if err := s.ops.AppendOperation(w, ma.name, rop); err != nil {
			return fmt.Errorf("service %q: replication operation: %w", ma.name, err)
		}
	}
	return nil
}
