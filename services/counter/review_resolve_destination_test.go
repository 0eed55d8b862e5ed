package counter_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// The master dies after a destination that is not the next master
// committed a move, while the table naming it owner reached the source and
// the next master but not the destination. The destination must not
// resolve the move by its own, older table (it would drop the data it
// took over, and the source, by the newer table, dropped its copy): it
// waits for the new master. Without backups the increments were gone.
func TestReviewCommittedDestinationWaitsForNewMaster(t *testing.T) {
	c, inc, names := fourMembersOneWriteOnLast(t)
	a, b, cc, d := c.Member(0), c.Member(1), c.Member(2), c.Member(3)
	// c never gets a table from a again: the moves to it commit on it,
	// but the tables naming it owner reach only the other members.
	hold := make(chan struct{})
	c.AddFault(&clustertest.Fault{From: a.ID(), To: cc.ID(), Kind: "table.publish", Hold: hold, Drop: true})
	done := make(chan struct{})
	go func() { defer close(done); c.Shutdown(3) }() // d's partitions move to a, b, c
	waiting := map[int]bool{}                        // b and d hold a table naming c owner, c one naming d
	find := func() int {
		bt, ct, dt := b.Inspect().Table(), cc.Inspect().Table(), d.Inspect().Table()
		k := 0
		for p := range ct.Owners {
			waiting[p] = bt.Owner(p) == cc.ID() && dt.Owner(p) == cc.ID() && ct.Owner(p) == d.ID()
			if waiting[p] {
				k++
			}
		}
		return k
	}
	clustertest.Eventually(t, 20*time.Second, func() error {
		if find() == 0 {
			return fmt.Errorf("no move to c committed in the tables of b and d only")
		}
		return nil
	})
	find() // c's table does not change; b's and d's only get newer
	// b, the next master, pushes its table late to c: c notices a's death
	// before a table naming it owner arrives.
	late := c.AddFault(&clustertest.Fault{From: b.ID(), To: cc.ID(), Kind: "table.publish", Delay: 500 * time.Millisecond})
	newest := d.Inspect().Table().Version
	c.Kill(0) // without backups a's own partitions are lost: not counted
	close(hold)
	clustertest.Eventually(t, 10*time.Second, func() error {
		if v := cc.Inspect().Table().Version; v < newest {
			return fmt.Errorf("c at version %d, the newest table was %d", v, newest)
		}
		return nil
	})
	late()
	<-done
	c.WaitStable()
	checked := 0
	for _, n := range names {
		if p := b.Partitions().PartitionID(n); waiting[p] {
			checked++
			if v, err := inc(n); v != 2 {
				t.Errorf("counter %s (partition %d) = %d after a second increment (%v): want 2", n, p, v, err)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no counter on a partition whose move to c was waiting for its table")
	}
}
