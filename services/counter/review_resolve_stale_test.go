package counter_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// Review finding (session 5): the next master resolved the dead master's
// half-done moves with its own stale table, before its take-over gate had
// learnt the newest one: as a committed destination it dropped the data,
// then adopted the table naming it owner (and the source, by that table,
// had dropped its copy). Without backups the increments were gone.
func TestReviewNewMasterResolvesWithStaleTable(t *testing.T) {
	c, inc, names := fourMembersOneWriteOnLast(t)
	a, b, cc, d := c.Member(0), c.Member(1), c.Member(2), c.Member(3)
	hold := make(chan struct{})
	remove := c.AddFault(&clustertest.Fault{From: a.ID(), To: b.ID(), Kind: "table.publish", Hold: hold})
	done := make(chan struct{})
	go func() { defer close(done); c.Shutdown(3) }() // d's partitions move to a, b, c
	stale := map[int]bool{}                          // b owns it in a's newest table, d in b's
	clustertest.Eventually(t, 20*time.Second, func() error {
		for p, o := range a.Inspect().Table().Owners {
			stale[p] = o == b.ID() && b.Inspect().Table().Owner(p) == d.ID()
			if stale[p] {
				return nil
			}
		}
		return fmt.Errorf("no move to b committed in a's table only")
	})
	v := a.Inspect().Table().Version
	clustertest.Eventually(t, 10*time.Second, func() error { // a's publish loop reaches c and d
		for _, m := range []*nodeengine.Node{cc, d} {
			if tb := m.Inspect().Table(); tb == nil || tb.Version < v {
				return fmt.Errorf("%s has not got version %d yet", m.Address(), v)
			}
		}
		return nil
	})
	for p, o := range a.Inspect().Table().Owners {
		stale[p] = o == b.ID() && b.Inspect().Table().Owner(p) == d.ID()
	}
	c.Kill(0) // without backups a's own partitions are lost: not counted
	remove()
	close(hold)
	<-done
	c.WaitStable()
	for _, n := range names {
		if stale[b.Partitions().PartitionID(n)] {
			if v, err := inc(n); v != 2 {
				t.Errorf("counter %s (partition %d) = %d after a second increment (%v): want 2", n, b.Partitions().PartitionID(n), v, err)
			}
		}
	}
}

// fourMembersOneWriteOnLast starts 4 members without backups (so a lost
// copy is lost for good) and increments, through member 1, 300 counters
// owned by member 3; inc increments one again through member 1.
func fourMembersOneWriteOnLast(t *testing.T) (c *clustertest.Cluster, inc func(name string) (int64, error), names []string) {
	c = clustertest.New(t, 4, clustertest.WithConfig(func(_ int, cfg *config.Config) { cfg.Partitions.BackupCount = 0 }))
	b, d := c.Member(1), c.Member(3)
	ctx := context.Background()
	inc = func(n string) (int64, error) {
		o, err := b.Proxies().Get(ctx, counter.ServiceName, n)
		if err != nil {
			return 0, err
		}
		return o.(*counter.Counter).Inc(ctx, 1)
	}
	for k := 0; len(names) < 300; k++ {
		if n := fmt.Sprint("r-", k); d.Inspect().Table().Owner(d.Partitions().PartitionID(n)) == d.ID() {
			if _, err := inc(n); err != nil {
				t.Fatal(err)
			}
			names = append(names, n)
		}
	}
	return c, inc, names
}
