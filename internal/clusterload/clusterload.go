// Package clusterload keeps goroutines incrementing named values on a
// clustertest cluster while a test joins, kills or shuts members down, and
// then checks that no acknowledged increment was lost and none applied
// twice, and that every backup equals its primary.
//
// It drives any keyed adder through a Store: the engine's tests use
// TestService (internal/testservice), a service's own tests its own.
package clusterload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/testservice"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// Store is the keyed adder a load drives.
type Store interface {
	// Inc adds 1 to the value name through member n.
	Inc(ctx context.Context, n *nodeengine.Node, name string) error
	// Get reads the value name through member n.
	Get(ctx context.Context, n *nodeengine.Node, name string) (int64, error)
	// Local returns the values of every replica member n holds.
	Local(ctx context.Context, n *nodeengine.Node) (map[string]int64, error)
}

// TestService is the Store of internal/testservice.
var TestService Store = testStore{}

type testStore struct{}

func (testStore) Inc(ctx context.Context, n *nodeengine.Node, name string) error {
	_, err := testservice.Add(ctx, n, name, 1)
	return err
}

func (testStore) Get(ctx context.Context, n *nodeengine.Node, name string) (int64, error) {
	return testservice.Get(ctx, n, name)
}

func (testStore) Local(ctx context.Context, n *nodeengine.Node) (map[string]int64, error) {
	return testservice.Local(ctx, n)
}

// Load keeps goroutines incrementing values through the members that pick
// returns, counting acknowledged increments per value.
type Load struct {
	store     Store
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

// Start starts goroutines incrementing values named load-0 .. load-<values-1>;
// t.Cleanup halts them.
func Start(t testing.TB, store Store, goroutines, values int, pick func(r *rand.Rand) *nodeengine.Node) *Load {
	l := &Load{store: store, names: make([]string, values), acked: make([]atomic.Int64, values),
		failedPer: make([]atomic.Int64, values), stop: make(chan struct{})}
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
				k := r.IntN(values)
				n := pick(r)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				start := time.Now()
				err := store.Inc(ctx, n, l.names[k])
				d := int64(time.Since(start))
				for s := l.slowest.Load(); d > s && !l.slowest.CompareAndSwap(s, d); s = l.slowest.Load() {
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
	t.Cleanup(l.Halt)
	return l
}

// AnyMember picks a random running member of c.
func AnyMember(c *clustertest.Cluster) func(r *rand.Rand) *nodeengine.Node {
	return func(r *rand.Rand) *nodeengine.Node {
		ms := c.Members()
		return ms[r.IntN(len(ms))]
	}
}

// Halt stops the load and waits for its goroutines.
func (l *Load) Halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// Ops returns how many increments the load made, acknowledged or not.
func (l *Load) Ops() int64 { return l.ops.Load() }

// Slowest returns the longest increment since the start or ResetSlowest.
func (l *Load) Slowest() time.Duration { return time.Duration(l.slowest.Load()) }

// ResetSlowest forgets the longest increment so far.
func (l *Load) ResetSlowest() { l.slowest.Store(0) }

// WaitOps waits until the load has made n more operations, so that each
// phase of a test runs under load.
func (l *Load) WaitOps(t testing.TB, n int64) {
	t.Helper()
	target := l.ops.Load() + n
	clustertest.Eventually(t, 30*time.Second, func() error {
		if got := l.ops.Load(); got < target {
			return fmt.Errorf("load made %d operations, waiting for %d", got, target)
		}
		return nil
	})
}

// Verify stops the load and checks that no increment failed, that every
// value is exactly its acknowledged increments once the cluster is stable,
// and the placement (see CheckPlacement).
func (l *Load) Verify(t testing.TB, c *clustertest.Cluster) {
	t.Helper()
	l.Halt()
	if f := l.failed.Load(); f != 0 {
		t.Fatalf("%d increments failed, e.g. %v", f, errors.Join(l.errs...))
	}
	c.WaitStable()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var total int64
	for k, name := range l.names {
		got, err := l.store.Get(ctx, c.Member(0), name)
		if err != nil {
			t.Fatal(err)
		}
		if want := l.acked[k].Load(); got != want {
			t.Errorf("value %s = %d, acknowledged increments %d", name, got, want)
		}
		total += got
	}
	CheckPlacement(t, c, l.store)
	t.Logf("%d increments acknowledged, all counted exactly once", total)
}

// VerifyAfterFailure checks, once the load stopped and the cluster is
// stable, that no acknowledged increment was lost and none applied twice:
// acked <= value <= acked + failed, per value. Then it waits for the
// cluster to be safe and checks that every backup equals its primary.
func (l *Load) VerifyAfterFailure(t testing.TB, c *clustertest.Cluster) {
	t.Helper()
	l.Halt()
	c.WaitStable()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var acked, failed int64
	for k, name := range l.names {
		got, err := l.store.Get(ctx, c.Member(0), name)
		if err != nil {
			t.Fatal(err)
		}
		a, f := l.acked[k].Load(), l.failedPer[k].Load()
		if got < a || got > a+f {
			t.Errorf("value %s = %d, want %d..%d (acknowledged %d, failed %d)", name, got, a, a+f, a, f)
		}
		acked += a
		failed += f
	}
	t.Logf("%d increments acknowledged, %d failed (in flight at the failure)", acked, failed)
	c.WaitClusterSafe()
	CheckBackupsEqualPrimaries(t, c, l.store)
}

// Local returns the values member i of c holds (see Store.Local).
func Local(t testing.TB, c *clustertest.Cluster, store Store, i int) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vals, err := store.Local(ctx, c.Member(i))
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

// CheckBackupsEqualPrimaries compares every value on every backup replica
// with its primary.
func CheckBackupsEqualPrimaries(t testing.TB, c *clustertest.Cluster, store Store) {
	t.Helper()
	ms := c.Members()
	tab := ms[0].Inspect().Table()
	values := map[string]map[string]int64{}
	for i, m := range ms {
		values[m.ID()] = Local(t, c, store, i)
	}
	compared := 0
	for _, m := range ms {
		for name, v := range values[m.ID()] {
			p := m.Partitions().PartitionID(name)
			if tab.Owner(p) != m.ID() {
				continue
			}
			for _, b := range tab.BackupsOf(p) {
				if bv, ok := values[b][name]; !ok || bv != v {
					t.Errorf("value %s: primary %d, backup on %s %d (present %v)", name, v, b, bv, ok)
				}
				compared++
			}
		}
	}
	if compared == 0 {
		t.Fatal("no backup compared")
	}
}

// CheckPlacement asserts every member owns floor/ceil of the partitions
// and holds data only for partitions it holds a replica of.
func CheckPlacement(t testing.TB, c *clustertest.Cluster, store Store) {
	t.Helper()
	ms := c.Members()
	tab := ms[0].Inspect().Table()
	counts := tab.Counts()
	lo, hi := 271/len(ms), (271+len(ms)-1)/len(ms)
	for i, m := range ms {
		if k := counts[m.ID()]; k < lo || k > hi {
			t.Errorf("member %d owns %d partitions, want %d..%d", i, k, lo, hi)
		}
		for name := range Local(t, c, store, i) {
			if p := m.Partitions().PartitionID(name); tab.ReplicaIndex(p, m.ID()) < 0 {
				t.Errorf("member %d holds value %s of partition %d, replicas %s %v: leaked data", i, name, p, tab.Owner(p), tab.BackupsOf(p))
			}
		}
	}
}

// LostPartitions sums partita_partition_lost_total over the members.
func LostPartitions(t testing.TB, c *clustertest.Cluster) float64 {
	t.Helper()
	var sum float64
	for _, m := range c.Members() {
		sum += clustertest.Scrape(t, m).Value("partita_partition_lost_total")
	}
	return sum
}
