package nodeengine

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
	"github.com/prometheus/client_golang/prometheus"
)

// replicas keeps this member's partition replicas in line with the table:
// it runs what a change of role requires (promotion, dropping the data,
// a full sync from the primary), pulls and installs those syncs, serves
// them as a primary and runs anti-entropy. Its per-partition work runs on
// the partition's executor, where the migration state lives; a sync's
// request runs on a goroutine of the runner. tables.install calls changes
// (under its install lock), the operation service calls requestSync
// (OnReplicaGap, on the executor), the migration endpoints call settle
// (on the executor).
type replicas struct {
	view        *clusterView
	address     string // this member's: the caller of a sync's replication operations
	ops         *operation.Service
	run         *runner
	log         *slog.Logger
	migs        *migrations
	snaps       *snapshots
	services    []migrationAware
	stepTimeout time.Duration // bounds a sync request (migration.step-timeout)
	// antiEntropySyncs counts the copies anti-entropy started
	// (partita_anti_entropy_syncs_total).
	antiEntropySyncs prometheus.Counter
	// resetting counts, per partition, the tasks queued or running on
	// its executor that reset this member's replica and make it wait
	// for a full copy (a new or demoted backup replica, a resync after a
	// migration). Until they ran, the replica's version and syncing flag
	// still say what it was before: empty and not syncing, for a member
	// that held no replica, which is what a replica in sync at version 0
	// says. The replica status reports such a replica syncing (see
	// resetPending), so that the master neither takes it for a copy in
	// sync nor promotes it as one. tables.install counts a new table's
	// resets before the table becomes visible.
	resetting []atomic.Int32
}

// resetsReplica reports whether a change of this member's replica index
// of a partition from was to now resets its replica and makes it wait
// for a full copy (see changes).
func resetsReplica(was, now int) bool { return now > 0 && was <= 0 }

// expectChanges counts the replica resets that changes(prev, t) will
// queue; tables.install calls it before t becomes visible.
func (r *replicas) expectChanges(prev, t *partition.Table) {
	id := r.view.id
	for p := range t.Owners {
		if resetsReplica(prev.ReplicaIndex(p, id), t.ReplicaIndex(p, id)) {
			r.resetting[p].Add(1)
		}
	}
}

// resetPending reports whether partition p's replica here is about to be
// reset and wait for a full copy (see resetting). Any goroutine; read it
// before operation.Service.IsSyncing: a reset marks the replica syncing
// before it stops counting.
func (r *replicas) resetPending(p int) bool { return r.resetting[p].Load() > 0 }

// changes runs, after a new table is installed, what this member's
// change of role requires for each partition: a promoted backup runs the
// promotion hooks, a member that lost every replica of a partition drops
// its data, and a new backup asks its primary for a full copy. The work
// runs on each partition's executor, where the migration state lives.
func (r *replicas) changes(prev, t *partition.Table) {
	id := r.view.id
	for p := range t.Owners {
		was, now := prev.ReplicaIndex(p, id), t.ReplicaIndex(p, id)
		if was == now {
			continue
		}
		switch {
		case now == 0:
			// A migration's destination that committed waited for this
			// table; otherwise a backup became primary: a promotion.
			r.ops.RunOnPartition(p, func() {
				if st := r.migs.at(p); st != nil {
					if st.committed {
						r.migs.set(p, nil)
					} else {
						r.ops.SetMigrating(p, true)
					}
					return
				}
				if was > 0 {
					r.promote(p, was, prev.Owner(p))
				}
			})
		case now < 0 && was >= 0:
			r.ops.RunOnPartition(p, func() { r.drop(p) })
		case now > 0 && was < 0:
			// Counted by expectChanges.
			r.ops.RunOnPartition(p, func() {
				defer r.resetting[p].Add(-1)
				if r.migs.at(p) == nil && r.view.replicaIndex(p) > 0 {
					r.ops.ResetReplica(p)
					r.ops.MarkSyncing(p) // not a candidate for promotion until synced
					r.requestSync(p)
				}
			})
		case now > 0 && was == 0:
			// A primary demoted to backup. After a migration's swap its
			// data is current; otherwise (a table of another master won)
			// its history may differ from the primary's: start over.
			r.ops.RunOnPartition(p, func() {
				defer r.resetting[p].Add(-1) // counted by expectChanges
				if r.migs.at(p) == nil && r.view.replicaIndex(p) > 0 {
					r.clear(p)
					r.ops.ResetReplica(p)
					r.ops.MarkSyncing(p)
					r.requestSync(p)
				}
			})
		}
	}
	if prev == nil || t.Term > prev.Term {
		// A new master's term: the moves of older terms will not get
		// their tables, and end by this one (migrations.supersede).
		for p := range t.Owners {
			r.ops.RunOnPartition(p, func() { r.migs.supersede(p, t.Term) })
		}
	}
}

// clear has every migration-aware service drop its data of partition p
// (executor p).
func (r *replicas) clear(p int) {
	for _, ma := range r.services {
		ma.svc.ClearPartitionReplica(p)
	}
}

// promote makes this member, backup k of partition p, its primary
// (executor p).
func (r *replicas) promote(p, k int, oldOwner string) {
	ev := spi.PartitionMigrationEvent{PartitionID: p, Endpoint: spi.MigrationDestination,
		CurrentReplicaIndex: k, NewReplicaIndex: 0, Source: oldOwner, Destination: r.view.id}
	for _, ma := range r.services {
		ma.svc.BeforeMigration(ev)
	}
	for _, ma := range r.services {
		ma.svc.CommitMigration(ev)
	}
	r.ops.BumpEpoch(p)
	r.ops.SetMigrating(p, false)
	r.log.Debug("backup promoted to primary", "partition", p, "replica", k)
}

// drop clears partition p's data on a member that holds no replica of it
// any more, unless a migration still needs it (executor p).
func (r *replicas) drop(p int) {
	if r.migs.at(p) != nil || r.view.replicaIndex(p) >= 0 {
		return
	}
	r.clear(p)
	r.ops.ResetReplica(p)
}

// settle makes partition p's data agree with what the table says of this
// member once a migration ended (executor p): holding no replica, it
// drops the data; a backup whose data the migration replaced (resync)
// pulls a fresh copy from the primary.
func (r *replicas) settle(p int, resync bool) {
	switch idx := r.view.replicaIndex(p); {
	case idx < 0:
		r.clear(p)
		r.ops.ResetReplica(p)
	case idx > 0 && resync:
		r.resetting[p].Add(1) // no moment where the replica looks empty and in sync
		r.ops.ResetReplica(p)
		r.ops.MarkSyncing(p)
		r.resetting[p].Add(-1)
		r.requestSync(p)
	}
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
func (r *replicas) requestSync(p int) {
	r.run.spawn(func() {
		pause := 20 * time.Millisecond
		stopped := func() {
			r.ops.RunOnPartition(p, func() { r.ops.AbandonSync(p, spi.ErrShutdown) })
		}
		for attempt := 0; ; attempt++ {
			t := r.view.table.Load()
			k := t.ReplicaIndex(p, r.view.id)
			if r.run.ctx.Err() != nil {
				stopped()
				return
			}
			if k <= 0 {
				r.ops.RunOnPartition(p, func() { r.syncGaveUp(p) })
				return
			}
			// Short attempts: the owner may be dead and about to be
			// replaced in the table, so look it up again each time.
			ctx, cancel := r.run.stopContext(min(2*time.Second, r.stepTimeout))
			v, err := r.ops.InvokeOnPartitionOf(ctx, engineService, &replicaSyncOp{replica: k}, p, t.Owner(p))
			cancel()
			if err == nil {
				data, _ := v.([]byte)
				r.ops.RunOnPartition(p, func() { r.installSync(p, data) })
				return
			}
			r.log.Debug("replica sync failed; retrying", "partition", p, "attempt", attempt, "error", err)
			if !r.run.backOff(&pause) {
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
// replica of p (and no migration of it) drops its data, as drop.
func (r *replicas) syncGaveUp(p int) {
	r.ops.ReplicaSynced(p, -1)
	r.drop(p)
}

// installSync replaces partition p's backup replica with the primary's copy
// (executor p). A copy it cannot install ends in syncGaveUp.
func (r *replicas) installSync(p int, data []byte) {
	if r.migs.at(p) != nil || r.view.replicaIndex(p) <= 0 {
		r.syncGaveUp(p)
		return
	}
	version, rd, err := snapshotVersion(data)
	if err != nil {
		r.log.Error("bad replica sync data", "partition", p, "error", err)
		r.syncGaveUp(p)
		return
	}
	if version <= r.ops.ReplicaVersion(p) {
		r.ops.ReplicaSynced(p, version) // already there
		return
	}
	r.clear(p)
	if err := r.snaps.install(rd, p, r.address, r.view.replicaIndex(p)); err != nil {
		r.log.Error("replica sync failed", "partition", p, "error", err)
		r.resetting[p].Add(1) // the reset stops the syncing a backup resumes
		r.clear(p)
		r.ops.ResetReplica(p)
		r.syncGaveUp(p)
		r.resetting[p].Add(-1)
		return
	}
	r.ops.ReplicaSynced(p, version)
	r.log.Debug("backup replica synced", "partition", p, "version", version)
}

// serveSync returns, on the primary's executor of partition p, its
// replica version and data for backup replica index k of member caller.
func (r *replicas) serveSync(p, k int, caller string) ([]byte, error) {
	if r.view.table.Load().Owner(p) != r.view.id {
		return nil, fmt.Errorf("%w: partition %d: not the primary", spi.ErrWrongTarget, p)
	}
	// A migration's source still holds the partition's data, which
	// operations no longer change: it serves copies. It must, because its
	// prepare waits for the acks of the writes it carries (WaitsForWrites),
	// and a backup replica that holds such a write behind a gap, or an
	// incoming one, acks it only once it has its copy.
	st := r.migs.at(p)
	if source := st != nil && st.endpoint == spi.MigrationSource; !source && (st != nil || r.ops.IsMigrating(p)) {
		return nil, fmt.Errorf("%w: partition %d", spi.ErrPartitionMigrating, p)
	}
	w := spi.NewWriter(nil)
	if err := r.snaps.append(w, p, k, caller); err != nil {
		return nil, err
	}
	return w.Bytes(), nil
}

// caughtUp reports, on the primary's executor of partition p, whether
// member's replica at version holds everything this primary backed up so
// far (see caughtUpOp).
func (r *replicas) caughtUp(p int, member string, version int64) bool {
	t := r.view.table.Load()
	mine := r.ops.ReplicaVersion(p)
	return t.Owner(p) == r.view.id && r.migs.at(p) == nil && !r.ops.IsMigrating(p) &&
		t.ReplicaIndex(p, member) > 0 && mine <= version && mine>>32 == version>>32
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
func (op *replicaSyncOp) Run(ctx *spi.OpContext) (err error) {
	op.data, err = ctx.Service.(*Node).replicas.serveSync(ctx.PartitionID, op.replica, ctx.Caller)
	return err
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
	op.ok = ctx.Service.(*Node).replicas.caughtUp(ctx.PartitionID, op.member, op.version)
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
	return ctx.Service.(*Node).replicas.checked(op.partitions, op.versions)
}

// checked handles a primary's anti-entropy check (any goroutine): each
// partition whose replica here is behind its primary's version syncs.
func (r *replicas) checked(partitions []int, versions []int64) error {
	for i, p := range partitions {
		if p < 0 || p >= r.view.count {
			return fmt.Errorf("%w: partition %d", spi.ErrProtocol, p)
		}
		v := versions[i]
		r.ops.RunOnPartition(p, func() {
			if !r.behind(p, v) {
				return
			}
			// The primary read its version v while backups stamped up to v
			// may still have been on their way: look again a little later,
			// and again later still (a loaded machine delays them), and
			// sync only if this replica is still behind both times (or of
			// another epoch, another history). A needless sync costs a
			// full copy and, should the primary die meanwhile, a
			// partition reported lost.
			r.run.spawn(func() { r.recheck(p, v, antiEntropyGrace) })
		})
	}
	return nil
}

// antiEntropyGrace is how long a backup that looks behind its primary's
// reported version waits for the backups in flight before it looks
// again; it looks a second time after antiEntropyGrace2.
const (
	antiEntropyGrace  = 100 * time.Millisecond
	antiEntropyGrace2 = time.Second
)

// recheck looks again, after wait, whether this backup replica of p is
// still behind its primary's version v; if so, after antiEntropyGrace2
// once more, then it syncs.
func (r *replicas) recheck(p int, v int64, wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-r.run.stop():
		return
	case <-t.C:
	}
	r.ops.RunOnPartition(p, func() {
		if !r.behind(p, v) {
			return
		}
		if wait == antiEntropyGrace {
			r.run.spawn(func() { r.recheck(p, v, antiEntropyGrace2) })
			return
		}
		r.log.Info("anti-entropy: backup replica differs from its primary; syncing", "partition", p,
			"have", r.ops.ReplicaVersion(p), "primary", v)
		r.antiEntropySyncs.Inc()
		r.ops.MarkSyncing(p)
		r.requestSync(p)
	})
}

// behind reports whether this backup replica of p lacks what its primary
// had at version v (executor p).
func (r *replicas) behind(p int, v int64) bool {
	mine := r.ops.ReplicaVersion(p)
	return r.migs.at(p) == nil && r.view.replicaIndex(p) > 0 && !r.ops.ReplicaPending(p) && (mine < v || mine>>32 != v>>32)
}

// antiEntropy sends, every interval until the node stops, this member's
// primary replica versions to its backups (its own goroutine).
func (r *replicas) antiEntropy(interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-r.run.stop():
			return
		case <-tick.C:
		}
		r.check()
	}
}

func (r *replicas) check() {
	t := r.view.table.Load()
	if t == nil {
		return
	}
	ops := map[string]*replicaCheckOp{}
	for p, o := range t.Owners {
		if o != r.view.id || r.ops.IsMigrating(p) {
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
			op.versions = append(op.versions, r.ops.ReplicaVersion(p))
		}
	}
	for id, op := range ops {
		ctx, cancel := r.run.stopContext(5 * time.Second)
		_, err := r.ops.InvokeOnMember(ctx, engineService, op, id)
		cancel()
		if err != nil && !errors.Is(err, spi.ErrNoSuchMember) {
			r.log.Debug("anti-entropy check failed", "member", id, "error", err)
		}
	}
}
