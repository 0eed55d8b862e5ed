package nodeengine_test

import (
	"testing"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// productionDetection sets memberlist's production timings: a death takes
// it at least 5 s (a probe, then a 4 s suspicion), far longer than three
// refused dials 100 ms apart.
func productionDetection(_ int, cfg *config.Config) {
	d := config.Default().Membership
	cfg.Membership.ProbeInterval, cfg.Membership.ProbeTimeout = d.ProbeInterval, d.ProbeTimeout
	cfg.Membership.SuspicionMult, cfg.Membership.SuspicionMaxTimeoutMult = d.SuspicionMult, d.SuspicionMaxTimeoutMult
}

const refusedDeaths = "partita_member_deaths_by_refused_port_total"

// Two members killed at once (their processes gone: their ports refuse
// connections) are declared dead by the master through their refused
// ports, each once, ahead of memberlist, which leaves the last two of 4
// members waiting for a confirmation neither can give; their partitions
// are promoted and no acknowledged write is lost.
func TestKilledMembersDeclaredDeadByTheirRefusedPorts(t *testing.T) {
	c := newCluster(t, 4, 2, productionDetection)
	c.WaitClusterSafe()
	l := startLoad(t, 16, 200, clusterload.AnyMember(c))
	l.WaitOps(t, 500)
	c.KillMany(2, 3)
	clustertest.WaitStable(t, pauseTimeout, c.Members()...)
	if got := clustertest.Scrape(t, c.Member(0)).Value(refusedDeaths); got != 2 {
		t.Errorf("the master declared %v members dead by their refused ports, want the 2 killed", got)
	}
	l.WaitOps(t, 500)
	l.VerifyAfterFailure(t, c)
}

// With membership.dead-on-refused-port off, a killed member is declared
// dead by memberlist alone.
func TestRefusedPortIgnoredWhenTurnedOff(t *testing.T) {
	c := newCluster(t, 3, 1, func(_ int, cfg *config.Config) { cfg.Membership.DeadOnRefusedPort = false })
	c.WaitClusterSafe()
	l := startLoad(t, 8, 100, clusterload.AnyMember(c))
	l.WaitOps(t, 200)
	c.Kill(2)
	clustertest.WaitStable(t, pauseTimeout, c.Members()...)
	for i, m := range c.Members() {
		if got := clustertest.Scrape(t, m).Value(refusedDeaths); got != 0 {
			t.Errorf("member %d declared %v members dead by their refused ports with the option off", i, got)
		}
	}
	l.WaitOps(t, 200)
	l.VerifyAfterFailure(t, c)
}
