package counter_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// Review finding (backup versions reused across owners): the master dies
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
func TestReviewStaleSourceReopensAndItsBackupIsAckedUnapplied(t *testing.T) {
	c := clustertest.New(t, 3, clustertest.WithTimeout(20*time.Second), clustertest.WithConfig(func(_ int, cfg *config.Config) {
		cfg.Migration.StepTimeout = 5 * time.Second
		cfg.Migration.Parallel = 256 // every move of a starts: some wait on a
		cfg.Migration.ShutdownTimeout = 3 * time.Second
	}))
	m, x, a := c.Member(0), c.Member(1), c.Member(2) // master, next master, source
	if !m.Inspect().IsMaster() {
		t.Fatal("member 0 is not the master")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// One counter, incremented once, on every partition a owns with x as
	// its backup; proxies on a (the stale source) and x (routes to the
	// newest owner).
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
		return func(name string) (int64, error) {
			o, err := node.Proxies().Get(ctx, counter.ServiceName, name)
			if err != nil {
				return 0, err
			}
			return o.(*counter.Counter).Inc(ctx, 1)
		}
	}
	incA, incX := incOn(a), incOn(x)
	for _, n := range names {
		if _, err := incA(n); err != nil {
			t.Fatal(err)
		}
		if _, err := x.Proxies().Get(ctx, counter.ServiceName, n); err != nil {
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
