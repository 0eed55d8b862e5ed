package nodeengine_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/testservice"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// The master dies with moves half done: the next master and the moves'
// endpoints resolve them by the newest table, never by a stale one, and
// no acknowledged write is lost.

// Regression test from a review: the next master resolved the dead master's
// half-done moves with its own stale table, before its take-over gate had
// learnt the newest one: as a committed destination it dropped the data,
// then adopted the table naming it owner (and the source, by that table,
// had dropped its copy). Without backups the increments were gone.
func TestNewMasterDoesNotResolveWithStaleTable(t *testing.T) {
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
	c = newCluster(t, 4, 0, nil)
	b, d := c.Member(1), c.Member(3)
	ctx := context.Background()
	inc = func(n string) (int64, error) { return testservice.Add(ctx, b, n, 1) }
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

// The master dies after a destination that is not the next master
// committed a move, while the table naming it owner reached the source and
// the next master but not the destination. The destination must not
// resolve the move by its own, older table (it would drop the data it
// took over, and the source, by the newer table, dropped its copy): it
// waits for the new master. Without backups the increments were gone.
func TestCommittedDestinationWaitsForNewMasterTable(t *testing.T) {
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

// Regression test from a review (backup versions reused across owners): the master dies
// after a move's destination installed the table naming it owner but before
// the source got it. The source resolved the orphaned move by its own,
// stale table (it still names the source owner): it rolled back and served
// the partition again, while the destination served it too. A migration
// keeps the source's replica version (no new epoch), so both stamped their
// backups with the same versions: the backup replica applied the
// destination's version v+1 and then acknowledged the source's own v+1 as
// "already applied" (runBackup) without running it. The source answered
// "incremented"; once the newest table reached it, it dropped its copy: an
// acknowledged increment existed nowhere.
func TestStaleSourceBackupIsNotAckedUnapplied(t *testing.T) {
	c := newCluster(t, 3, 1, func(_ int, cfg *config.Config) {
		cfg.Migration.StepTimeout = 5 * time.Second
		cfg.Migration.Parallel = 256 // every move of a starts: some wait on a
		cfg.Migration.ShutdownTimeout = 3 * time.Second
	}, clustertest.WithTimeout(20*time.Second))
	m, x, a := c.Member(0), c.Member(1), c.Member(2) // master, next master, source
	if !m.Inspect().IsMaster() {
		t.Fatal("member 0 is not the master")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// One register, incremented once, on every partition a owns with x as
	// its backup; increments through a (the stale source) and x (routes to
	// the newest owner).
	names := map[int]string{}
	tab := a.Inspect().Table()
	for k := 0; len(names) < 60 && k < 20000; k++ {
		n := fmt.Sprint("st-", k)
		p := a.Partitions().PartitionID(n)
		if _, ok := names[p]; ok || tab.Owner(p) != a.ID() || tab.ReplicaIndex(p, x.ID()) != 1 {
			continue
		}
		names[p] = n
	}
	if len(names) == 0 {
		t.Fatal("a owns no partition backed up on x")
	}
	incOn := func(node *nodeengine.Node) func(name string) (int64, error) {
		return func(name string) (int64, error) { return testservice.Add(ctx, node, name, 1) }
	}
	incA, incX := incOn(a), incOn(x)
	for _, n := range names {
		if _, err := incA(n); err != nil {
			t.Fatal(err)
		}
	}

	// a never gets another table (from this master or the next) nor the
	// next master's resolve request until released.
	hold := make(chan struct{})
	c.AddFault(&clustertest.Fault{To: a.ID(), Kind: "table.publish", Hold: hold})
	resolve := &clustertest.Fault{To: a.ID(), Kind: "migration.resolve", Hold: hold}
	c.AddFault(resolve)
	d := c.AddMember()

	// A move a -> d of one of those partitions: d committed and holds the
	// table naming it owner (x, still its backup, holds it too); a is
	// prepared, waiting for that table, which the master cannot push.
	p := -1
	clustertest.Eventually(t, 15*time.Second, func() error {
		xt, dt := x.Inspect().Table(), d.Inspect().Table()
		if dt == nil {
			return fmt.Errorf("d has no table")
		}
		for q := range names {
			if dt.Owner(q) == d.ID() && xt.Owner(q) == d.ID() && xt.ReplicaIndex(q, x.ID()) > 0 &&
				!d.Inspect().OperationService().IsMigrating(q) && a.Inspect().Table().Owner(q) == a.ID() && a.Inspect().OperationService().IsMigrating(q) {
				p = q
				return nil
			}
		}
		return fmt.Errorf("no move a -> d committed on d and waiting for its table on a")
	})
	name := names[p]
	t.Logf("partition %d (%s): a=%s d=%s x=%s, versions a %#x d %#x x %#x", p, name, a.ID(), d.ID(), x.ID(),
		a.Inspect().OperationService().ReplicaVersion(p), d.Inspect().OperationService().ReplicaVersion(p), x.Inspect().OperationService().ReplicaVersion(p))

	c.Kill(0)
	clustertest.Eventually(t, 20*time.Second, func() error {
		if ms := a.Members(); len(ms) == 0 || ms[0].ID != x.ID() {
			return fmt.Errorf("a has not noticed the master's death")
		}
		return nil
	})
	acked := 1 // the first increment
	// Through x: x's table routes to d, the owner; d's backup v+1 goes to x.
	if _, err := incX(name); err != nil {
		t.Fatalf("increment through x (owner d): %v", err)
	}
	acked++
	// Through a: a's stale table routes to a itself.
	type result struct {
		v   int64
		err error
	}
	res := make(chan result, 1)
	go func() {
		v, err := incA(name)
		res <- result{v, err}
	}()
	// Either a answered (it served the partition), or the next master's
	// take-over gate opened and it asked a to resolve (a kept refusing).
	var r *result
	clustertest.Eventually(t, 20*time.Second, func() error {
		select {
		case got := <-res:
			r = &got
			return nil
		default:
		}
		if resolve.Hits() > 0 {
			return nil
		}
		return fmt.Errorf("the increment through a is not answered yet")
	})
	if r != nil {
		t.Logf("increment through a answered while a held a stale table: %d, %v (a's version %#x, x's %#x)", r.v, r.err,
			a.Inspect().OperationService().ReplicaVersion(p), x.Inspect().OperationService().ReplicaVersion(p))
	}
	close(hold)
	if r == nil {
		got := <-res // bounded by ctx
		r = &got
	}
	if r.err == nil {
		acked++
	}
	c.WaitClusterSafe()
	v, err := incX(name)
	if err != nil {
		t.Fatal(err)
	}
	acked++
	if v != int64(acked) {
		t.Errorf("counter %s (partition %d) = %d after %d acknowledged increments: an acknowledged increment was lost", name, p, v, acked)
	}
}
