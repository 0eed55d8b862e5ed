package nodeengine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// A join moves backup replicas to the new member; the old backup keeps
// its copy and stays the replica a failover promotes until the new one is
// in sync. Here the new member's full copies never come (held), and the
// primary of partitions whose backup it is taking over dies: the old,
// in-sync backups are promoted, and every acknowledged increment is there.
// One member killed, one synchronous backup.
func TestPrimaryDiesWhileItsBackupMoves(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Keys on every partition, each incremented once and acknowledged.
	a := c.Member(0)
	names := map[int]string{}
	for k := 0; len(names) < 271; k++ {
		name := fmt.Sprintf("us%d", k)
		if p := a.Partitions().PartitionID(name); names[p] == "" {
			names[p] = name
		}
	}
	ctrs := map[int]register{}
	for p, name := range names {
		ctrs[p] = register{a, name}
		if _, err := ctrs[p].Inc(ctx, 7); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitClusterSafe()
	// The new member's full copies never come while the test needs them.
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	defer release()
	c.AddFault(&clustertest.Fault{Kind: "replica.sync", Hold: hold})
	d := c.AddMember()
	// Wait until the master made d incoming for some partitions of
	// members 1 and 2.
	victim := -1
	var moving []int
	clustertest.Eventually(t, 30*time.Second, func() error {
		tab := c.Member(0).Inspect().Table()
		for i, m := range c.Members()[1:3] {
			var ps []int
			for p := range tab.Owners {
				if tab.Owner(p) == m.ID() && tab.IsIncoming(p, d.ID()) {
					ps = append(ps, p)
				}
			}
			if len(ps) > len(moving) {
				victim, moving = i+1, ps
			}
		}
		if victim < 0 {
			return fmt.Errorf("no partition of members 1 or 2 has its backup moving to the new member")
		}
		return nil
	})
	tab := c.Member(0).Inspect().Table()
	for _, p := range moving {
		if b := tab.BackupsOf(p); len(b) != 1 || b[0] == "" || b[0] == d.ID() {
			t.Fatalf("partition %d: backups %q while the new member syncs: the old one must stay", p, b)
		}
	}
	t.Logf("killing member %d: %d of its partitions have their backup moving to the new member, not yet synced", victim, len(moving))
	dead := c.Member(victim).ID()
	c.Kill(victim)
	// Not WaitStable: the new member still waits for its copies.
	clustertest.Eventually(t, 30*time.Second, func() error {
		if tab := c.Member(0).Inspect().Table(); slices.Contains(tab.Owners, dead) {
			return fmt.Errorf("the dead member still owns partitions")
		}
		return nil
	})
	lost := 0
	for _, p := range moving {
		got, err := ctrs[p].Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got != 7 {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d partitions lost their acknowledged data after one member died", lost, len(moving))
	}
	release()
	c.WaitClusterSafe()
	if n := clusterload.LostPartitions(t, c); n != 0 {
		t.Errorf("%v partitions reported lost; every one had an in-sync backup", n)
	}
}

// Under load, a member joins (backup replicas start moving to it) and the
// primary of a partition whose backup is moving is killed at once, before
// the move is done. Nothing acknowledged is lost, none applied twice, no
// partition is reported lost. Several rounds, each killing another
// member.
func TestRebalanceUnderLoadKillPrimaryOfAMovingBackup(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprintf("round%d", round), func(t *testing.T) {
			c := newCluster(t, 3, 1, nil)
			c.WaitClusterSafe() // every backup in sync before the load
			l := startLoad(t, 32, 1000, func(r *rand.Rand) *nodeengine.Node { return c.Member(0) })
			l.WaitOps(t, 2000)
			d := c.AddMember()
			victim := -1
			clustertest.Eventually(t, 30*time.Second, func() error {
				tab := c.Member(0).Inspect().Table()
				for p := range tab.Owners {
					if !tab.IsIncoming(p, d.ID()) {
						continue
					}
					for i := 1; i < 3; i++ { // never the load's member
						if tab.Owner(p) == c.Member(i).ID() && (victim < 0 || (round+i)%2 == 0) {
							victim = i
						}
					}
				}
				if victim < 0 {
					return fmt.Errorf("no backup of members 1 or 2 moving to the new member yet")
				}
				return nil
			})
			c.Kill(victim)
			l.WaitOps(t, 2000)
			l.VerifyAfterFailure(t, c)
			if n := clusterload.LostPartitions(t, c); n != 0 {
				t.Errorf("%v partitions reported lost; every one had an in-sync backup", n)
			}
		})
	}
}

// A backup replica moving to a member is swapped in only once that member
// holds a table naming it incoming (and so has reset its replica and
// synced): before, its replica of a partition never written answers
// version 0, not syncing, which is what a copy in sync says, and the
// primary, at version 0, says it caught up. Swapped in so, the member
// then resets and syncs from scratch while the old, in-sync backup is
// gone: a primary that died meanwhile left its partition reported lost
// (TestRebalanceUnderLoadKillPrimaryOfAMovingBackup: the partitions the
// load never wrote). Here the tables never reach member b while the
// backups of a leaving member move, some of them to b.
func TestIncomingReplicaSwappedInOnlyOnceItsMemberHoldsTheTable(t *testing.T) {
	c := newCluster(t, 4, 1, nil)
	c.WaitClusterSafe() // nothing written: every partition at version 0
	a, b := c.Member(0), c.Member(1)
	before := a.Inspect().Table()
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	defer release()
	c.AddFault(&clustertest.Fault{From: a.ID(), To: b.ID(), Kind: "table.publish", Hold: hold})
	done := make(chan struct{})
	go func() { defer close(done); c.Shutdown(3) }() // its backup replicas move, some to b
	clustertest.Eventually(t, 30*time.Second, func() error {
		tab := a.Inspect().Table()
		for p := range tab.Owners {
			if tab.IsIncoming(p, b.ID()) {
				return nil
			}
		}
		return fmt.Errorf("no backup replica moving to b yet")
	})
	// Several settle rounds: b, holding none of these tables, must not be
	// swapped in anywhere.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		tab, own := a.Inspect().Table(), b.Inspect().Table()
		for p := range tab.Owners {
			if slices.Contains(tab.BackupsOf(p), b.ID()) && !slices.Contains(before.BackupsOf(p), b.ID()) && own.ReplicaIndex(p, b.ID()) <= 0 {
				t.Fatalf("partition %d: table %d names b its backup, but b holds table %d, which names it no replica of it",
					p, tab.Version, own.Version)
			}
		}
	}
	release()
	<-done
	c.WaitClusterSafe()
	if n := clusterload.LostPartitions(t, c); n != 0 {
		t.Errorf("%v partitions reported lost", n)
	}
}
