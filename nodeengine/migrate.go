package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
	"github.com/prometheus/client_golang/prometheus"
)

// migState is one migration in flight on this member for one partition.
// It lives in migrations.byPart[p] and is touched only on partition p's
// executor.
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

// migrations is this member's side of partition migrations: the source's
// and the destination's steps (migPrepareOp, migApplyOp, migFinishOp) and
// the resolution of migrations whose master is gone. Its state per
// partition is touched only on that partition's executor, where every
// method but inFlight runs; active and inFlight are read from any
// goroutine. New makes it; Start gives it the rest before the operation
// service runs.
type migrations struct {
	byPart   []*migState // by partition
	active   atomic.Int32
	inFlight migView

	view      *clusterView
	ops       *operation.Service
	log       *slog.Logger
	services  []migrationAware
	replicas  *replicas
	snaps     *snapshots
	bytesSent prometheus.Counter
	bytesRecv prometheus.Counter
}

func newMigrations(count int) *migrations {
	return &migrations{byPart: make([]*migState, count)}
}

// at returns partition p's migration in flight, nil when none (executor p).
func (m *migrations) at(p int) *migState { return m.byPart[p] }

func eventFor(mv migration.Move, ep spi.MigrationEndpoint) spi.PartitionMigrationEvent {
	e := spi.PartitionMigrationEvent{PartitionID: mv.Partition, Endpoint: ep, Source: mv.Source, Destination: mv.Destination,
		CurrentReplicaIndex: 0, NewReplicaIndex: mv.SourceNewIndex}
	if ep == spi.MigrationDestination {
		e.CurrentReplicaIndex, e.NewReplicaIndex = mv.DestinationIndex, 0
	}
	return e
}

// set installs or clears partition p's migration state (executor p).
func (m *migrations) set(p int, st *migState) {
	switch {
	case m.byPart[p] == nil && st != nil:
		m.active.Add(1)
	case m.byPart[p] != nil && st == nil:
		m.active.Add(-1)
	}
	m.byPart[p] = st
	m.inFlight.set(p, st)
	m.ops.SetMigrating(p, st != nil && !st.committed)
}

// end commits or rolls back the local side of a migration (executor p).
func (m *migrations) end(p int, commit bool) {
	st := m.byPart[p]
	for _, ma := range m.services {
		if commit {
			ma.svc.CommitMigration(st.event)
		} else {
			ma.svc.RollbackMigration(st.event)
		}
	}
	m.log.Debug("migration ended", "partition", p, "endpoint", st.endpoint.String(), "commit", commit)
	if (commit && st.endpoint == spi.MigrationSource && st.event.NewReplicaIndex < 0) ||
		(!commit && st.endpoint == spi.MigrationDestination && st.event.CurrentReplicaIndex < 0) {
		m.ops.ResetReplica(p)
	}
	if commit && st.endpoint == spi.MigrationDestination {
		st.committed = true
		if t := m.view.table.Load(); t != nil && t.Owner(p) == m.view.id {
			st = nil // the table already names this member
		}
		m.set(p, st)
		return
	}
	m.set(p, nil)
	// The table may have changed during the migration: a member that holds
	// no replica now drops the data (its table change skipped the drop
	// while the migration ran), and one that is a backup other than the
	// move planned pulls a fresh copy: a destination that rolled back (the
	// failed apply replaced its data), or a source that a newer table
	// demoted while the move ran (its history is not the new primary's;
	// the table change skipped the resync while the migration ran).
	resync := !commit || st.endpoint == spi.MigrationSource && m.view.replicaIndex(p) != st.event.NewReplicaIndex
	m.replicas.settle(p, resync)
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
func (m *migrations) resolveOrphan(p int, final bool) {
	st := m.byPart[p]
	if st == nil || st.master == m.view.masterID() || !final && (st.committed || st.endpoint == spi.MigrationSource) {
		return
	}
	owner := m.endByTable(p)
	m.log.Info("resolved migration of a departed master", "partition", p, "endpoint", st.endpoint.String(), "owner_now", owner)
}

// endByTable ends partition p's migration by the table this member holds
// (executor p) and reports whether that table names this member owner: a
// committed destination is abandoned (abandonCommitted), a source commits
// (drops) if the table names another owner, and a destination not yet
// committed commits if it names this member.
func (m *migrations) endByTable(p int) (owner bool) {
	st := m.byPart[p]
	owner = m.view.table.Load().Owner(p) == m.view.id
	switch {
	case st.committed:
		m.abandonCommitted(p)
	case st.endpoint == spi.MigrationSource:
		m.end(p, !owner)
	default:
		m.end(p, owner)
	}
	return owner
}

// supersede ends partition p's migration if its move is of an older term
// than term, the one of the table this member just installed (executor
// p), by that table, as a new master's resolution (resolveOp) ends it.
// The move's table is older than the one held here and will never be
// installed: its master was replaced (it may be gone or no longer master,
// and a master that was master already sends no resolution), or took
// over again in a new term (its Manager voids a move whose term changed).
// A table of a newer term is made only once its master's take-over gate
// opened, from the newest table it found: the table resolveOp would
// carry, or a later one.
//
// A destination not yet committed commits if the table names it owner,
// else rolls back (a later commit of a rolled back move fails with
// migration.ErrMoveGone, and the source is rolled back); committed, it is
// abandoned (abandonCommitted). Nothing is lost: a committed destination
// serves the partition only once a table names it owner, which ends its
// migration, so this one served nothing, and the source drops its copy
// only once a table naming the destination owner exists (the move's,
// installed on the destination first, or the newer term's, which the
// destination installs in turn); the newer term's
// table names this member owner if the move's table reached any member
// its master asked (then the role change queued before this task ended
// the migration, keeping the data). A source commits (drops) if the table
// gives the partition to another owner, else rolls back and serves again;
// unless the move's master is this member's master still (it took over
// again: its new term's table may name the destination owner, which has
// not installed it, and the destination may die; the master's Manager
// ends the source in order, as resolveOrphan leaves it to it).
func (m *migrations) supersede(p int, term uint64) {
	st := m.byPart[p]
	if st == nil || st.move.Term >= term || st.endpoint == spi.MigrationSource && st.master == m.view.masterID() {
		return
	}
	committed := st.committed
	owner := m.endByTable(p)
	m.log.Info("migration ended: a table of a newer term came", "partition", p, "endpoint", st.endpoint.String(),
		"master", st.master, "move_term", st.move.Term, "term", term, "committed", committed, "owner_now", owner)
}

// abandonCommitted ends a destination's committed migration whose table
// will not come (executor p): its master gave up on it or is gone. The
// data is the source's at the migration, kept current since by the
// source's backups if this member is a backup: it stays, with its version
// and exactly-once record, unless the table names no replica here (then
// it is dropped; a later table that makes this member a replica brings a
// fresh copy). Resetting it here would lose writes if a table naming this
// member owner is on its way (a repair promoted it).
func (m *migrations) abandonCommitted(p int) {
	// A committed destination accepts operations; if p refuses them now,
	// tables.install marked it for a promotion whose task is queued behind
	// this one: it stays refused until that promotion ran.
	promoting := m.ops.IsMigrating(p)
	m.set(p, nil)
	if promoting {
		m.ops.SetMigrating(p, true)
	}
	m.replicas.settle(p, false)
}

// moveData is the wire form of a migration.Move.
func writeMove(w *spi.Writer, mv migration.Move) {
	w.WriteString(mv.Source)
	w.WriteString(mv.Destination)
	w.WriteVarint(int64(mv.DestinationIndex))
	w.WriteVarint(int64(mv.SourceNewIndex))
	w.WriteUvarint(mv.ID)
	w.WriteUvarint(mv.Term)
}

func readMove(r *spi.Reader, p int) migration.Move {
	mv := migration.Move{Partition: p, Source: r.ReadString(), Destination: r.ReadString()}
	mv.DestinationIndex, mv.SourceNewIndex = int(r.ReadVarint()), int(r.ReadVarint())
	mv.ID = r.ReadUvarint()
	mv.Term = r.ReadUvarint()
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

func (op *migPrepareOp) Run(ctx *spi.OpContext) (err error) {
	op.move.Partition = ctx.PartitionID
	op.data, err = ctx.Service.(*Node).migs.prepare(op.move, op.master)
	return err
}

// prepare starts move on its source and returns the partition's snapshot
// for the destination (executor of move.Partition).
func (m *migrations) prepare(mv migration.Move, master string) ([]byte, error) {
	p := mv.Partition
	if err := m.fromMaster(mv, master); err != nil {
		return nil, err
	}
	owner := m.view.table.Load().Owner(p)
	if st := m.byPart[p]; st != nil && st.master != master && owner == m.view.id {
		// A departed master's move that no resolution will reach: this
		// member's master changed to one that was master already (this
		// member had seen another), so no take-over sends it a resolveOp.
		// The master's table names this member owner, as its own does:
		// the move did not happen, and rolling it back agrees with both.
		m.resolveOrphan(p, true)
	}
	if st := m.byPart[p]; st != nil {
		return nil, fmt.Errorf("partition %d: another migration is in flight (%s -> %s)", p, st.move.Source, st.move.Destination)
	}
	if owner != m.view.id {
		// Not ErrWrongTarget: retrying cannot help, the plan is stale.
		return nil, fmt.Errorf("partition %d: source %s does not own it (owner %s): the plan is stale", p, m.view.id, owner)
	}
	st := &migState{move: mv, endpoint: spi.MigrationSource, event: eventFor(mv, spi.MigrationSource), master: master}
	m.set(p, st)
	for _, ma := range m.services {
		ma.svc.BeforeMigration(st.event)
	}
	w := spi.NewWriter(nil)
	if err := m.snaps.append(w, p, 0, mv.Destination); err != nil {
		m.end(p, false)
		return nil, err
	}
	m.bytesSent.Add(float64(len(w.Bytes())))
	return w.Bytes(), nil
}

// fromMaster refuses to start move, which master planned, unless master
// is this member's master and the move's term is no older than the table
// this member holds. A move accepted from another
// would never be resolved: resolutions follow this member's master (see
// resolveOrphan), and a member that froze as master and came back after
// the others declared it dead still plans from its old table until it
// notices; the partition then refused every move the real master planned.
// A master of an older term was replaced (its member list may still name
// it master here for a moment): its table naming the destination owner
// would never be installed here, as it is older than this member's.
func (m *migrations) fromMaster(mv migration.Move, master string) error {
	if mine := m.view.masterID(); master != mine {
		return fmt.Errorf("partition %d: the move comes from %s, which is not this member's master (%s)", mv.Partition, master, mine)
	}
	if t := m.view.table.Load(); t != nil && t.Term > mv.Term {
		return fmt.Errorf("partition %d: the move comes from master %s in term %d, older than this member's table (term %d): another master took over", mv.Partition, master, mv.Term, t.Term)
	}
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
	op.move.Partition = ctx.PartitionID
	return ctx.Service.(*Node).migs.apply(op.move, op.master, ctx.Caller, op.data)
}

// apply installs the source's snapshot data on move's destination
// (executor of move.Partition); caller is the source's address.
func (m *migrations) apply(mv migration.Move, master, caller string, data []byte) error {
	p := mv.Partition
	if err := m.fromMaster(mv, master); err != nil {
		return err
	}
	if st := m.byPart[p]; st != nil {
		switch {
		case st.move == mv && st.master == master && st.endpoint == spi.MigrationDestination && !st.committed:
			return nil // a retry of this very step
		case st.committed:
			// An earlier attempt committed here but its table never came:
			// what it left is stale, and this attempt replaces it.
			m.set(p, nil)
		default:
			return fmt.Errorf("partition %d: another migration is in flight (%s -> %s)", p, st.move.Source, st.move.Destination)
		}
	}
	if owner := m.view.table.Load().Owner(p); owner == m.view.id {
		return fmt.Errorf("partition %d: destination %s already owns it", p, m.view.id)
	}
	// Whatever an unfinished earlier migration left here is stale.
	m.replicas.clear(p)
	st := &migState{move: mv, endpoint: spi.MigrationDestination, event: eventFor(mv, spi.MigrationDestination), master: master}
	m.set(p, st)
	for _, ma := range m.services {
		ma.svc.BeforeMigration(st.event)
	}
	m.bytesRecv.Add(float64(len(data)))
	version, r, err := snapshotVersion(data)
	if err == nil {
		m.ops.ResetReplica(p)
		err = m.snaps.install(r, p, caller, 0)
	}
	if err != nil {
		m.end(p, false)
		m.ops.ResetReplica(p)
		return fmt.Errorf("partition %d: applying replication data: %w", p, err)
	}
	m.ops.SetReplicaVersion(p, version)
	return nil
}

// migFinishOp commits or rolls back one endpoint (steps 3 and 5, and
// rollbacks). Repeating it, or sending it for a migration that already
// ended, does nothing. Its response says whether the endpoint held the
// move (see migrations.finish).
type migFinishOp struct {
	move     migration.Move
	endpoint spi.MigrationEndpoint
	commit   bool
	held     bool
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
	op.move.Partition = ctx.PartitionID
	op.held = ctx.Service.(*Node).migs.finish(op.move, op.endpoint, op.commit)
	return nil
}

func (op *migFinishOp) Response() any { return op.held }

// finish commits or rolls back this member's side (endpoint) of move
// (executor of move.Partition); it does nothing for a migration that
// already ended. It reports whether this side held the move: false for a
// destination asked to commit a move it no longer holds and whose table
// does not name it owner (a repeated commit finds its state cleared once
// the table named it). Such a destination rolled the move back on its own
// (it took its master for gone): its data is not the source's, and
// committing would name an owner without it.
func (m *migrations) finish(mv migration.Move, ep spi.MigrationEndpoint, commit bool) (held bool) {
	p := mv.Partition
	st := m.byPart[p]
	if st == nil || st.move != mv || st.endpoint != ep {
		if !commit || ep != spi.MigrationDestination {
			return true
		}
		t := m.view.table.Load()
		return t != nil && t.Owner(p) == m.view.id
	}
	if st.committed {
		if !commit {
			// The master committed this destination, then a newer table
			// won: the table naming this member will not come.
			m.abandonCommitted(p)
		}
		return true
	}
	m.end(p, commit)
	return true
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
	first, targets := n.leavers.add(op.member, n.view.memberList())
	op.targets = targets
	if first {
		n.log.Info("member asked to leave: moving its partitions away", "leaving", op.member)
	}
	n.mgr.Trigger()
	return nil
}

func (op *leaveOp) Response() any { return op.targets }

// leavers is the set of members draining before they leave, kept by the
// master: leaveOp adds them, the membership loop forgets those that left
// and the migration planner moves nothing to them (masterEngine.Targets).
// Any goroutine may call it.
type leavers struct {
	mu  sync.Mutex
	ids map[string]bool
}

// add marks member leaving; first reports whether it was not already,
// targets whether any of members is not leaving.
func (l *leavers) add(member string, members []spi.Member) (first, targets bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	first = !l.ids[member]
	l.ids[member] = true
	for _, m := range members {
		targets = targets || !l.ids[m.ID]
	}
	return first, targets
}

// forget drops member id: it left.
func (l *leavers) forget(id string) {
	l.mu.Lock()
	delete(l.ids, id)
	l.mu.Unlock()
}

// targets returns the members that are not leaving.
func (l *leavers) targets(members []spi.Member) []spi.Member {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []spi.Member
	for _, m := range members {
		if !l.ids[m.ID] {
			out = append(out, m)
		}
	}
	return out
}

// masterEngine adapts the Node to migration.Engine.
type masterEngine struct{ n *Node }

// IsMaster reports whether this member plans migrations: it is the
// master, its take-over is done and its term current, and it takes no
// part in a merge (a master that leads its cluster's merge plans nothing
// more for the cluster it leaves).
func (e masterEngine) IsMaster() bool {
	return e.n.view.isMaster() && e.n.pub.tookOver() && !e.n.sb.merging() && e.n.pub.inTerm()
}
func (e masterEngine) Table() *partition.Table { return e.n.view.table.Load() }

// Alive reports whether a member is in the member list; this member is
// alive while it runs the Manager, even once it left memberlist at its
// shutdown (its list then lacks it): a round in flight would otherwise
// take the partitions it holds for lost.
func (e masterEngine) Alive(id string) bool {
	return id == e.n.view.id || e.n.view.hasMember(id)
}
func (e masterEngine) Address(id string) string {
	a, _ := routing{e.n.view}.MemberAddress(id)
	return a
}

func (e masterEngine) ReplicaStatus(ctx context.Context, member string) (int64, []int64, []bool, error) {
	address := ""
	if member != e.n.view.id && !e.Alive(member) {
		// memberlist declared it dead; it may still run (a member starved
		// of CPU misses its probes): ask it once where the table says.
		if t := e.n.view.table.Load(); t != nil {
			address = t.Members[member]
		}
		if address == "" {
			return 0, nil, nil, fmt.Errorf("%w: %s (not in the member list or the table)", spi.ErrNoSuchMember, member)
		}
	}
	_, tv, v, s, err := e.n.safety.statusAt(ctx, member, address)
	return tv, v, s, err
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

func (e masterEngine) Targets() []spi.Member { return e.n.leavers.targets(e.n.view.memberList()) }

func (e masterEngine) Install(t *partition.Table) bool {
	if !e.n.pub.installOwn(t) {
		return false
	}
	e.n.log.Debug("partition table published", "version", t.Version, "owned", t.Counts()[e.n.view.id])
	e.n.memberEvent() // push it to everyone
	return true
}

func (e masterEngine) Push(ctx context.Context, t *partition.Table, member string) error {
	if member == e.n.view.id {
		if cur := e.n.view.table.Load(); !t.Newer(cur) {
			return nil
		}
		return errors.New("local table is older than the one pushed")
	}
	resp, err := e.n.ops.InvokeOnMember(ctx, engineService, &publishTableOp{table: t}, member)
	if b, _ := resp.([]byte); err == nil && len(b) > 0 {
		// It holds a newer table and kept it: a later one of this
		// master's (the publisher pushed it first; in a newer term of
		// this master's, it was made from t or a later table, as t was
		// installed here before it was pushed and installOwn and
		// startTerm are one step, or from another master's table this
		// one adopted, which the Manager checks before it commits the
		// source), or one of a newer term, which another master made:
		// then it does not follow this one, and does not hold t.
		if nt, derr := partition.Decode(spi.NewReader(b), e.n.view.count); derr == nil && nt.Term > t.Term && !e.n.pub.ownsTerm(nt) {
			e.n.pub.adoptNewer(resp, e.Address(member))
			return fmt.Errorf("%w: member %s holds a table of a newer master's term (%d) than version %d's (%d)", migration.ErrSuperseded, e.Address(member), nt.Term, t.Version, t.Term)
		}
	}
	if err == nil {
		e.n.pub.ack(member, t.Version)
	}
	return err
}

func (e masterEngine) Prepare(ctx context.Context, mv migration.Move) ([]byte, error) {
	v, err := e.n.ops.InvokeOnPartitionOf(ctx, engineService, &migPrepareOp{move: mv, master: e.n.view.id}, mv.Partition, mv.Source)
	b, _ := v.([]byte)
	return b, err
}

func (e masterEngine) Apply(ctx context.Context, mv migration.Move, data []byte) error {
	_, err := e.n.ops.InvokeOnPartitionOf(ctx, engineService, &migApplyOp{move: mv, master: e.n.view.id, data: data}, mv.Partition, mv.Destination)
	return err
}

func (e masterEngine) Finish(ctx context.Context, mv migration.Move, ep spi.MigrationEndpoint, commit bool) error {
	member := mv.Source
	if ep == spi.MigrationDestination {
		member = mv.Destination
	}
	resp, err := e.n.ops.InvokeOnPartitionOf(ctx, engineService, &migFinishOp{move: mv, endpoint: ep, commit: commit}, mv.Partition, member)
	if held, ok := resp.(bool); err == nil && ok && !held {
		return fmt.Errorf("%w: partition %d on %s (move %d)", migration.ErrMoveGone, mv.Partition, e.Address(member), mv.ID)
	}
	return err
}

// resolveDepartedMaster ends, on every partition, the migrations that a
// master which is no longer master had started; committed destinations
// only if final (see resolveOrphan). Each runs on the partition's
// executor after the tasks of the tables installed so far.
func (n *Node) resolveDepartedMaster(final bool) {
	for p := 0; p < n.view.count; p++ {
		n.ops.RunOnPartition(p, func() { n.migs.resolveOrphan(p, final) })
	}
}

// resolveOthers, on a new master whose take-over gate opened, has every
// other member resolve the migrations of departed masters by the table
// this one holds (see resolveOp), retrying each while it is alive and
// this member is still master.
func (n *Node) resolveOthers() {
	t := n.view.table.Load()
	if t == nil {
		return
	}
	for _, m := range n.view.memberList() {
		if m.ID == n.view.id {
			continue
		}
		n.run.spawn(func() {
			pause := 10 * time.Millisecond
			deadline := time.Now().Add(resolveTimeout)
			for {
				ctx, cancel := n.run.stopContext(2 * time.Second)
				resp, err := n.ops.InvokeOnMember(ctx, engineService, &resolveOp{publishTableOp{table: t}}, m.ID)
				cancel()
				if err == nil {
					n.pub.adoptNewer(resp, m.Address)
					return
				}
				if !n.view.isMaster() || !n.view.hasMember(m.ID) || n.run.ctx.Err() != nil {
					return
				}
				if time.Now().After(deadline) {
					n.log.Warn("new master: a member did not resolve the migrations of the departed master", "member", m.Address, "error", err)
					return
				}
				n.log.Debug("resolve request failed; retrying", "to", m.Address, "error", err)
				if !n.run.backOff(&pause) {
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
	if ms := n.view.memberList(); len(ms) == 0 || ms[0].Address != ctx.Caller {
		return fmt.Errorf("resolve request from %s, which is not this member's master", ctx.Caller)
	}
	// tables.install queues the table's role changes on the partitions'
	// executors before it returns (and waits for a concurrent install):
	// the resolutions queued next run after them.
	var err error
	if op.newer, err = n.acceptTable(op.table, ctx.Caller); err != nil {
		return err
	}
	n.resolveDepartedMaster(true)
	return nil
}

// drain asks the master to move this member's partitions away and waits,
// until ctx ends, for the table to show it owns none.
func (n *Node) drain(ctx context.Context) {
	owned := func() int {
		if t := n.view.table.Load(); t != nil {
			return t.Counts()[n.view.id]
		}
		return 0
	}
	if len(n.view.memberList()) <= 1 || owned() == 0 {
		return
	}
	n.log.Info("graceful shutdown: moving partitions to other members", "owned", owned())
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var asked time.Time
	noTargets := 0 // answers in a row that every other member is leaving
	for owned() > 0 {
		if len(n.view.memberList()) <= 1 {
			// The others left meanwhile: nobody to hand over to.
			n.log.Warn("graceful shutdown: no other member left to take this member's partitions", "owned", owned())
			return
		}
		if time.Since(asked) > time.Second {
			// Ask again now and then: the master may have changed.
			asked = time.Now()
			ictx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := n.ops.InvokeOnMember(ictx, engineService, &leaveOp{member: n.view.id}, n.view.masterID())
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
	if n.view.isMaster() {
		n.pub.waitAllAcked(ctx)
	}
	n.log.Info("graceful shutdown: this member owns no partition")
}
