package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// clearLog records ClearPartitionReplica calls.
type clearLog struct{ cleared []int }

func (c *clearLog) PrepareReplicationOperation(spi.PartitionReplicationEvent) spi.Operation {
	return nil
}
func (c *clearLog) BeforeMigration(spi.PartitionMigrationEvent)   {}
func (c *clearLog) CommitMigration(spi.PartitionMigrationEvent)   {}
func (c *clearLog) RollbackMigration(spi.PartitionMigrationEvent) {}
func (c *clearLog) ClearPartitionReplica(p int)                   { c.cleared = append(c.cleared, p) }

// A destination that committed a migration waits for the table naming it.
// When the master then loses to a newer table and rolls the migration
// back, the destination stops waiting (no migration left in flight). It
// drops the data only if its table names no replica here; as owner or
// backup it keeps the data, its version and its exactly-once record (a
// table promoting it may be on its way).
func TestRollbackOfCommittedDestination(t *testing.T) {
	for _, tc := range []struct {
		owner, backup string
		wantClear     bool
	}{{"x", "", true}, {"b", "", false}, {"x", "b", false}} {
		cl := &clearLog{}
		n := bareNode(4, []migrationAware{{name: "log", svc: cl}}, nil)
		tab := reviewTable(5, 4, tc.owner, tc.backup)
		tab.Members["b"], tab.Members["x"] = "b:1", "x:1"
		n.view.table.Store(tab)
		mv := migration.Move{Partition: 2, Source: "x", Destination: "b", SourceNewIndex: -1, ID: 7}
		st := &migState{move: mv, endpoint: spi.MigrationDestination, event: eventFor(mv, spi.MigrationDestination), master: "m", committed: true}
		n.migs.set(2, st)
		n.ops.SetReplicaVersion(2, 42)
		ctx := &spi.OpContext{Service: n, PartitionID: 2}

		commit := &migFinishOp{move: mv, endpoint: spi.MigrationDestination, commit: true}
		if err := commit.Run(ctx); err != nil || n.migs.byPart[2] != st {
			t.Fatalf("owner %s: a repeated commit changed the state: %v", tc.owner, err)
		}
		rollback := &migFinishOp{move: mv, endpoint: spi.MigrationDestination}
		if err := rollback.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if n.migs.byPart[2] != nil || n.migs.active.Load() != 0 || len(n.migs.inFlight.describe()) != 0 {
			t.Fatalf("owner %s: the committed destination still has its migration in flight: %q", tc.owner, n.migs.inFlight.describe())
		}
		if cleared := len(cl.cleared) == 1 && cl.cleared[0] == 2; cleared != tc.wantClear {
			t.Fatalf("owner %s, backup %q: cleared %v, want the data dropped: %v", tc.owner, tc.backup, cl.cleared, tc.wantClear)
		}
		if v := n.ops.ReplicaVersion(2); (v == 42) == tc.wantClear {
			t.Fatalf("owner %s, backup %q: replica version %d after the rollback", tc.owner, tc.backup, v)
		}
	}
}

// A table that promotes the committed destination (it was a backup) marks
// the partition refusing operations until the promotion task ran; a
// rollback that runs first must leave that mark.
func TestRollbackOfCommittedDestinationKeepsPromotionMark(t *testing.T) {
	n := bareNode(4, nil, nil)
	n.view.table.Store(reviewTable(5, 4, "x", "b"))
	mv := migration.Move{Partition: 2, Source: "x", Destination: "b", DestinationIndex: 1, SourceNewIndex: 1, ID: 7}
	n.migs.set(2, &migState{move: mv, endpoint: spi.MigrationDestination, event: eventFor(mv, spi.MigrationDestination), master: "m", committed: true})
	n.ops.SetMigrating(2, true) // tables.install, promoting b
	rollback := &migFinishOp{move: mv, endpoint: spi.MigrationDestination}
	if err := rollback.Run(&spi.OpContext{Service: n, PartitionID: 2}); err != nil {
		t.Fatal(err)
	}
	if n.migs.byPart[2] != nil || !n.ops.IsMigrating(2) {
		t.Fatalf("after the rollback: state %v, refusing operations %v; want none, true", n.migs.byPart[2], n.ops.IsMigrating(2))
	}
}

// A source whose partition a newer table made a backup (of another
// primary) while its move ran keeps no history of its own when the move
// ends: it starts over and pulls a copy from the primary. A source that
// ends up the backup the move planned (a swap) keeps its data.
func TestDemotedSourceResyncs(t *testing.T) {
	for _, tc := range []struct {
		name     string
		newIndex int // the move's plan for the source
		commit   bool
		resync   bool
	}{
		{"rolled back, now a backup", -1, false, true},
		{"committed, not planned as a backup", -1, true, true},
		{"committed swap, the planned backup", 1, true, false},
	} {
		n := bareNode(4, nil, nil)
		n.ops.Start()
		n.view.table.Store(reviewTable(5, 4, "x", "b")) // b is now backup 1 of x
		mv := migration.Move{Partition: 2, Source: "b", Destination: "d", SourceNewIndex: tc.newIndex, ID: 7}
		n.migs.set(2, &migState{move: mv, endpoint: spi.MigrationSource, event: eventFor(mv, spi.MigrationSource), master: "m"})
		n.ops.SetReplicaVersion(2, 42)
		n.run.cancel() // the sync request gives up at once: no primary to reach here
		end := &migFinishOp{move: mv, endpoint: spi.MigrationSource, commit: tc.commit}
		if err := end.Run(&spi.OpContext{Service: n, PartitionID: 2}); err != nil {
			t.Fatal(err)
		}
		n.run.wait()
		n.ops.Shutdown()
		if v := n.ops.ReplicaVersion(2); (v == 0) != tc.resync {
			t.Errorf("%s: replica version %d after the move ended; want a resync: %v", tc.name, v, tc.resync)
		}
	}
}

// A committed destination whose master departed keeps its migration and
// data when it resolves by its own table (the table naming it owner may
// not have reached it yet). The new master's resolveOp, refused from a
// member that is not its master, resolves it by the table it carries.
func TestCommittedDestinationWaitsForNewMaster(t *testing.T) {
	cl := &clearLog{}
	n := bareNode(4, []migrationAware{{name: "log", svc: cl}}, nil)
	n.ops.Start()
	defer n.ops.Shutdown()
	members := []spi.Member{{ID: "x", Address: "x:1"}, {ID: "b", Address: "b:1"}} // "m" is gone
	n.view.members.Store(&members)
	n.view.table.Store(reviewTable(5, 4, "x", ""))
	mv := migration.Move{Partition: 2, Source: "x", Destination: "b", SourceNewIndex: -1, ID: 7}
	st := &migState{move: mv, endpoint: spi.MigrationDestination, event: eventFor(mv, spi.MigrationDestination), master: "m", committed: true}
	n.migs.set(2, st)
	sync := func() { waitPartition(n, 2) }
	n.resolveDepartedMaster(false)
	sync()
	if n.migs.byPart[2] != st || len(cl.cleared) != 0 {
		t.Fatalf("resolved by its own table: state %v, cleared %v", n.migs.byPart[2], cl.cleared)
	}
	op := &resolveOp{publishTableOp{table: reviewTable(6, 4, "x", "")}}
	if err := op.Run(&spi.OpContext{Service: n, Caller: "y:1"}); err == nil {
		t.Fatal("a resolve request from a member that is not the master was accepted")
	}
	sync()
	if n.migs.byPart[2] != st || n.view.table.Load().Version != 5 {
		t.Fatalf("a refused resolve request changed the state (%v) or the table (version %d)", n.migs.byPart[2], n.view.table.Load().Version)
	}
	if err := op.Run(&spi.OpContext{Service: n, Caller: "x:1"}); err != nil {
		t.Fatal(err)
	}
	sync()
	if n.view.table.Load().Version != 6 || n.migs.byPart[2] != nil || n.migs.active.Load() != 0 {
		t.Fatalf("after the master's resolve request: table version %d, state %v", n.view.table.Load().Version, n.migs.byPart[2])
	}
	if len(cl.cleared) != 1 || cl.cleared[0] != 2 {
		t.Fatalf("cleared %v; want partition 2 dropped (the table names no replica here)", cl.cleared)
	}
}

// waitPartition returns once partition p's executor has run what was
// queued before.
func waitPartition(n *Node, p int) {
	done := make(chan struct{})
	n.ops.RunOnPartition(p, func() { close(done) })
	<-done
}

// A source whose master departed keeps refusing operations when it
// resolves by its own table (which may predate the one naming the
// destination owner: rolling back would make it serve the partition beside
// the destination, both stamping backups with the same versions). The new
// master's resolveOp resolves it by the table it carries. See
// services/counter TestReviewStaleSourceReopensAndItsBackupIsAckedUnapplied
// for the acknowledged increment this lost.
func TestSourceWaitsForNewMaster(t *testing.T) {
	for _, tc := range []struct {
		name      string
		owner     string // in the new master's table
		wantClear bool
	}{
		{"newest table names the destination", "d", true},
		{"newest table still names the source", "b", false},
	} {
		cl := &clearLog{}
		n := bareNode(4, []migrationAware{{name: "log", svc: cl}}, nil)
		n.ops.Start()
		members := []spi.Member{{ID: "x", Address: "x:1"}, {ID: "b", Address: "b:1"}} // master "m" is gone
		n.view.members.Store(&members)
		n.view.table.Store(reviewTable(5, 4, "b", "x")) // b's own, possibly stale
		mv := migration.Move{Partition: 2, Source: "b", Destination: "d", SourceNewIndex: -1, ID: 7}
		st := &migState{move: mv, endpoint: spi.MigrationSource, event: eventFor(mv, spi.MigrationSource), master: "m"}
		n.migs.set(2, st)
		sync := func() { waitPartition(n, 2) }
		n.resolveDepartedMaster(false)
		sync()
		if n.migs.byPart[2] != st || !n.ops.IsMigrating(2) {
			t.Fatalf("%s: resolved by its own table: state %v, refusing operations %v; want the move kept, refusing",
				tc.name, n.migs.byPart[2], n.ops.IsMigrating(2))
		}
		newest := reviewTable(6, 4, tc.owner, "x")
		newest.Members["d"] = "d:1"
		op := &resolveOp{publishTableOp{table: newest}}
		if err := op.Run(&spi.OpContext{Service: n, Caller: "x:1"}); err != nil {
			t.Fatal(err)
		}
		sync()
		if n.migs.byPart[2] != nil || n.migs.active.Load() != 0 || n.ops.IsMigrating(2) {
			t.Fatalf("%s: after the master's resolve request: state %v, refusing operations %v", tc.name, n.migs.byPart[2], n.ops.IsMigrating(2))
		}
		if cleared := len(cl.cleared) > 0 && cl.cleared[len(cl.cleared)-1] == 2; cleared != tc.wantClear {
			t.Fatalf("%s: cleared %v; want partition 2 dropped: %v", tc.name, cl.cleared, tc.wantClear)
		}
		n.ops.Shutdown()
	}
}

// A destination asked to commit a move it no longer holds (it rolled it
// back on its own, taking its master for gone) says so, unless its table
// names it owner (a repeated commit after the table arrived); commits it
// holds, repeated commits of a committed move and rollbacks of anything
// are done as before.
func TestCommitOfAMoveTheDestinationRolledBack(t *testing.T) {
	n := bareNode(4, []migrationAware{{name: "log", svc: &clearLog{}}}, nil)
	n.ops.Start()
	defer n.ops.Shutdown()
	n.view.table.Store(reviewTable(5, 4, "x", ""))
	mv := migration.Move{Partition: 2, Source: "x", Destination: "b", SourceNewIndex: -1, DestinationIndex: -1, ID: 7}
	finish := func(ep spi.MigrationEndpoint, commit bool) bool {
		op := &migFinishOp{move: mv, endpoint: ep, commit: commit}
		done := make(chan bool, 1)
		n.ops.RunOnPartition(2, func() {
			op.Run(&spi.OpContext{Service: n, PartitionID: 2})
			done <- op.Response().(bool)
		})
		return <-done
	}
	n.ops.RunOnPartition(2, func() {
		n.migs.set(2, &migState{move: mv, endpoint: spi.MigrationDestination, event: eventFor(mv, spi.MigrationDestination), master: "x"})
		n.migs.end(2, false) // rolled back on its own
	})
	if finish(spi.MigrationDestination, true) {
		t.Fatal("a commit of a move the destination rolled back was taken")
	}
	if !finish(spi.MigrationDestination, false) || !finish(spi.MigrationSource, true) {
		t.Fatal("a rollback, or a source's commit, of a move that ended was refused")
	}
	n.ops.RunOnPartition(2, func() {
		n.migs.set(2, &migState{move: mv, endpoint: spi.MigrationDestination, event: eventFor(mv, spi.MigrationDestination), master: "x"})
	})
	if !finish(spi.MigrationDestination, true) || !finish(spi.MigrationDestination, true) {
		t.Fatal("a commit of a move the destination holds, or its repetition, was refused")
	}
	n.view.table.Store(reviewTable(6, 4, "b", ""))
	waitPartition(n, 2)
	n.ops.RunOnPartition(2, func() { n.migs.set(2, nil) }) // the table named it: its wait ended
	if !finish(spi.MigrationDestination, true) {
		t.Fatal("a commit repeated after the table named the destination was refused")
	}
}

// A move is started only by this member's master. A member that froze as
// master and came back after the others declared it dead planned moves
// from its old table; a source that took one held it forever (no
// resolution follows a member that is not its master) and refused every
// move of that partition the real master planned (CI saw the planner
// retry one every 250 ms for a minute).
func TestMoveFromAMemberThatIsNotMasterIsRefused(t *testing.T) {
	n := bareNode(4, []migrationAware{{name: "log", svc: &clearLog{}}}, nil)
	members := []spi.Member{{ID: "x", Address: "x:1"}, {ID: "b", Address: "b:1"}}
	n.view.members.Store(&members)
	n.view.table.Store(reviewTable(5, 4, "b", "x"))
	ctx := &spi.OpContext{Service: n, PartitionID: 2, Caller: "m:1"}
	out := migration.Move{Source: "b", Destination: "d", SourceNewIndex: -1, ID: 7}
	if err := (&migPrepareOp{move: out, master: "m"}).Run(ctx); err == nil || !strings.Contains(err.Error(), "not this member's master") {
		t.Fatalf("prepare from a member that is not the master: %v", err)
	}
	in := migration.Move{Source: "x", Destination: "b", DestinationIndex: -1, SourceNewIndex: -1, ID: 8}
	if err := (&migApplyOp{move: in, master: "m"}).Run(ctx); err == nil || !strings.Contains(err.Error(), "not this member's master") {
		t.Fatalf("apply from a member that is not the master: %v", err)
	}
	if n.migs.byPart[2] != nil || n.migs.active.Load() != 0 || n.ops.IsMigrating(2) {
		t.Fatalf("a refused move left state %v, refusing operations %v", n.migs.byPart[2], n.ops.IsMigrating(2))
	}
	if err := (&migPrepareOp{move: out, master: "x"}).Run(ctx); err != nil {
		t.Fatalf("prepare from the master: %v", err)
	}
	if st := n.migs.byPart[2]; st == nil || st.master != "x" {
		t.Fatalf("prepare from the master left state %v", st)
	}
}

// A source move of a departed master that no resolution reached (this
// member's master changed to one that was master already) is rolled back
// when the master asks this member, which its own table also names owner,
// for another move; it is kept while its own table names another owner
// (the newest table may name the move's destination: see
// TestSourceWaitsForNewMaster).
func TestOrphanSourceMoveEndsWhenTheMasterPlansFromThisOwner(t *testing.T) {
	for _, tc := range []struct {
		owner   string // in this member's table
		resolve bool
	}{{"b", true}, {"d", false}} {
		n := bareNode(4, []migrationAware{{name: "log", svc: &clearLog{}}}, nil)
		members := []spi.Member{{ID: "x", Address: "x:1"}, {ID: "b", Address: "b:1"}} // "m" is gone
		n.view.members.Store(&members)
		n.view.table.Store(reviewTable(5, 4, tc.owner, "x"))
		orphan := migration.Move{Partition: 2, Source: "b", Destination: "d", SourceNewIndex: -1, ID: 7}
		n.migs.set(2, &migState{move: orphan, endpoint: spi.MigrationSource, event: eventFor(orphan, spi.MigrationSource), master: "m"})
		next := migration.Move{Source: "b", Destination: "e", SourceNewIndex: -1, ID: 9}
		err := (&migPrepareOp{move: next, master: "x"}).Run(&spi.OpContext{Service: n, PartitionID: 2, Caller: "x:1"})
		st := n.migs.byPart[2]
		if tc.resolve && (err != nil || st == nil || st.master != "x" || n.migs.active.Load() != 1) {
			t.Fatalf("owner %s: the master's move after the orphan: %v, state %v", tc.owner, err, st)
		}
		if !tc.resolve && (err == nil || st == nil || st.master != "m") {
			t.Fatalf("owner %s: the orphan was ended by a table naming another owner: %v, state %v", tc.owner, err, st)
		}
	}
}

// A move of an older term than this member's table is refused, even while
// this member's list still names its master: another master took over (or
// this one did again), and the move's table naming the destination owner
// would never be installed here (CI saw a destination commit such a move
// and wait 30 s for its table).
func TestMoveFromAReplacedMasterIsRefused(t *testing.T) {
	n := bareNode(4, []migrationAware{{name: "log", svc: &clearLog{}}}, nil)
	members := []spi.Member{{ID: "x", Address: "x:1"}, {ID: "b", Address: "b:1"}}
	n.view.members.Store(&members)
	inTerm3 := func(owner string) *partition.Table { t := reviewTable(5, 4, owner, "x"); t.Term = 3; return t }
	n.view.table.Store(inTerm3("b"))
	ctx := &spi.OpContext{Service: n, PartitionID: 2, Caller: "x:1"}
	out := migration.Move{Source: "b", Destination: "d", SourceNewIndex: -1, ID: 7, Term: 2}
	if err := (&migPrepareOp{move: out, master: "x"}).Run(ctx); err == nil || !strings.Contains(err.Error(), "older than this member's table (term 3)") {
		t.Fatalf("prepare of a move of an older term: %v", err)
	}
	in := migration.Move{Source: "d", Destination: "b", DestinationIndex: -1, SourceNewIndex: -1, ID: 8, Term: 2}
	n.view.table.Store(inTerm3("d"))
	if err := (&migApplyOp{move: in, master: "x"}).Run(ctx); err == nil || !strings.Contains(err.Error(), "older than this member's table (term 3)") {
		t.Fatalf("apply of a move of an older term: %v", err)
	}
	if n.migs.byPart[2] != nil || n.migs.active.Load() != 0 || n.ops.IsMigrating(2) {
		t.Fatalf("a refused move left state %v, refusing operations %v", n.migs.byPart[2], n.ops.IsMigrating(2))
	}
	in.Term = 3
	if err := (&migApplyOp{move: in, master: "x", data: snapshotOf(t, n, 2)}).Run(ctx); err != nil {
		t.Fatalf("apply of a move of this member's term: %v", err)
	}
	if st := n.migs.byPart[2]; st == nil || st.move.Term != 3 {
		t.Fatalf("apply of the master's move left state %v", st)
	}
}

// A move of an older term ends when a table of a newer term is installed
// (its master was replaced, or took over again), by that table, as the
// new master's resolution would end it: a committed destination is
// abandoned (data kept as the backup the table makes it, dropped if
// none); one not committed commits if the table names it owner (a repair
// promoted it), else rolls back; a source commits (drops) if the table
// names another owner, else rolls back and keeps its data. A newer table
// of the move's own term ends nothing (see TestSourceWaitsForNewMaster).
func TestMoveOfAReplacedMasterEndsAtANewerTerm(t *testing.T) {
	for _, tc := range []struct {
		name          string
		term          uint64 // of the installed table; the move's is 1
		owner, backup string // in the installed table
		ep            spi.MigrationEndpoint
		committed     bool
		ends          bool
		wantClear     bool
	}{
		{"committed, no replica here", 2, "c", "x", spi.MigrationDestination, true, true, true},
		{"committed, a backup here", 2, "c", "b", spi.MigrationDestination, true, true, false},
		{"not committed", 2, "c", "x", spi.MigrationDestination, false, true, true},
		{"not committed, owner now", 2, "b", "x", spi.MigrationDestination, false, true, false},
		{"committed, same term", 1, "c", "x", spi.MigrationDestination, true, false, false},
		{"source, another owner now", 2, "c", "x", spi.MigrationSource, false, true, true},
		{"source, still the owner", 2, "b", "x", spi.MigrationSource, false, true, false},
		{"source, same term", 1, "c", "x", spi.MigrationSource, false, false, false},
		{"source, its master still master", 2, "c", "x", spi.MigrationSource, false, false, false},
	} {
		cl := &clearLog{}
		n := bareNode(4, []migrationAware{{name: "log", svc: cl}}, nil)
		n.ops.Start()
		old := reviewTable(5, 4, "c", "x")
		old.Term, old.Members["c"] = 1, "c:1"
		n.view.table.Store(old)
		mv := migration.Move{Partition: 2, Source: "c", Destination: "b", DestinationIndex: -1, SourceNewIndex: -1, ID: 7, Term: 1}
		if tc.ep == spi.MigrationSource {
			mv.Source, mv.Destination = "b", "c"
		}
		master := "m" // replaced: not in the member list
		if strings.HasSuffix(tc.name, "its master still master") {
			members := []spi.Member{{ID: "x", Address: "x:1"}, {ID: "b", Address: "b:1"}}
			n.view.members.Store(&members)
			master = "x"
		}
		st := &migState{move: mv, endpoint: tc.ep, event: eventFor(mv, tc.ep), master: master, committed: tc.committed}
		n.ops.RunOnPartition(2, func() { n.migs.set(2, st) })
		n.ops.SetReplicaVersion(2, 42)
		newer := reviewTable(6, 4, tc.owner, tc.backup)
		newer.Term, newer.Members["c"] = tc.term, "c:1"
		if !n.tables.install(newer) {
			t.Fatalf("%s: the table was not installed", tc.name)
		}
		waitPartition(n, 2)
		if ended := n.migs.byPart[2] == nil; ended != tc.ends {
			t.Fatalf("%s: migration ended %v, want %v (state %v)", tc.name, ended, tc.ends, n.migs.byPart[2])
		}
		if tc.ends && (n.migs.active.Load() != 0 || n.ops.IsMigrating(2)) {
			t.Fatalf("%s: active %d, refusing operations %v after the move ended", tc.name, n.migs.active.Load(), n.ops.IsMigrating(2))
		}
		if cleared := slices.Contains(cl.cleared, 2); cleared != tc.wantClear {
			t.Fatalf("%s: cleared %v; want partition 2 dropped: %v", tc.name, cl.cleared, tc.wantClear)
		}
		if !tc.wantClear && n.ops.ReplicaVersion(2) != 42 {
			t.Fatalf("%s: replica version %d; want the data kept", tc.name, n.ops.ReplicaVersion(2))
		}
		n.run.cancel()
		n.run.wait()
		n.ops.Shutdown()
	}
}

// snapshotOf returns partition p's snapshot on n, as a source sends it.
func snapshotOf(t *testing.T, n *Node, p int) []byte {
	t.Helper()
	w := spi.NewWriter(nil)
	if err := n.migs.snaps.append(w, p, 0, "b"); err != nil {
		t.Fatal(err)
	}
	return w.Bytes()
}

// A master that took over again (a new term of its own) and pushes a
// table of its earlier term finds the member holding its newer one: that
// table was made from the pushed one or a later one, so the push counts
// as held (before, the move's source was never committed and refused its
// partition's operations). Only a newer term of another master is
// migration.ErrSuperseded (TestManagerSupersededAtPublish).
func TestPushMeetsThisMastersNewerTerm(t *testing.T) {
	a := startBare(t)
	defer a.Shutdown(context.Background())
	b := startBare(t, a.Address())
	defer b.Shutdown(context.Background())
	waitFor(t, func() error {
		if ta, tb := a.view.table.Load(), b.view.table.Load(); tb == nil || ta.Version != tb.Version || !b.view.hasMember(a.ID()) {
			return errors.New("b does not hold a's table yet")
		}
		return nil
	})
	old := a.view.table.Load()
	newer := old.Clone()
	newer.Term, newer.Version = old.Term+1, old.Version+1
	a.pub.mu.Lock()
	a.pub.ownTerm = newer.Term // as startTerm does
	a.pub.mu.Unlock()
	if !a.tables.install(newer) {
		t.Fatal("a did not install its new term's table")
	}
	waitFor(t, func() error {
		if tb := b.view.table.Load(); tb.Term != newer.Term {
			return fmt.Errorf("b holds term %d", tb.Term)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := (masterEngine{a}).Push(ctx, old, b.ID()); err != nil {
		t.Fatalf("push of the master's earlier term to a member holding its newer one: %v", err)
	}
}
