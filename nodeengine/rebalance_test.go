package nodeengine_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine"
)

// Rebalancing under load: members join or leave gracefully while
// increments go on; each is counted exactly once and the partitions end
// balanced, with no data left behind.

// A member joins three under load with one synchronous backup: backup
// replicas move to it while writes go on. No write waits on a backup
// target that moved (the old backup refusing re-sends until a retry
// budget ran out): every increment is acknowledged. The slowest call and
// the rebalance's length are reported, not asserted.
func TestJoinUnderLoadNoWriteWaitsOnAMovedBackup(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	l := startLoad(t, 32, 1000, clusterload.AnyMember(c))
	l.WaitOps(t, 2000)
	l.ResetSlowest()
	start := time.Now()
	c.AddMember()
	c.WaitClusterSafe()
	rebalance := time.Since(start)
	l.WaitOps(t, 1000)
	t.Logf("join to cluster-safe %v; slowest increment meanwhile %v", rebalance.Round(time.Millisecond), l.Slowest().Round(time.Millisecond))
	l.Verify(t, c)
}

func TestThreeJoinAtOnceUnderLoadIsExact(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	l := startLoad(t, 32, 1000, clusterload.AnyMember(c))
	l.WaitOps(t, 2000)
	c.AddMembers(3)
	c.WaitStable()
	l.WaitOps(t, 1000)
	l.Verify(t, c)
}

func TestGracefulShutdownUnderLoadIsExact(t *testing.T) {
	c := newCluster(t, 6, 1, nil)
	// The load goes through member 0, the survivor: a caller on a member
	// that shuts down would lose its proxy, not its data.
	survivor := c.Member(0)
	l := startLoad(t, 32, 1000, func(*rand.Rand) *nodeengine.Node { return survivor })
	l.WaitOps(t, 2000)
	for len(c.Members()) > 1 {
		i := len(c.Members()) - 1
		leaving := c.Member(i)
		c.Shutdown(i)
		if owned := leaving.Inspect().Table().Counts()[leaving.ID()]; owned != 0 {
			t.Fatalf("member %d left still owning %d partitions", i, owned)
		}
		c.WaitStable()
		l.WaitOps(t, 1000)
	}
	l.Verify(t, c)
}
