package nodeengine

import (
	"fmt"

	"github.com/partita-go/partita/spi"
)

// A snapshot is one partition replica as it travels: to a migration's
// destination (migPrepareOp, migApplyOp) and to a backup replica that
// syncs (replicaSyncOp, installSync). Its codec is here, once: the
// replica version (uvarint), the exactly-once record, then the
// replication operations of every migration-aware service.

// appendSnapshot writes partition p's snapshot for replica index k to w
// (executor p).
func (n *Node) appendSnapshot(w *spi.Writer, p, k int, dest string) error {
	w.WriteUvarint(uint64(n.ops.ReplicaVersion(p)))
	n.ops.AppendDedup(w, p)
	return n.appendBundle(w, p, k, dest)
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

// installSnapshot installs the rest of a snapshot read by snapshotVersion
// as partition p's replica index k (executor p): the exactly-once record,
// then the services' replication operations. The caller cleared the
// services' data and sets the version once it succeeded.
func (n *Node) installSnapshot(r *spi.Reader, p int, caller string, k int) error {
	if err := n.ops.ReadDedup(r, p); err != nil {
		return err
	}
	return n.runBundle(p, r, caller, k)
}

// runBundle runs the replication operations in r on partition p's
// executor (the caller's goroutine).
func (n *Node) runBundle(p int, r *spi.Reader, caller string, replica int) error {
	for r.Remaining() > 0 {
		name, inst, rop, err := n.ops.ReadOperation(r)
		if err == nil {
			rctx := spi.OpContext{Engine: n, Service: inst, PartitionID: p, Caller: caller,
				Executor: p % n.ops.PartitionThreads(), ReplicaIndex: replica}
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
func (n *Node) appendBundle(w *spi.Writer, p, k int, dest string) error {
	for _, ma := range n.migrationAware {
		rop := ma.svc.PrepareReplicationOperation(spi.PartitionReplicationEvent{PartitionID: p, ReplicaIndex: k, Destination: dest})
		if rop == nil {
			continue
		}
		if err := n.ops.AppendOperation(w, ma.name, rop); err != nil {
			return fmt.Errorf("service %q: replication operation: %w", ma.name, err)
		}
	}
	return nil
}
