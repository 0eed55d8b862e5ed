package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// Backups implements operation.Routing.
func (n *Node) Backups(p int, dst []operation.Replica) []operation.Replica {
	t := n.table.Load()
	if t == nil || p >= len(t.Backups) {
		return dst
	}
	for i, id := range t.Backups[p] {
		if id != "" {
			dst = append(dst, operation.Replica{ID: id, Address: t.Members[id], Index: i + 1})
		}
	}
	for i, id := range t.IncomingOf(p) {
		if id != "" {
			dst = append(dst, operation.Replica{ID: id, Address: t.Members[id], Index: i + 1, Incoming: true})
		}
	}
	return dst
}

// ReplicaIndex implements operation.Routing.
func (n *Node) ReplicaIndex(p int) int { return n.table.Load().ReplicaIndex(p, n.id) }

// replicaChanges runs, after a new table is installed, what this member's
// change of role requires for each partition: a promoted backup runs the
// promotion hooks, a member that lost every replica of a partition drops
// its data, and a new backup asks its primary for a full copy. The work
// runs on each partition's executor, where the migration state lives.
func (n *Node) replicaChanges(prev, t *partition.Table) {
	for p := range t.Owners {
		was, now := prev.ReplicaIndex(p, n.id), t.ReplicaIndex(p, n.id)
		if was == now {
			continue
		}
		switch {
		case now == 0:
			// A migration's destination that committed waited for this
			// table; otherwise a backup became primary: a promotion.
			n.ops.RunOnPartition(p, func() {
				if st := n.migs[p]; st != nil {
					if st.committed {
						n.setMig(p, nil)
					} else {
						n.ops.SetMigrating(p, true)
					}
					return
				}
				if was > 0 {
					n.promote(p, was, prev.Owner(p))
				}
			})
		case now < 0 && was >= 0:
			n.ops.RunOnPartition(p, func() { n.dropReplica(p) })
		case now > 0 && was < 0:
			n.ops.RunOnPartition(p, func() {
				if n.migs[p] == nil && n.table.Load().ReplicaIndex(p, n.id) > 0 {
					n.ops.ResetReplica(p)
					n.ops.MarkSyncing(p) // not a candidate for promotion until synced
					n.requestSync(p)
				}
			})
		case now > 0 && was == 0:
			// A primary demoted to backup. After a migration's swap its
			// data is current; otherwise (a table of another master won)
			// its history may differ from the primary's: start over.
			n.ops.RunOnPartition(p, func() {
				if n.migs[p] == nil && n.table.Load().ReplicaIndex(p, n.id) > 0 {
					for _, ma := range n.migrationAware {
						ma.svc.ClearPartitionReplica(p)
					}
					n.ops.ResetReplica(p)
					n.ops.MarkSyncing(p)
					n.requestSync(p)
				}
			})
		}
	}
}

// promote makes this member, backup k of partition p, its primary
// (executor p).
func (n *Node) promote(p, k int, oldOwner string) {
	ev := spi.PartitionMigrationEvent{PartitionID: p, Endpoint: spi.MigrationDestination,
		CurrentReplicaIndex: k, NewReplicaIndex: 0, Source: oldOwner, Destination: n.id}
	for _, ma := range n.migrationAware {
		ma.svc.BeforeMigration(ev)
	}
	for _, ma := range n.migrationAware {
		ma.svc.CommitMigration(ev)
	}
	n.ops.BumpEpoch(p)
	n.ops.SetMigrating(p, false)
	n.log.Debug("backup promoted to primary", "partition", p, "replica", k)
}

// dropReplica clears partition p's data on a member that holds no replica
// of it any more, unless a migration still needs it (executor p).
func (n *Node) dropReplica(p int) {
	if n.migs[p] != nil || n.table.Load().ReplicaIndex(p, n.id) >= 0 {
		return
	}
	for _, ma := range n.migrationAware {
		ma.svc.ClearPartitionReplica(p)
	}
	n.ops.ResetReplica(p)
}

// backOff waits *pause before a retry and doubles it, up to a second; it
// reports false, at once, when the node stops.
func (n *Node) backOff(pause *time.Duration) bool {
	t := time.NewTimer(*pause)
	defer t.Stop()
	select {
	case <-n.stop:
		return false
	case <-t.C:
	}
	*pause = min(2**pause, time.Second)
	return true
}

// requestSync asks partition p's primary for a full copy of its replica,
// off the executor; the copy is installed on p's executor. Called on
// executor p (operation.Config.OnReplicaGap).
//
// Every way it ends leaves the replica in a clean state: installed
// (installSync), given up because this member is no longer a backup of p
// (syncGaveUp: the waiting backups are failed, retryably), or abandoned
// because the member stops (the waiting backups fail with
// spi.ErrShutdown).
func (n *Node) requestSync(p int) {
	n.spawn(func() {
		pause := 20 * time.Millisecond
		stopped := func() {
			n.ops.RunOnPartition(p, func() { n.ops.AbandonSync(p, spi.ErrShutdown) })
		}
		for attempt := 0; ; attempt++ {
			t := n.table.Load()
			k := t.ReplicaIndex(p, n.id)
			if n.ctx.Err() != nil {
				stopped()
				return
			}
			if k <= 0 {
				n.ops.RunOnPartition(p, func() { n.syncGaveUp(p) })
				return
			}
			// Short attempts: the owner may be dead and about to be
			// replaced in the table, so look it up again each time.
			ctx, cancel := n.stopContext(min(2*time.Second, n.cfg.Migration.StepTimeout))
			v, err := n.ops.InvokeOnPartitionOf(ctx, engineService, &replicaSyncOp{replica: k}, p, t.Owner(p))
			cancel()
			if err == nil {
				data, _ := v.([]byte)
				n.ops.RunOnPartition(p, func() { n.installSync(p, data) })
				return
			}
			n.log.Debug("replica sync failed; retrying", "partition", p, "attempt", attempt, "error", err)
			if !n.backOff(&pause) {
				stopped()
				return
			}
		}
	})
}

// syncGaveUp ends a full sync of partition p's replica that installed
// nothing (executor p). operation.Service.ReplicaSynced(p, -1) asks for
// another copy, after a back-off, while this member is a backup of p, and
// otherwise fails the backups waiting for it; a member left with no
// replica of p (and no migration of it) drops its data, as dropReplica.
func (n *Node) syncGaveUp(p int) {
	n.ops.ReplicaSynced(p, -1)
	n.dropReplica(p)
}

// installSync replaces partition p's backup replica with the primary's copy
// (executor p). A copy it cannot install ends in syncGaveUp.
func (n *Node) installSync(p int, data []byte) {
	if n.migs[p] != nil || n.table.Load().ReplicaIndex(p, n.id) <= 0 {
		n.syncGaveUp(p)
		return
	}
	version, r, err := snapshotVersion(data)
	if err != nil {
		n.log.Error("bad replica sync data", "partition", p, "error", err)
		n.syncGaveUp(p)
		return
	}
	if version <= n.ops.ReplicaVersion(p) {
		n.ops.ReplicaSynced(p, version) // already there
		return
	}
	for _, ma := range n.migrationAware {
		ma.svc.ClearPartitionReplica(p)
	}
	if err := n.installSnapshot(r, p, n.address, n.table.Load().ReplicaIndex(p, n.id)); err != nil {
		n.log.Error("replica sync failed", "partition", p, "error", err)
		for _, ma := range n.migrationAware {
			ma.svc.ClearPartitionReplica(p)
		}
		n.ops.ResetReplica(p)
		n.syncGaveUp(p)
		return
	}
	n.ops.ReplicaSynced(p, version)
	n.log.Debug("backup replica synced", "partition", p, "version", version)
}

// replicaSyncOp runs on the primary's executor of a partition and returns
// its replica version and data for backup replica index `replica`.
type replicaSyncOp struct {
	replica int
	data    []byte
}

func (op *replicaSyncOp) OwnerCheckExempt()   {}
func (op *replicaSyncOp) MessageKind() string { return "replica.sync" }
func (op *replicaSyncOp) Response() any       { return op.data }
func (op *replicaSyncOp) WriteData(w *spi.Writer) {
	w.WriteUvarint(uint64(op.replica))
}
func (op *replicaSyncOp) ReadData(r *spi.Reader) error {
	op.replica = int(r.ReadUvarint())
	return r.Err()
}
func (op *replicaSyncOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	p := ctx.PartitionID
	if n.table.Load().Owner(p) != n.id {
		return fmt.Errorf("%w: partition %d: not the primary", spi.ErrWrongTarget, p)
	}
	// A migration's source still holds the partition's data, which
	// operations no longer change: it serves copies. It must, because its
	// prepare waits for the acks of the writes it carries (WaitsForWrites),
	// and a backup replica that holds such a write behind a gap, or an
	// incoming one, acks it only once it has its copy.
	st := n.migs[p]
	if source := st != nil && st.endpoint == spi.MigrationSource; !source && (st != nil || n.ops.IsMigrating(p)) {
		return fmt.Errorf("%w: partition %d", spi.ErrPartitionMigrating, p)
	}
	w := spi.NewWriter(nil)
	if err := n.appendSnapshot(w, p, op.replica, ctx.Caller); err != nil {
		return err
	}
	op.data = w.Bytes()
	return nil
}

// caughtUpOp asks a primary, on its executor of the partition, whether a
// replica at version holds everything it backed up so far: its table
// must list member as a replica that gets its backups (so every later
// write goes there too), and its own version must not be past version in
// the same epoch. Run on the executor, it comes after every operation
// that read an older table.
type caughtUpOp struct {
	member  string
	version int64
	ok      bool
}

func (op *caughtUpOp) OwnerCheckExempt()   {}
func (op *caughtUpOp) MessageKind() string { return "replica.caughtup" }
func (op *caughtUpOp) Response() any       { return op.ok }
func (op *caughtUpOp) WriteData(w *spi.Writer) {
	w.WriteString(op.member)
	w.WriteVarint(op.version)
}
func (op *caughtUpOp) ReadData(r *spi.Reader) error {
	op.member, op.version = r.ReadString(), r.ReadVarint()
	return r.Err()
}
func (op *caughtUpOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	p := ctx.PartitionID
	t := n.table.Load()
	mine := n.ops.ReplicaVersion(p)
	op.ok = t.Owner(p) == n.id && n.migs[p] == nil && !n.ops.IsMigrating(p) &&
		t.ReplicaIndex(p, op.member) > 0 && mine <= op.version && mine>>32 == op.version>>32
	return nil
}

// replicaCheckOp carries a primary's replica versions to one backup member
// (anti-entropy); the backup asks for a sync where it is behind.
type replicaCheckOp struct {
	partitions []int
	versions   []int64
}

func (op *replicaCheckOp) MessageKind() string { return "replica.check" }
func (op *replicaCheckOp) WriteData(w *spi.Writer) {
	w.WriteUvarint(uint64(len(op.partitions)))
	for i, p := range op.partitions {
		w.WriteUvarint(uint64(p))
		w.WriteUvarint(uint64(op.versions[i]))
	}
}
func (op *replicaCheckOp) ReadData(r *spi.Reader) error {
	k := r.ReadUvarint()
	if r.Err() == nil && k > uint64(r.Remaining()) {
		return fmt.Errorf("%w: replica check of %d partitions in %d bytes", spi.ErrProtocol, k, r.Remaining())
	}
	for i := uint64(0); i < k && r.Err() == nil; i++ {
		op.partitions = append(op.partitions, int(r.ReadUvarint()))
		op.versions = append(op.versions, int64(r.ReadUvarint()))
	}
	return r.Err()
}
func (op *replicaCheckOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	for i, p := range op.partitions {
		if p < 0 || p >= n.count {
			return fmt.Errorf("%w: partition %d", spi.ErrProtocol, p)
		}
		v := op.versions[i]
		n.ops.RunOnPartition(p, func() {
			if !n.behind(p, v) {
				return
			}
			// The primary read its version v while backups stamped up to v
			// may still have been on their way: look again a little later,
			// and sync only if this replica is still behind (or of another
			// epoch, another history).
			n.spawn(func() {
				t := time.NewTimer(antiEntropyGrace)
				defer t.Stop()
				select {
				case <-n.stop:
					return
				case <-t.C:
				}
				n.ops.RunOnPartition(p, func() {
					if n.behind(p, v) {
						n.log.Info("anti-entropy: backup replica differs from its primary; syncing", "partition", p,
							"have", n.ops.ReplicaVersion(p), "primary", v)
						n.ops.MarkSyncing(p)
						n.requestSync(p)
					}
				})
			})
		})
	}
	return nil
}

// antiEntropyGrace is how long a backup that looks behind its primary's
// reported version waits for the backups in flight before it syncs.
const antiEntropyGrace = 100 * time.Millisecond

// behind reports whether this backup replica of p lacks what its primary
// had at version v (executor p).
func (n *Node) behind(p int, v int64) bool {
	mine := n.ops.ReplicaVersion(p)
	return n.migs[p] == nil && n.ReplicaIndex(p) > 0 && !n.ops.ReplicaPending(p) && (mine < v || mine>>32 != v>>32)
}

// antiEntropy sends, every interval, this member's primary replica versions
// to its backups.
func (n *Node) antiEntropy(interval time.Duration) {
	defer n.wg.Done()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-tick.C:
		}
		n.checkReplicas()
	}
}

func (n *Node) checkReplicas() {
	t := n.table.Load()
	if t == nil {
		return
	}
	ops := map[string]*replicaCheckOp{}
	for p, o := range t.Owners {
		if o != n.id || n.ops.IsMigrating(p) {
			continue
		}
		for _, b := range slices.Concat(t.BackupsOf(p), t.IncomingOf(p)) {
			if b == "" {
				continue
			}
			op := ops[b]
			if op == nil {
				op = &replicaCheckOp{}
				ops[b] = op
			}
			op.partitions = append(op.partitions, p)
			op.versions = append(op.versions, n.ops.ReplicaVersion(p))
		}
	}
	for id, op := range ops {
		ctx, cancel := n.stopContext(5 * time.Second)
		_, err := n.ops.InvokeOnMember(ctx, engineService, op, id)
		cancel()
		if err != nil && !errors.Is(err, spi.ErrNoSuchMember) {
			n.log.Debug("anti-entropy check failed", "member", id, "error", err)
		}
	}
}

// replicaStatusOp returns a member's replica versions and whether it is
// migrating or syncing anything, for IsClusterSafe.
type replicaStatusOp struct{ status []byte }

func (op *replicaStatusOp) MessageKind() string          { return "replica.status" }
func (op *replicaStatusOp) Response() any                { return op.status }
func (op *replicaStatusOp) WriteData(*spi.Writer)        {}
func (op *replicaStatusOp) ReadData(r *spi.Reader) error { return r.Err() }
func (op *replicaStatusOp) Run(ctx *spi.OpContext) error {
	op.status = ctx.Service.(*Node).replicaStatus()
	return nil
}

func (n *Node) replicaStatus() []byte {
	w := spi.NewWriter(nil)
	busy := n.migActive.Load() > 0 || n.ops.SyncsPending() > 0 || (n.IsMaster() && !n.mgr.Idle())
	w.WriteBool(busy)
	var version int64
	if t := n.table.Load(); t != nil {
		version = t.Version
	}
	w.WriteVarint(version)
	for p := 0; p < n.count; p++ {
		w.WriteUvarint(uint64(n.ops.ReplicaVersion(p)))
		w.WriteBool(n.ops.IsSyncing(p))
	}
	return w.Bytes()
}

// replicaStatusOf returns a member's replica versions and syncing flags.
func (n *Node) replicaStatusOf(ctx context.Context, id string) (busy bool, tableVersion int64, versions []int64, syncing []bool, err error) {
	return n.replicaStatusAt(ctx, id, "")
}

// replicaStatusAt is replicaStatusOf for a member reached at address once,
// when address is not empty: a member memberlist declared dead, whose
// address the table holds.
func (n *Node) replicaStatusAt(ctx context.Context, id, address string) (busy bool, tableVersion int64, versions []int64, syncing []bool, err error) {
	var b []byte
	if id == n.id {
		b = n.replicaStatus()
	} else {
		var v any
		var err error
		if address != "" {
			v, err = n.ops.InvokeOnceAt(ctx, engineService, &replicaStatusOp{}, id, address)
		} else {
			v, err = n.ops.InvokeOnMember(ctx, engineService, &replicaStatusOp{}, id)
		}
		if err != nil {
			return false, 0, nil, nil, err
		}
		b, _ = v.([]byte)
	}
	r := spi.NewReader(b)
	busy, tableVersion = r.ReadBool(), r.ReadVarint()
	versions, syncing = make([]int64, n.count), make([]bool, n.count)
	for p := range versions {
		versions[p], syncing[p] = int64(r.ReadUvarint()), r.ReadBool()
	}
	if err := r.Err(); err != nil {
		return false, 0, nil, nil, fmt.Errorf("replica status of %s: %w", id, err)
	}
	return busy, tableVersion, versions, syncing, nil
}

// WaitClusterSafe polls IsClusterSafe until it reports true or ctx ends.
func (n *Node) WaitClusterSafe(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if safe, err := n.IsClusterSafe(ctx); err == nil && safe {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not safe: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// IsClusterSafe asks every member for its replica state and reports
// whether all hold the same table, none migrates or syncs, and every
// backup replica holds its primary's writes. Under load backups are in
// flight, so a backup behind its primary in a first round of questions is
// asked again: it is safe when it then holds at least what its primary
// held in the first round, in the same epoch (a write missing on a backup
// for good keeps it behind, so it is never safe).
func (n *Node) IsClusterSafe(ctx context.Context) (bool, error) {
	t := n.table.Load()
	if t == nil {
		return false, nil
	}
	first, ok, err := n.replicaVersions(ctx, t.Version)
	if !ok || err != nil {
		return false, err
	}
	behind := func(want, have map[string][]int64, p int, o, b string) bool {
		if want[o] == nil || have[b] == nil {
			return true
		}
		w, h := want[o][p], have[b][p]
		return h < w || h>>32 != w>>32
	}
	lagging := false
	for p, o := range t.Owners {
		for _, b := range t.BackupsOf(p) {
			if b == "" {
				continue
			}
			if first[o] == nil || first[b] == nil {
				return false, nil // a replica on a member that is gone
			}
			if first[o][p] != first[b][p] {
				lagging = true
			}
		}
	}
	if !lagging {
		return true, nil
	}
	second, ok, err := n.replicaVersions(ctx, t.Version)
	if !ok || err != nil {
		return false, err
	}
	for p, o := range t.Owners {
		for _, b := range t.BackupsOf(p) {
			if b != "" && behind(first, second, p, o, b) {
				return false, nil
			}
		}
	}
	return true, nil
}

// replicaVersions asks every member for its replica versions; ok is false
// when one holds another table version, migrates or syncs.
func (n *Node) replicaVersions(ctx context.Context, tableVersion int64) (map[string][]int64, bool, error) {
	versions := map[string][]int64{}
	for _, m := range n.Members() {
		busy, tv, vs, syncing, err := n.replicaStatusOf(ctx, m.ID)
		if err != nil {
			return nil, false, err
		}
		if busy || tv != tableVersion || slices.Contains(syncing, true) {
			return nil, false, nil
		}
		versions[m.ID] = vs
	}
	return versions, true, nil
}
