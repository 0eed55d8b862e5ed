package counter_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// load keeps goroutines incrementing counters through the members that
// pick returns, counting acknowledged increments per counter.
type load struct {
	names     []string
	acked     []atomic.Int64
	failedPer []atomic.Int64 // increments that returned an error: may or may not have applied
	failed    atomic.Int64
	ops       atomic.Int64
	slowest   atomic.Int64 // the longest increment, in nanoseconds
	mu        sync.Mutex
	errs      []error
	stop      chan struct{}
	wg        sync.WaitGroup
}

func startLoad(t *testing.T, goroutines, counters int, pick func(r *rand.Rand) *nodeengine.Node) *load {
	l := &load{names: make([]string, counters), acked: make([]atomic.Int64, counters),
		failedPer: make([]atomic.Int64, counters), stop: make(chan struct{})}
	for i := range l.names {
		l.names[i] = fmt.Sprintf("load-%d", i)
	}
	for g := 0; g < goroutines; g++ {
		l.wg.Add(1)
		go func(g int) {
			defer l.wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				k := r.IntN(counters)
				n := pick(r)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				obj, err := n.Proxies().Get(ctx, counter.ServiceName, l.names[k])
				if err == nil {
					start := time.Now()
					_, err = obj.(*counter.Counter).Inc(ctx, 1)
					d := int64(time.Since(start))
					for s := l.slowest.Load(); d > s && !l.slowest.CompareAndSwap(s, d); s = l.slowest.Load() {
					}
				}
				cancel()
				l.ops.Add(1)
				if err != nil {
					l.failed.Add(1)
					l.failedPer[k].Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err)
					}
					l.mu.Unlock()
					continue
				}
				l.acked[k].Add(1)
			}
		}(g)
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// waitOps waits until the load has made n more operations, so that each
// phase of a test runs under load.
func (l *load) waitOps(t *testing.T, n int64) {
	t.Helper()
	target := l.ops.Load() + n
	clustertest.Eventually(t, 30*time.Second, func() error {
		if got := l.ops.Load(); got < target {
			return fmt.Errorf("load made %d operations, waiting for %d", got, target)
		}
		return nil
	})
}

// verify stops the load and checks exact totals, balance and leaks.
func (l *load) verify(t *testing.T, c *clustertest.Cluster) {
	t.Helper()
	l.halt()
	if f := l.failed.Load(); f != 0 {
		t.Fatalf("%d increments failed, e.g. %v", f, errors.Join(l.errs...))
	}
	c.WaitStable()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var total int64
	for k, name := range l.names {
		obj, err := c.Member(0).Proxies().Get(ctx, counter.ServiceName, name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := obj.(*counter.Counter).Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := l.acked[k].Load(); got != want {
			t.Errorf("counter %s = %d, acknowledged increments %d", name, got, want)
		}
		total += got
	}
	checkPlacement(t, c)
	t.Logf("%d increments acknowledged, all counted exactly once", total)
}

// checkPlacement asserts every member owns floor/ceil of the partitions
// and holds data only for partitions it holds a replica of.
func checkPlacement(t *testing.T, c *clustertest.Cluster) {
	t.Helper()
	ms := c.Members()
	tab := ms[0].Inspect().Table()
	counts := tab.Counts()
	lo, hi := 271/len(ms), (271+len(ms)-1)/len(ms)
	for i, m := range ms {
		if k := counts[m.ID()]; k < lo || k > hi {
			t.Errorf("member %d owns %d partitions, want %d..%d", i, k, lo, hi)
		}
		for name := range localValues(t, c, i) {
			if p := m.Partitions().PartitionID(name); tab.ReplicaIndex(p, m.ID()) < 0 {
				t.Errorf("member %d holds counter %s of partition %d, replicas %s %v: leaked data", i, name, p, tab.Owner(p), tab.BackupsOf(p))
			}
		}
	}
}

func anyMember(c *clustertest.Cluster) func(r *rand.Rand) *nodeengine.Node {
	return func(r *rand.Rand) *nodeengine.Node {
		ms := c.Members()
		return ms[r.IntN(len(ms))]
	}
}

func TestJoinUnderLoadIsExact(t *testing.T) {
	c := clustertest.New(t, 1)
	l := startLoad(t, 32, 1000, anyMember(c))
	l.waitOps(t, 2000)
	for _, size := range []int{2, 3, 4, 5, 6} { // 1 -> 2 -> 4 -> 6, one by one
		c.AddMember()
		c.WaitStable()
		l.waitOps(t, 1000)
		t.Logf("%d members stable, %d operations so far", size, l.ops.Load())
	}
	l.verify(t, c)
}

// A member joins three under load with one synchronous backup: backup
// replicas move to it while writes go on. No write waits on a backup
// target that moved (the old backup refusing re-sends until a retry
// budget ran out): every increment is acknowledged. The slowest call and
// the rebalance's length are reported, not asserted.
func TestJoinUnderLoadNoWriteWaitsOnAMovedBackup(t *testing.T) {
	c := clustertest.New(t, 3)
	l := startLoad(t, 32, 1000, anyMember(c))
	l.waitOps(t, 2000)
	l.slowest.Store(0)
	start := time.Now()
	c.AddMember()
	c.WaitClusterSafe()
	rebalance := time.Since(start)
	l.waitOps(t, 1000)
	t.Logf("join to cluster-safe %v; slowest increment meanwhile %v", rebalance.Round(time.Millisecond), time.Duration(l.slowest.Load()).Round(time.Millisecond))
	l.verify(t, c)
}

func TestThreeJoinAtOnceUnderLoadIsExact(t *testing.T) {
	c := clustertest.New(t, 3)
	l := startLoad(t, 32, 1000, anyMember(c))
	l.waitOps(t, 2000)
	c.AddMembers(3)
	c.WaitStable()
	l.waitOps(t, 1000)
	l.verify(t, c)
}

func TestGracefulShutdownUnderLoadIsExact(t *testing.T) {
	c := clustertest.New(t, 6)
	// The load goes through member 0, the survivor: a caller on a member
	// that shuts down would lose its proxy, not its data.
	survivor := c.Member(0)
	l := startLoad(t, 32, 1000, func(*rand.Rand) *nodeengine.Node { return survivor })
	l.waitOps(t, 2000)
	for len(c.Members()) > 1 {
		i := len(c.Members()) - 1
		leaving := c.Member(i)
		c.Shutdown(i)
		if owned := leaving.Inspect().Table().Counts()[leaving.ID()]; owned != 0 {
			t.Fatalf("member %d left still owning %d partitions", i, owned)
		}
		c.WaitStable()
		l.waitOps(t, 1000)
	}
	l.verify(t, c)
}

// The master leaves gracefully while a join's migrations run: its
// partitions move away, the next oldest member becomes master, continues
// from the published table, and no increment is lost or doubled.
func TestMasterLeavesDuringRebalanceIsExact(t *testing.T) {
	c := clustertest.New(t, 3)
	last := c.Member(2)
	l := startLoad(t, 32, 1000, func(*rand.Rand) *nodeengine.Node { return last })
	l.waitOps(t, 2000)
	c.AddMember()
	master := c.Member(0)
	c.Shutdown(0)
	if owned := master.Inspect().Table().Counts()[master.ID()]; owned != 0 {
		t.Fatalf("the old master left owning %d partitions", owned)
	}
	c.WaitStable()
	if !c.Member(0).Inspect().IsMaster() {
		t.Fatal("the oldest survivor is not the master")
	}
	l.waitOps(t, 1000)
	l.verify(t, c)
}
