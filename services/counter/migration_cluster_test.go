package counter_test

import (
	"testing"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// The counter end to end through migrations: members join one by one
// under load (1 -> 6), and every counter ends at exactly its acknowledged
// increments, on balanced members that hold no counter they do not
// replicate. (The engine's rebalance tests are in nodeengine.)
func TestJoinUnderLoadIsExact(t *testing.T) {
	c := clustertest.New(t, 1)
	l := clusterload.Start(t, counters, 32, 1000, clusterload.AnyMember(c))
	l.WaitOps(t, 2000)
	for _, size := range []int{2, 3, 4, 5, 6} { // 1 -> 2 -> 4 -> 6, one by one
		c.AddMember()
		c.WaitStable()
		l.WaitOps(t, 1000)
		t.Logf("%d members stable, %d operations so far", size, l.Ops())
	}
	l.Verify(t, c)
}
