package nodeengine_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// Backups between two members are dropped for a while, then delayed (and
// so reordered): the backup replicas notice the gaps, resynchronise from
// their primaries, and end equal to them.
func TestLostAndReorderedBackupsAreRepaired(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	a, b := c.Member(0), c.Member(1)
	l := startLoad(t, 16, 200, clusterload.AnyMember(c))
	l.WaitOps(t, 1000)
	// Synchronous backups that are dropped are retried, so writes wait
	// while the fault lasts: count drops, not operations.
	drop := &clustertest.Fault{From: a.ID(), To: b.ID(), Kind: "backup/", Drop: true}
	remove := c.AddFault(drop)
	clustertest.Eventually(t, 30*time.Second, func() error {
		if n := drop.Hits(); n < 200 {
			return fmt.Errorf("%d backups dropped so far", n)
		}
		return nil
	})
	remove()
	remove = c.AddFault(&clustertest.Fault{From: b.ID(), To: a.ID(), Kind: "backup/", Delay: 2 * time.Millisecond})
	l.WaitOps(t, 2000)
	remove()
	l.WaitOps(t, 1000)
	l.VerifyAfterFailure(t, c)
}
