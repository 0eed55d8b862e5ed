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
// partition was still refusing operations (it must be: installTable marks a
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

// Review finding: two tables that both promote this member, installed at
// once (a master push on a generic executor and a migration push, or
// adoptNewer), make the loser of installTable's CompareAndSwap queue a task
// that clears the "migrating" mark the winner set; when that task runs
// before the winner's promotion task, the partition accepts operations
// before BeforeMigration/CommitMigration and BumpEpoch ran.
func TestReviewConcurrentInstallOpensPromotedPartitionEarly(t *testing.T) {
	const count = 2048
	var open, promoted int64
	for trial := 0; trial < 1000 && open == 0; trial++ {
		n := &Node{id: "b", count: count, log: slog.New(slog.DiscardHandler), migs: make([]*migState, count), metrics: testMetrics(), ctx: context.Background()}
		n.ops = operation.New(operation.Config{LocalID: "b", LocalAddress: "b:1", PartitionCount: count,
			PartitionThreads: 1, Routing: n})
		h := &reviewHooks{n: n}
		n.migrationAware = []migrationAware{{name: "hooks", svc: h}}
		n.ops.Start()
		n.table.Store(reviewTable(1, count, "x", "b")) // b backs every partition up
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
				n.installTable(tab)
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

// Review finding: a member promoted by one table (BumpEpoch: its versions
// move to epoch 1) and made a plain backup of another primary by the next
// (no migration: was 0, now 1 in replicaChanges) keeps its data and its
// epoch-1 version. It asks for no sync, and since its version is above
// anything the real primary (epoch 0) stamps, runBackup acknowledges every
// later backup as "already applied" without applying it; anti-entropy only
// repairs backups that are behind. In a cluster this happens when a new
// master plans from a stale table and then adopts a newer one
// (TestReviewMasterDiesMidPublish in services/counter shows it under load).
func TestReviewDemotedPrimaryKeepsForeignHistory(t *testing.T) {
	const count = 7
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{id: "b", count: count, log: slog.New(slog.DiscardHandler), migs: make([]*migState, count), metrics: testMetrics(), ctx: ctx,
		cfg: config.Default()}
	n.ops = operation.New(operation.Config{LocalID: "b", LocalAddress: "b:1", PartitionCount: count,
		PartitionThreads: 1, Routing: n})
	n.ops.Start()
	defer func() {
		cancel() // the syncs asked for give up
		n.teardownForTest()
		n.ops.Shutdown()
	}()
	drain := func() {
		done := make(chan struct{})
		n.ops.RunOnPartition(0, func() { close(done) })
		<-done
	}
	n.table.Store(reviewTable(1, count, "x", "b"))
	n.installTable(reviewTable(2, count, "b", "")) // x died: b promoted
	drain()
	n.installTable(reviewTable(3, count, "c", "b")) // a newer table: c is primary, b its backup
	drain()
	v := n.ops.ReplicaVersion(0)
	t.Logf("b: replica index %d, version %#x, syncs pending %d", n.ReplicaIndex(0), v, n.ops.SyncsPending())
	if n.ReplicaIndex(0) == 1 && v>>32 > 0 && n.ops.SyncsPending() == 0 {
		t.Errorf("b backs up c's partition with its own promotion epoch (version %#x) and no sync asked: c's backups (epoch 0) will be acknowledged as already applied", v)
	}
}

// teardownForTest stops the goroutines a bare test Node spawned.
func (n *Node) teardownForTest() {
	n.spawnMu.Lock()
	n.stopping = true
	n.spawnMu.Unlock()
	n.wg.Wait()
}

func testMetrics() engineMetrics {
	m, _ := newEngineMetrics()
	return m
}
