package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// migState is one migration in flight on this member for one partition.
// It lives in Node.migs[p] and is touched only on partition p's executor.
type migState struct {
	move      migration.Move
	endpoint  spi.MigrationEndpoint
	event     spi.PartitionMigrationEvent
	master    string // member ID of the master that started it
	committed bool   // destination: committed, waiting for the table
}

// migrationAware is an enabled MigrationAwareService with its name.
type migrationAware struct {
	name string
	svc  spi.MigrationAwareService
}

func (n *Node) eventFor(mv migration.Move, ep spi.MigrationEndpoint) spi.PartitionMigrationEvent {
	e := spi.PartitionMigrationEvent{PartitionID: mv.Partition, Endpoint: ep, Source: mv.Source, Destination: mv.Destination,
		CurrentReplicaIndex: 0, NewReplicaIndex: mv.SourceNewIndex}
	if ep == spi.MigrationDestination {
		e.CurrentReplicaIndex, e.NewReplicaIndex = mv.DestinationIndex, 0
	}
	return e
}

// setMig installs or clears partition p's migration state (executor p).
func (n *Node) setMig(p int, st *migState) {
	switch {
	case n.migs[p] == nil && st != nil:
		n.migActive.Add(1)
	case n.migs[p] != nil && st == nil:
		n.migActive.Add(-1)
	}
	n.migs[p] = st
	n.migView.set(p, st)
	n.ops.SetMigrating(p, st != nil && !st.committed)
}

// endMig commits or rolls back the local side of a migration (executor p).
func (n *Node) endMig(p int, commit bool) {
	st := n.migs[p]
	for _, ma := range n.migrationAware {
		if commit {
			ma.svc.CommitMigration(st.event)
		} else {
			ma.svc.RollbackMigration(st.event)
		}
	}
	n.log.Debug("migration ended", "partition", p, "endpoint", st.endpoint.String(), "commit", commit)
	if (commit && st.endpoint == spi.MigrationSource && st.event.NewReplicaIndex < 0) ||
		(!commit && st.endpoint == spi.MigrationDestination && st.event.CurrentReplicaIndex < 0) {
		n.ops.ResetReplica(p)
	}
	if commit && st.endpoint == spi.MigrationDestination {
		st.committed = true
		if t := n.table.Load(); t != nil && t.Owner(p) == n.id {
			st = nil // the table already names this member
		}
		n.setMig(p, st)
		return
	}
	n.setMig(p, nil)
	// The table may have changed during the migration: a member that holds
	// no replica now drops the data (its table change skipped the drop
	// while the migration ran), and one that is a backup other than the
	// move planned pulls a fresh copy: a destination that rolled back (the
	// failed apply replaced its data), or a source that a newer table
	// demoted while the move ran (its history is not the new primary's;
	// the table change skipped the resync while the migration ran).
	resync := !commit || st.endpoint == spi.MigrationSource && n.table.Load().ReplicaIndex(p, n.id) != st.event.NewReplicaIndex
	n.settleReplica(p, resync)
}

// settleReplica makes partition p's data agree with what the table says
// of this member once a migration ended (executor p): holding no replica,
// it drops the data; a backup whose data the migration replaced (resync)
// pulls a fresh copy from the primary.
func (n *Node) settleReplica(p int, resync bool) {
	switch idx := n.table.Load().ReplicaIndex(p, n.id); {
	case idx < 0:
		for _, ma := range n.migrationAware {
			ma.svc.ClearPartitionReplica(p)
		}
		n.ops.ResetReplica(p)
	case idx > 0 && resync:
		n.ops.ResetReplica(p)
		n.ops.MarkSyncing(p)
		n.requestSync(p)
	}
}

// resolveOrphan ends a migration whose master is gone, by what the table
// says now (executor p). The new master plans from a table at least as new
// as the one this member holds. A destination that committed keeps waiting
// unless final: the table naming it owner may have reached the source and
// the new master but not yet this member, and dropping the data by an
// older table would lose the writes it took over. A source keeps refusing
// operations unless final, for the same reason the other way round: the
// table naming the destination owner may have reached the destination but
// not this member, and rolling back by its older table would make it serve
// the partition as the destination does, both stamping their backups with
// the same versions (the destination took the source's). The new master
// resolves those (final) once it holds the newest table: its own when its
// take-over gate opens, the other members' by a resolveOp carrying that
// table.
func (n *Node) resolveOrphan(p int, final bool) {
	st := n.migs[p]
	if st == nil || st.master == n.masterID() || !final && (st.committed || st.endpoint == spi.MigrationSource) {
		return
	}
	owner := n.table.Load().Owner(p)
	switch {
	case st.committed:
		n.abandonCommitted(p)
	case st.endpoint == spi.MigrationSource:
		n.endMig(p, owner != n.id)
	default:
		n.endMig(p, owner == n.id)
	}
	n.log.Info("resolved migration of a departed master", "partition", p, "endpoint", st.endpoint.String(), "owner_now", owner == n.id)
}

// abandonCommitted ends a destination's committed migration whose table
// will not come (executor p): its master gave up on it or is gone. The
// data is the source's at the migration, kept current since by the
// source's backups if this member is a backup: it stays, with its version
// and exactly-once record, unless the table names no replica here (then
// it is dropped; a later table that makes this member a replica brings a
// fresh copy). Resetting it here would lose writes if a table naming this
// member owner is on its way (a repair promoted it).
func (n *Node) abandonCommitted(p int) {
	// A committed destination accepts operations; if p refuses them now,
	// installTable marked it for a promotion whose task is queued behind
	// this one: it stays refused until that promotion ran.
	promoting := n.ops.IsMigrating(p)
	n.setMig(p, nil)
	if promoting {
		n.ops.SetMigrating(p, true)
	}
	n.settleReplica(p, false)
}

func (n *Node) masterID() string {
	if ms := *n.members.Load(); len(ms) > 0 {
		return ms[0].ID
	}
	return ""
}

// moveData is the wire form of a migration.Move.
func writeMove(w *spi.Writer, mv migration.Move) {
	w.WriteString(mv.Source)
	w.WriteString(mv.Destination)
	w.WriteVarint(int64(mv.DestinationIndex))
	w.WriteVarint(int64(mv.SourceNewIndex))
	w.WriteUvarint(mv.ID)
}

func readMove(r *spi.Reader, p int) migration.Move {
	mv := migration.Move{Partition: p, Source: r.ReadString(), Destination: r.ReadString()}
	mv.DestinationIndex, mv.SourceNewIndex = int(r.ReadVarint()), int(r.ReadVarint())
	mv.ID = r.ReadUvarint()
	return mv
}

// migPrepareOp is step 1, on the source's executor of the partition.
type migPrepareOp struct {
	move   migration.Move
	master string
	data   []byte
}

func (op *migPrepareOp) OwnerCheckExempt() {}

// WaitsForWrites: the data goes to the destination, which serves it at
// once, only when the writes in it are on their synchronous backups.
func (op *migPrepareOp) WaitsForWrites()     {}
func (op *migPrepareOp) MessageKind() string { return "migration.prepare" }
func (op *migPrepareOp) Response() any       { return op.data }
func (op *migPrepareOp) WriteData(w *spi.Writer) {
	writeMove(w, op.move)
	w.WriteString(op.master)
}
func (op *migPrepareOp) ReadData(r *spi.Reader) error {
	op.move = readMove(r, -1)
	op.master = r.ReadString()
	return r.Err()
}

func (op *migPrepareOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	p := ctx.PartitionID
	op.move.Partition = p
	if st := n.migs[p]; st != nil {
		return fmt.Errorf("partition %d: another migration is in flight (%s -> %s)", p, st.move.Source, st.move.Destination)
	}
	if owner := n.table.Load().Owner(p); owner != n.id {
		// Not ErrWrongTarget: retrying cannot help, the plan is stale.
		return fmt.Errorf("partition %d: source %s does not own it (owner %s): the plan is stale", p, n.id, owner)
	}
	st := &migState{move: op.move, endpoint: spi.MigrationSource, event: n.eventFor(op.move, spi.MigrationSource), master: op.master}
	n.setMig(p, st)
	for _, ma := range n.migrationAware {
		ma.svc.BeforeMigration(st.event)
	}
	w := spi.NewWriter(nil)
	if err := n.appendSnapshot(w, p, 0, op.move.Destination); err != nil {
		n.endMig(p, false)
		return err
	}
	op.data = w.Bytes()
	n.metrics.migBytesSent.Add(float64(len(op.data)))
	return nil
}

// migApplyOp is step 2, on the destination's executor of the partition.
type migApplyOp struct {
	move   migration.Move
	master string
	data   []byte
}

func (op *migApplyOp) OwnerCheckExempt()   {}
func (op *migApplyOp) MessageKind() string { return "migration.apply" }
func (op *migApplyOp) WriteData(w *spi.Writer) {
	writeMove(w, op.move)
	w.WriteString(op.master)
	w.WriteBytes(op.data)
}
func (op *migApplyOp) ReadData(r *spi.Reader) error {
	op.move = readMove(r, -1)
	op.master = r.ReadString()
	op.data = r.ReadBytes()
	return r.Err()
}

func (op *migApplyOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	p := ctx.PartitionID
	op.move.Partition = p
	if st := n.migs[p]; st != nil {
		switch {
		case st.move == op.move && st.master == op.master && st.endpoint == spi.MigrationDestination && !st.committed:
			return nil // a retry of this very step
		case st.committed:
			// An earlier attempt committed here but its table never came:
			// what it left is stale, and this attempt replaces it.
			n.setMig(p, nil)
		default:
			return fmt.Errorf("partition %d: another migration is in flight (%s -> %s)", p, st.move.Source, st.move.Destination)
		}
	}
	if owner := n.table.Load().Owner(p); owner == n.id {
		return fmt.Errorf("partition %d: destination %s already owns it", p, n.id)
	}
	// Whatever an unfinished earlier migration left here is stale.
	for _, ma := range n.migrationAware {
		ma.svc.ClearPartitionReplica(p)
	}
	st := &migState{move: op.move, endpoint: spi.MigrationDestination, event: n.eventFor(op.move, spi.MigrationDestination), master: op.master}
	n.setMig(p, st)
	for _, ma := range n.migrationAware {
		ma.svc.BeforeMigration(st.event)
	}
	n.metrics.migBytesRecv.Add(float64(len(op.data)))
	version, r, err := snapshotVersion(op.data)
	if err == nil {
		n.ops.ResetReplica(p)
		err = n.installSnapshot(r, p, ctx.Caller, 0)
	}
	if err != nil {
		n.endMig(p, false)
		n.ops.ResetReplica(p)
		return fmt.Errorf("partition %d: applying replication data: %w", p, err)
	}
	n.ops.SetReplicaVersion(p, version)
	return nil
}

// migFinishOp commits or rolls back one endpoint (steps 3 and 5, and
// rollbacks). Repeating it, or sending it for a migration that already
// ended, does nothing.
type migFinishOp struct {
	move     migration.Move
	endpoint spi.MigrationEndpoint
	commit   bool
}

func (op *migFinishOp) OwnerCheckExempt() {}
func (op *migFinishOp) MessageKind() string {
	if op.commit {
		return "migration.commit"
	}
	return "migration.rollback"
}
func (op *migFinishOp) WriteData(w *spi.Writer) {
	writeMove(w, op.move)
	w.WriteUint8(uint8(op.endpoint))
	w.WriteBool(op.commit)
}
func (op *migFinishOp) ReadData(r *spi.Reader) error {
	op.move = readMove(r, -1)
	op.endpoint = spi.MigrationEndpoint(r.ReadUint8())
	op.commit = r.ReadBool()
	return r.Err()
}

func (op *migFinishOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	p := ctx.PartitionID
	op.move.Partition = p
	st := n.migs[p]
	if st == nil || st.move != op.move || st.endpoint != op.endpoint {
		return nil
	}
	if st.committed {
		if !op.commit {
			// The master committed this destination, then a newer table
			// won: the table naming this member will not come.
			n.abandonCommitted(p)
		}
		return nil
	}
	n.endMig(p, op.commit)
	return nil
}

// leaveOp asks the master to move every partition off a leaving member.
// Its response tells whether any member that is not leaving remains to
// take them.
type leaveOp struct {
	member  string
	targets bool
}

func (op *leaveOp) MessageKind() string          { return "member.leave" }
func (op *leaveOp) WriteData(w *spi.Writer)      { w.WriteString(op.member) }
func (op *leaveOp) ReadData(r *spi.Reader) error { op.member = r.ReadString(); return r.Err() }
func (op *leaveOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	n.leavingMu.Lock()
	first := !n.leaving[op.member]
	n.leaving[op.member] = true
	op.targets = false
	for _, m := range n.Members() {
		op.targets = op.targets || !n.leaving[m.ID]
	}
	n.leavingMu.Unlock()
	if first {
		n.log.Info("member asked to leave: moving its partitions away", "leaving", op.member)
	}
	n.mgr.Trigger()
	return nil
}

func (op *leaveOp) Response() any { return op.targets }

// masterEngine adapts the Node to migration.Engine.
type masterEngine struct{ n *Node }

func (e masterEngine) IsMaster() bool          { return e.n.IsMaster() && e.n.tookOver() }
func (e masterEngine) Table() *partition.Table { return e.n.table.Load() }

// Alive reports whether a member is in the member list; this member is
// alive while it runs the Manager, even once it left memberlist at its
// shutdown (its list then lacks it): a round in flight would otherwise
// take the partitions it holds for lost.
func (e masterEngine) Alive(id string) bool {
	return id == e.n.id || containsMember(*e.n.members.Load(), id)
}
func (e masterEngine) Address(id string) string {
	a, _ := e.n.MemberAddress(id)
	return a
}

func (e masterEngine) ReplicaStatus(ctx context.Context, member string) ([]int64, []bool, error) {
	address := ""
	if member != e.n.id && !e.Alive(member) {
		// memberlist declared it dead; it may still run (a member starved
		// of CPU misses its probes): ask it once where the table says.
		if t := e.n.table.Load(); t != nil {
			address = t.Members[member]
		}
		if address == "" {
			return nil, nil, fmt.Errorf("%w: %s (not in the member list or the table)", spi.ErrNoSuchMember, member)
		}
	}
	_, _, v, s, err := e.n.replicaStatusAt(ctx, member, address)
	return v, s, err
}

func (e masterEngine) CaughtUp(ctx context.Context, p int, primary, member string, version int64) (bool, error) {
	v, err := e.n.ops.InvokeOnPartitionOf(ctx, engineService, &caughtUpOp{member: member, version: version}, p, primary)
	ok, _ := v.(bool)
	return ok, err
}

func (e masterEngine) Lost(ps []int) {
	e.n.metrics.lost.Add(float64(len(ps)))
	for _, s := range e.n.services {
		if l, ok := s.(spi.PartitionLostListener); ok {
			for _, p := range ps {
				l.PartitionLost(p)
			}
		}
	}
}

func (e masterEngine) Targets() []spi.Member {
	e.n.leavingMu.Lock()
	defer e.n.leavingMu.Unlock()
	var out []spi.Member
	for _, m := range *e.n.members.Load() {
		if !e.n.leaving[m.ID] {
			out = append(out, m)
		}
	}
	return out
}

func (e masterEngine) Install(t *partition.Table) bool {
	if !e.n.installTable(t) {
		return false
	}
	e.n.log.Debug("partition table published", "version", t.Version, "owned", t.Counts()[e.n.id])
	e.n.memberEvent() // push it to everyone
	return true
}

func (e masterEngine) Push(ctx context.Context, t *partition.Table, member string) error {
	if member == e.n.id {
		if cur := e.n.table.Load(); cur != nil && cur.Version >= t.Version {
			return nil
		}
		return errors.New("local table is older than the one pushed")
	}
	_, err := e.n.ops.InvokeOnMember(ctx, engineService, &publishTableOp{table: t}, member)
	if err == nil {
		e.n.publish.Lock()
		e.n.acked[member] = max(e.n.acked[member], t.Version)
		e.n.publish.Unlock()
	}
	return err
}

func (e masterEngine) Prepare(ctx context.Context, mv migration.Move) ([]byte, error) {
	v, err := e.n.ops.InvokeOnPartitionOf(ctx, engineService, &migPrepareOp{move: mv, master: e.n.id}, mv.Partition, mv.Source)
	b, _ := v.([]byte)
	return b, err
}

func (e masterEngine) Apply(ctx context.Context, mv migration.Move, data []byte) error {
	_, err := e.n.ops.InvokeOnPartitionOf(ctx, engineService, &migApplyOp{move: mv, master: e.n.id, data: data}, mv.Partition, mv.Destination)
	return err
}

func (e masterEngine) Finish(ctx context.Context, mv migration.Move, ep spi.MigrationEndpoint, commit bool) error {
	member := mv.Source
	if ep == spi.MigrationDestination {
		member = mv.Destination
	}
	_, err := e.n.ops.InvokeOnPartitionOf(ctx, engineService, &migFinishOp{move: mv, endpoint: ep, commit: commit}, mv.Partition, member)
	return err
}

// resolveDepartedMaster ends, on every partition, the migrations that a
// master which is no longer master had started; committed destinations
// only if final (see resolveOrphan). Each runs on the partition's
// executor after the tasks of the tables installed so far.
func (n *Node) resolveDepartedMaster(final bool) {
	for p := 0; p < n.count; p++ {
		n.ops.RunOnPartition(p, func() { n.resolveOrphan(p, final) })
	}
}

// resolveOthers, on a new master whose take-over gate opened, has every
// other member resolve the migrations of departed masters by the table
// this one holds (see resolveOp), retrying each while it is alive and
// this member is still master.
func (n *Node) resolveOthers() {
	t := n.table.Load()
	if t == nil {
		return
	}
	for _, m := range *n.members.Load() {
		if m.ID == n.id {
			continue
		}
		n.spawn(func() {
			pause := 10 * time.Millisecond
			deadline := time.Now().Add(resolveTimeout)
			for {
				ctx, cancel := n.stopContext(2 * time.Second)
				resp, err := n.ops.InvokeOnMember(ctx, engineService, &resolveOp{publishTableOp{table: t}}, m.ID)
				cancel()
				if err == nil {
					n.adoptNewer(resp, m.Address)
					return
				}
				if !n.IsMaster() || !containsMember(*n.members.Load(), m.ID) || n.ctx.Err() != nil {
					return
				}
				if time.Now().After(deadline) {
					n.log.Warn("new master: a member did not resolve the migrations of the departed master", "member", m.Address, "error", err)
					return
				}
				n.log.Debug("resolve request failed; retrying", "to", m.Address, "error", err)
				if !n.backOff(&pause) {
					return
				}
			}
		})
	}
}

// resolveTimeout bounds how long a new master keeps asking a member to
// resolve the migrations of departed masters.
const resolveTimeout = 30 * time.Second

// resolveOp, sent by a new master once its take-over gate opened, carries
// the newest table it holds: the receiver installs it if newer, then
// resolves the migrations of masters that are gone by the table it holds,
// committed destinations included. It refuses while it does not see the
// sender as master (it has not noticed the old master's death yet, or the
// sender is no longer master): then the sender retries or gives up. Its
// response is the receiver's table, when newer than the one sent.
type resolveOp struct {
	publishTableOp
}

func (op *resolveOp) MessageKind() string { return "migration.resolve" }
func (op *resolveOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	if ms := *n.members.Load(); len(ms) == 0 || ms[0].Address != ctx.Caller {
		return fmt.Errorf("resolve request from %s, which is not this member's master", ctx.Caller)
	}
	// installTable queues the table's role changes on the partitions'
	// executors before it returns (and waits for a concurrent install):
	// the resolutions queued next run after them.
	op.newer = n.acceptTable(op.table, ctx.Caller)
	n.resolveDepartedMaster(true)
	return nil
}

// drain asks the master to move this member's partitions away and waits,
// until ctx ends, for the table to show it owns none.
func (n *Node) drain(ctx context.Context) {
	owned := func() int {
		if t := n.table.Load(); t != nil {
			return t.Counts()[n.id]
		}
		return 0
	}
	if len(n.Members()) <= 1 || owned() == 0 {
		return
	}
	n.log.Info("graceful shutdown: moving partitions to other members", "owned", owned())
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var asked time.Time
	noTargets := 0 // answers in a row that every other member is leaving
	for owned() > 0 {
		if len(n.Members()) <= 1 {
			// The others left meanwhile: nobody to hand over to.
			n.log.Warn("graceful shutdown: no other member left to take this member's partitions", "owned", owned())
			return
		}
		if time.Since(asked) > time.Second {
			// Ask again now and then: the master may have changed.
			asked = time.Now()
			ictx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := n.ops.InvokeOnMember(ictx, engineService, &leaveOp{member: n.id}, n.masterID())
			cancel()
			if err != nil {
				n.log.Debug("leave request failed", "error", err)
			} else if targets, _ := resp.(bool); targets {
				noTargets = 0
			} else if noTargets++; noTargets >= 2 {
				// Twice, a second apart: a member that has just joined
				// may not have been in the master's list the first time.
				n.log.Warn("graceful shutdown: every other member is leaving too; nobody to take this member's partitions", "owned", owned())
				return
			}
		}
		select {
		case <-ctx.Done():
			n.log.Warn("graceful shutdown deadline passed; leaving with partitions still owned", "owned", owned())
			return
		case <-tick.C:
		}
	}
	// A leaving master makes sure everyone holds its last table, so the
	// next master plans from it.
	if n.IsMaster() {
		n.waitAllAcked(ctx)
	}
	n.log.Info("graceful shutdown: this member owns no partition")
}

// waitAllAcked waits until every other member acknowledged the current
// table, or ctx ends.
func (n *Node) waitAllAcked(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		t := n.table.Load()
		all := true
		n.publish.Lock()
		for _, m := range *n.members.Load() {
			if m.ID != n.id && n.acked[m.ID] < t.Version {
				all = false
			}
		}
		n.publish.Unlock()
		if all {
			return
		}
		n.memberEvent()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
