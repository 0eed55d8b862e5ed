package counter_test

import (
	"fmt"
	"testing"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// The counter end to end through a failover: increments under load from
// every member, one member killed (the master, or another); no
// acknowledged increment is lost, none counted twice, and every backup
// replica equals its primary after. (The engine's failover tests, with the
// engine's test service, are in nodeengine.)
func TestKillOneOfThreeLosesNothing(t *testing.T) {
	for _, victim := range []int{0, 2} { // the master, and another member
		t.Run(fmt.Sprintf("victim%d", victim), func(t *testing.T) {
			c := clustertest.New(t, 3)
			l := clusterload.Start(t, counters, 64, 1000, clusterload.AnyMember(c))
			l.WaitOps(t, 3000)
			c.Kill(victim)
			l.WaitOps(t, 3000)
			l.VerifyAfterFailure(t, c)
		})
	}
}
