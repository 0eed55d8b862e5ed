package nodeengine

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// reviewHooks records, at each promotion's BeforeMigration, whether the
// partition was still refusing operations (it must be: tables.install marks a
// promoted partition migrating before the table becomes visible).
type reviewHooks struct {
	n        *Node
	open     atomic.Int64 // BeforeMigration saw the partition accepting operations
	promoted atomic.Int64
}

func (h *reviewHooks) PrepareReplicationOperation(spi.PartitionReplicationEvent) spi.Operation {
	return nil
}
func (h *reviewHooks) BeforeMigration(e spi.PartitionMigrationEvent) {
	h.promoted.Add(1)
	if !h.n.ops.IsMigrating(e.PartitionID) {
		h.open.Add(1)
	}
}
func (h *reviewHooks) CommitMigration(spi.PartitionMigrationEvent)   {}
func (h *reviewHooks) RollbackMigration(spi.PartitionMigrationEvent) {}
func (h *reviewHooks) ClearPartitionReplica(int)                     {}

func reviewTable(version int64, count int, owner, backup string) *partition.Table {
	t := &partition.Table{Version: version, Owners: make([]string, count), Backups: make([][]string, count),
		Members: map[string]string{"x": "x:1", "b": "b:1"}}
	for p := range t.Owners {
		t.Owners[p] = owner
		t.Backups[p] = []string{backup}
	}
	return t
}

// Two tables that both promote this member, installed at once (a master
// push on a generic executor and a migration push, or adoptNewer), must
// keep the partition refusing operations until its promotion ran: a task
// of the loser of tables.install that cleared the "migrating" mark the
// winner set, run before the winner's promotion task, would let the
// partition accept operations before BeforeMigration/CommitMigration and
// BumpEpoch ran.
func TestConcurrentInstallsKeepPromotedPartitionClosed(t *testing.T) {
	const count = 2048
	var open, promoted int64
	for trial := 0; trial < 1000 && open == 0; trial++ {
		h := &reviewHooks{}
		n := bareNode(count, []migrationAware{{name: "hooks", svc: h}}, nil)
		h.n = n
		n.ops.Start()
		n.view.table.Store(reviewTable(1, count, "x", "b")) // b backs every partition up
		block := make(chan struct{})
		n.ops.RunOnPartition(0, func() { <-block }) // hold the executor while both install
		t2, t3 := reviewTable(2, count, "b", ""), reviewTable(3, count, "b", "")
		var start, wg sync.WaitGroup
		start.Add(1)
		for _, tab := range []*partition.Table{t2, t3} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				n.tables.install(tab)
			}()
		}
		start.Done()
		wg.Wait()
		close(block)
		done := make(chan struct{})
		n.ops.RunOnPartition(0, func() { close(done) })
		<-done
		open += h.open.Load()
		promoted += h.promoted.Load()
		n.ops.Shutdown()
	}
	t.Logf("%d promotions, %d ran after the partition was already accepting operations", promoted, open)
	if open > 0 {
		t.Errorf("%d promoted partitions accepted operations before their promotion ran", open)
	}
}

// A member promoted by one table (BumpEpoch: its versions move to epoch
// 1) and made a plain backup of another primary by the next (no
// migration: was 0, now 1 in replicas.changes) must start over and sync:
// keeping its data and its epoch-1 version, above anything the real
// primary (epoch 0) stamps, runBackup would acknowledge every later backup
// as "already applied" without applying it, and anti-entropy only repairs
// backups that are behind. In a cluster this happens when a new master
// plans from a stale table and then adopts a newer one
// (TestReviewMasterDiesMidPublish in services/counter shows it under load).
func TestDemotedPrimaryResyncs(t *testing.T) {
	const count = 7
	n := bareNode(count, nil, nil)
	n.ops.Start()
	defer func() {
		n.run.cancel() // the syncs asked for give up
		n.teardownForTest()
		n.ops.Shutdown()
	}()
	drain := func() {
		done := make(chan struct{})
		n.ops.RunOnPartition(0, func() { close(done) })
		<-done
	}
	n.view.table.Store(reviewTable(1, count, "x", "b"))
	n.tables.install(reviewTable(2, count, "b", "")) // x died: b promoted
	drain()
	n.tables.install(reviewTable(3, count, "c", "b")) // a newer table: c is primary, b its backup
	drain()
	v := n.ops.ReplicaVersion(0)
	t.Logf("b: replica index %d, version %#x, syncs pending %d", n.view.replicaIndex(0), v, n.ops.SyncsPending())
	if n.view.replicaIndex(0) == 1 && v>>32 > 0 && n.ops.SyncsPending() == 0 {
		t.Errorf("b backs up c's partition with its own promotion epoch (version %#x) and no sync asked: c's backups (epoch 0) will be acknowledged as already applied", v)
	}
}

// A table that lists a member twice among one partition's replicas is
// never installed: it would count a backup copy that does not exist, and
// the primary would back every write up to that member twice (the
// planner once made [b, b] of a promotion with two backups). The table
// the member holds stays.
func TestInstallRefusesATableListingAMemberTwice(t *testing.T) {
	const count = 3
	n := bareNode(count, nil, nil)
	n.view.table.Store(reviewTable(1, count, "x", "b"))
	bad := reviewTable(2, count, "x", "b")
	for p := range bad.Backups {
		bad.Backups[p] = []string{"b", "b"}
	}
	if n.tables.install(bad) {
		t.Fatalf("installed a table whose backups are %q", bad.Backups[0])
	}
	if v := n.view.table.Load().Version; v != 1 {
		t.Fatalf("table version %d after the refused install, want 1", v)
	}
	good := reviewTable(3, count, "x", "b")
	if !n.tables.install(good) {
		t.Fatal("a valid newer table was refused")
	}
}

// teardownForTest stops the goroutines a bare test Node spawned.
func (n *Node) teardownForTest() {
	n.run.halt()
	n.run.wait()
}

// bareNode returns member "b" of a cluster of count partitions with no
// port, membership or loops, its parts wired as Start wires them around an
// operation service of one executor (not started). services are its
// migration-aware services; gap, when not nil, gets the operation
// service's replica gap callbacks.
func bareNode(count int, services []migrationAware, gap func(p int)) *Node {
	n := &Node{cfg: config.Default(), log: slog.New(slog.DiscardHandler), view: newClusterView(count),
		run: newRunner(context.Background()), migs: newMigrations(count), metrics: testMetrics(), migrationAware: services,
		sb: newSplitBrain()}
	n.view.id = "b"
	n.ops = operation.New(operation.Config{LocalID: "b", LocalAddress: "b:1", PartitionCount: count,
		PartitionThreads: 1, Routing: routing{n.view}, OnReplicaGap: gap})
	n.wire()
	return n
}

func testMetrics() engineMetrics {
	m, _ := newEngineMetrics()
	return m
}

// A member that becomes a backup replica resets it and waits for a full
// copy, on the partition's executor, after the table is visible. Until
// then its replica status must not say what the replica was: empty and
// not syncing is what a copy in sync says of a partition never written,
// and the master swapped such a replica in for the old, in-sync backup
// (or would promote it as in sync). It is reported syncing from before
// the table becomes visible.
func TestNewBackupReportsSyncingBeforeItsReset(t *testing.T) {
	const count = 5
	n := bareNode(count, nil, nil)
	n.ops.Start()
	defer func() {
		n.run.cancel() // the syncs asked for give up
		n.teardownForTest()
		n.ops.Shutdown()
	}()
	n.view.table.Store(reviewTable(1, count, "x", "c")) // b holds no replica
	block := make(chan struct{})
	n.ops.RunOnPartition(0, func() { <-block }) // the reset waits behind this
	n.tables.install(reviewTable(2, count, "x", "b"))
	check := func(when string) {
		t.Helper()
		_, tv, _, syncing, err := n.safety.statusAt(context.Background(), "b", "")
		if err != nil {
			t.Fatal(err)
		}
		for p, s := range syncing {
			if !s {
				t.Errorf("%s: table %d names b backup of partition %d, whose replica status says in sync", when, tv, p)
			}
		}
	}
	check("before the reset ran")
	close(block)
	done := make(chan struct{})
	n.ops.RunOnPartition(0, func() { close(done) })
	<-done
	check("after the reset")
}
