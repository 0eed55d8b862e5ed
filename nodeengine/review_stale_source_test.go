package nodeengine

import (
	"context"
	"log/slog"
	"testing"

	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
)

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
		n := &Node{id: "b", count: 4, log: slog.New(slog.DiscardHandler), migs: make([]*migState, 4), metrics: testMetrics(), ctx: context.Background()}
		n.ops = operation.New(operation.Config{LocalID: "b", LocalAddress: "b:1", PartitionCount: 4, PartitionThreads: 1, Routing: n})
		n.ops.Start()
		members := []spi.Member{{ID: "x", Address: "x:1"}, {ID: "b", Address: "b:1"}} // master "m" is gone
		n.members.Store(&members)
		cl := &clearLog{}
		n.migrationAware = []migrationAware{{name: "log", svc: cl}}
		n.table.Store(reviewTable(5, 4, "b", "x")) // b's own, possibly stale
		mv := migration.Move{Partition: 2, Source: "b", Destination: "d", SourceNewIndex: -1, ID: 7}
		st := &migState{move: mv, endpoint: spi.MigrationSource, event: n.eventFor(mv, spi.MigrationSource), master: "m"}
		n.setMig(2, st)
		sync := func() { waitPartition(n, 2) }
		n.resolveDepartedMaster(false)
		sync()
		if n.migs[2] != st || !n.ops.IsMigrating(2) {
			t.Fatalf("%s: resolved by its own table: state %v, refusing operations %v; want the move kept, refusing",
				tc.name, n.migs[2], n.ops.IsMigrating(2))
		}
		newest := reviewTable(6, 4, tc.owner, "x")
		newest.Members["d"] = "d:1"
		op := &resolveOp{publishTableOp{table: newest}}
		if err := op.Run(&spi.OpContext{Service: n, Caller: "x:1"}); err != nil {
			t.Fatal(err)
		}
		sync()
		if n.migs[2] != nil || n.migActive.Load() != 0 || n.ops.IsMigrating(2) {
			t.Fatalf("%s: after the master's resolve request: state %v, refusing operations %v", tc.name, n.migs[2], n.ops.IsMigrating(2))
		}
		if cleared := len(cl.cleared) > 0 && cl.cleared[len(cl.cleared)-1] == 2; cleared != tc.wantClear {
			t.Fatalf("%s: cleared %v; want partition 2 dropped: %v", tc.name, cl.cleared, tc.wantClear)
		}
		n.ops.Shutdown()
	}
}
