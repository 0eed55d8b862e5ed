package nodeengine_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// A member frozen by Node.Pause (a stop-the-world GC pause, a stopped VM):
// its memberlist, operation connections and executors stop, then run on.

// pauseTimeout bounds each wait around a pause: failure detection and a
// rejoin as a merge of one take a few seconds, a loaded machine longer.
const pauseTimeout = 60 * time.Second

// A member frozen longer than failure detection is declared dead by the
// others, who promote its backups and carry on under load; once it runs
// again it finds itself outside their cluster and rejoins as a merge of
// one. No acknowledged increment is lost, none is applied twice, and the
// backups equal their primaries.
func TestPauseLongerThanDetectionRejoinsAsMerge(t *testing.T) {
	for _, tc := range []struct {
		name   string
		paused int
	}{{"member", 2}, {"master", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3, 1, nil)
			c.WaitClusterSafe()
			frozen := c.Member(tc.paused)
			// While it is frozen, no new call goes through it (those in
			// flight there wait for it, as a client of a frozen member
			// would).
			var avoid atomic.Pointer[nodeengine.Node]
			anyMember := clusterload.AnyMember(c)
			l := startLoad(t, 16, 200, func(r *rand.Rand) *nodeengine.Node {
				for {
					if n := anyMember(r); n != avoid.Load() {
						return n
					}
				}
			})
			l.WaitOps(t, 500)

			var others []*nodeengine.Node
			for i, n := range c.Members() {
				if i != tc.paused {
					others = append(others, n)
				}
			}
			avoid.Store(frozen)
			resume := frozen.Pause()
			start := time.Now()
			clustertest.Eventually(t, pauseTimeout, func() error {
				var errs []error
				for _, n := range others {
					errs = append(errs, sees(n, others...))
				}
				return errors.Join(errs...)
			})
			t.Logf("declared dead %v into the pause", time.Since(start).Round(time.Millisecond))
			clustertest.Eventually(t, pauseTimeout, func() error { return clustertest.Stable(others...) })
			l.WaitOps(t, 500) // the others serve on their own
			resume()
			avoid.Store(nil)

			resumed := time.Now()
			clustertest.WaitStable(t, pauseTimeout, c.Members()...)
			t.Logf("one cluster again %v after the resume", time.Since(resumed).Round(time.Millisecond))
			if got := merges(t, frozen); got != 1 {
				t.Errorf("the member declared dead made %v merges; want 1 (a merge of one)", got)
			}
			l.WaitOps(t, 500)
			l.VerifyAfterFailure(t, c)
		})
	}
}

// A pause shorter than failure detection holds the member's operations:
// a call to a partition it owns, from another member, and a call made on
// it both complete only after it runs again, with the right values.
func TestShortPauseHoldsOperations(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	c.WaitClusterSafe()
	ctx, cancel := context.WithTimeout(context.Background(), pauseTimeout)
	defer cancel()
	remote := keyPlacedOn(t, c, 1, 2, "remote") // its primary is frozen
	local := keyPlacedOn(t, c, 2, 0, "local")   // called through the frozen member
	if _, err := reg(c, 0, remote).Inc(ctx, 1); err != nil {
		t.Fatal(err)
	}

	// Counted as they leave, let through.
	sent := &clustertest.Fault{From: c.Member(0).ID(), To: c.Member(1).ID(), Kind: "TestService/"}
	c.AddFault(sent)
	sentFrozen := &clustertest.Fault{From: c.Member(1).ID(), To: c.Member(2).ID(), Kind: "TestService/"}
	c.AddFault(sentFrozen)
	type done struct {
		incResult
		at time.Time
	}
	results := make(chan done, 2)
	call := func(r register, delta int64) {
		v, err := r.Inc(ctx, delta)
		results <- done{incResult{v, err}, time.Now()}
	}
	resume := c.Member(1).Pause()
	go call(reg(c, 0, remote), 2)
	go call(reg(c, 1, local), 3)
	waitHits(t, sent, 1)
	waitHits(t, sentFrozen, 1)
	// The pause's length, shorter than failure detection (about a second).
	timer := time.NewTimer(200 * time.Millisecond)
	<-timer.C
	resumed := time.Now()
	resume()
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.at.Before(resumed) {
			t.Errorf("a call returned %v (%d) while the member was frozen", resumed.Sub(r.at), r.v)
		}
		if r.v != 3 {
			t.Errorf("a call returned %d; want 3", r.v)
		}
	}
	c.WaitClusterSafe()
	t.Logf("merges on the paused member: %v (a pause this short is not detected, except on a slow machine)", merges(t, c.Member(1)))
}

// A frozen member shuts down, or is killed, without hanging and leaving
// no goroutine behind (goleak, TestMain): Shutdown thaws it and it leaves
// gracefully, handing its partitions over; Terminate lets it die frozen.
// The others carry on.
func TestStopDuringPause(t *testing.T) {
	c := newCluster(t, 4, 1, nil)
	c.WaitClusterSafe()
	ctx, cancel := context.WithTimeout(context.Background(), pauseTimeout)
	defer cancel()
	key := c.KeyOwnedBy(3, "leaver")
	if _, err := reg(c, 0, key).Inc(ctx, 7); err != nil {
		t.Fatal(err)
	}

	c.Member(3).Pause() // never resumed: Shutdown ends it
	start := time.Now()
	c.Shutdown(3)
	t.Logf("shut down frozen in %v", time.Since(start).Round(time.Millisecond))
	c.Member(2).Pause()
	start = time.Now()
	c.Kill(2)
	t.Logf("killed frozen in %v", time.Since(start).Round(time.Millisecond))

	c.WaitClusterSafe()
	if v, err := reg(c, 1, key).Get(ctx); err != nil || v != 7 {
		t.Fatalf("after the leave: %d, %v; want 7", v, err)
	}
}

// A master frozen past failure detection takes itself for the master
// still when it runs again, until it learns it was declared dead: a new
// member that joins through it then (its address is the new member's
// seed, as the nemesis's joins do) is taken into the cluster it believes
// in. The frozen master rejoins as a merge of one, the new member joins,
// and the cluster settles with nothing acknowledged lost.
//
// It used to fail 3 runs in 4 (the cluster never settled, or 4 to 6
// acknowledged increments were lost): the resumed master went on acting
// as master, adopted the newer tables its pushes were answered with, and
// made tables of its own from them with the real master's version
// numbers, which members took. Tables now carry the master's term
// (partition.Table.Term): the new master's are newer than any the old one
// makes, and the old one stops acting as master once a table of a newer
// term comes back to it (publisher.adoptNewer, inTerm).
func TestMemberJoiningThroughAResumedMasterDeclaredDead(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	c.WaitClusterSafe()
	master := c.Member(0)
	var avoid atomic.Pointer[nodeengine.Node]
	anyMember := clusterload.AnyMember(c)
	l := startLoad(t, 16, 200, func(r *rand.Rand) *nodeengine.Node {
		for {
			if n := anyMember(r); n != avoid.Load() {
				return n
			}
		}
	})
	l.WaitOps(t, 500)
	avoid.Store(master)
	resume := master.Pause()
	others := c.Members()[1:]
	clustertest.Eventually(t, pauseTimeout, func() error {
		return errors.Join(sees(others[0], others...), sees(others[1], others...))
	})
	clustertest.Eventually(t, pauseTimeout, func() error { return clustertest.Stable(others...) })
	resume()
	avoid.Store(nil)
	c.AddMember() // joins through member 0, the resumed master
	clustertest.WaitStable(t, pauseTimeout, c.Members()...)
	l.WaitOps(t, 500)
	l.VerifyAfterFailure(t, c)
}
