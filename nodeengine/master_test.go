package nodeengine_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// The master dies while its last tables have reached the other members but
// not the next master, whose answers to its own table pushes are then slow.
// The next master must not plan from its stale table: a move planned from
// it commits on a destination whose newer table does not name it (the
// master's push of the table naming it is answered with the newer table,
// and the destination waits forever: never cluster safe), and the source
// drops data that the newer table still gives it.
func TestNewMasterPlansFromNewestTable(t *testing.T) {
	c := clustertest.New(t, 3, clustertest.WithTimeout(15*time.Second), clustertest.WithConfig(func(i int, cfg *config.Config) {
		if i == 1 {
			cfg.Migration.Parallel = 1 // the next master's table versions grow slowly
		}
	}))
	a, b, cc := c.Member(0), c.Member(1), c.Member(2)
	hold := make(chan struct{})
	remove := c.AddFault(&clustertest.Fault{From: a.ID(), To: b.ID(), Kind: "table.publish", Hold: hold})
	d := c.AddMember()
	clustertest.Eventually(t, 20*time.Second, func() error {
		bv, dt := b.Inspect().Table().Version, d.Inspect().Table()
		if dt == nil || cc.Inspect().Table().Version <= bv+1 || dt.Version <= bv+3 {
			return fmt.Errorf("c at %d, b at %d, d not more than 3 versions ahead of b", cc.Inspect().Table().Version, bv)
		}
		return nil
	})
	// The answers to the next master's pushes come late until it has
	// taken over and holds the newest table: a master that does not wait
	// for them plans from its own, older one meanwhile.
	newest := d.Inspect().Table().Version
	slow := c.AddFault(&clustertest.Fault{From: b.ID(), Kind: "table.publish", Responses: true, Delay: 300 * time.Millisecond})
	c.Kill(0)
	remove()
	close(hold)
	clustertest.Eventually(t, 20*time.Second, func() error {
		if !b.Inspect().IsMaster() || b.Inspect().Table().Version < newest {
			return fmt.Errorf("b master %v at version %d, the newest table was %d", b.Inspect().IsMaster(), b.Inspect().Table().Version, newest)
		}
		return nil
	})
	slow()
	c.WaitStable()
}
