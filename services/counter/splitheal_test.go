package counter_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// Real splits of running clusters with the counter (issue 20): the sides
// count on their own, heal, and the smaller merges into the larger with
// every acknowledged increment of both sides counted once.

// resetServices are the reset-counting services withResetCounters adds
// (testkit.ResetCounter).
var resetServices = testkit.ResetServices

// withResetCounters adds them next to the counter.
func withResetCounters(_ int, cfg *config.Config) { testkit.AddResetCounters(cfg) }

// resets returns how many times member n's service name was Reset.
func resets(n *nodeengine.Node, name string) int64 {
	svc, _ := n.Service(name)
	return svc.(*testkit.ResetCounter).Resets()
}

// sideStore is the counter store counting the increments acknowledged
// through each member while counting is on.
type sideStore struct {
	clusterload.Store
	on    atomic.Bool
	acked map[*nodeengine.Node]*atomic.Int64
}

func (s *sideStore) Inc(ctx context.Context, n *nodeengine.Node, name string) error {
	err := s.Store.Inc(ctx, n, name)
	if err == nil && s.on.Load() {
		s.acked[n].Add(1)
	}
	return err
}

// waitSides waits until each side lists exactly its own members and is
// stable.
func waitSides(t *testing.T, sides ...[]*nodeengine.Node) {
	t.Helper()
	clustertest.Eventually(t, 60*time.Second, func() error {
		for _, side := range sides {
			for _, n := range side {
				if k := len(n.Members()); k != len(side) {
					return fmt.Errorf("member %s sees %d members, its side has %d", n.Address(), k, len(side))
				}
			}
		}
		return nil
	})
	for _, side := range sides {
		clustertest.WaitStable(t, 60*time.Second, side...)
	}
}

// healAndWait heals c and waits until it is one cluster again.
func healAndWait(t *testing.T, c *clustertest.Cluster) {
	t.Helper()
	c.Heal()
	healed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitMerged(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("merged %v after the heal", time.Since(healed).Round(time.Millisecond))
}

// A {0,1} | {2} split under load: callers keep incrementing counters
// through all three members before, during and after the split, so both
// sides acknowledge increments on the same counters; during the split,
// other callers increment counters that only one side writes, through
// that side alone (the single member's are the smaller side's only). After the heal the
// single member merges into the pair: each of its ManagedServices is
// Reset exactly once (the pair's never), no acknowledged increment is lost
// and none counted twice, every backup equals its primary and no member
// keeps data of a partition it holds no replica of.
func TestSplitUnderLoadIsLossless(t *testing.T) {
	c := clustertest.New(t, 3, clustertest.WithConfig(withResetCounters))
	c.WaitClusterSafe()
	ms := c.Members()
	store := &sideStore{Store: counters, acked: map[*nodeengine.Node]*atomic.Int64{}}
	for _, n := range ms {
		store.acked[n] = new(atomic.Int64)
	}
	l := clusterload.Start(t, store, 8, 100, func(r *rand.Rand) *nodeengine.Node { return ms[r.IntN(len(ms))] })
	l.WaitOps(t, 300)

	c.Split([]int{0, 1}, []int{2})
	waitSides(t, ms[:2], ms[2:])
	// Also loads through one side only, on counters of their own.
	sideStores, sideLoads := startSideLoads(t, map[string][]*nodeengine.Node{"pair-": ms[:2], "single-": ms[2:]})
	store.on.Store(true)
	endSplitLoads(t, l, store, sideLoads, sideStores)
	t.Logf("acknowledged during the split: %d through the pair, %d through the single member",
		store.acked[ms[0]].Load()+store.acked[ms[1]].Load(), store.acked[ms[2]].Load())

	healAndWait(t, c)
	l.WaitOps(t, 300)
	verifyLoads(t, c, append(sideLoads, l))
	clusterload.CheckPlacement(t, c, counters)
	for i, n := range ms {
		want := int64(0)
		if i == 2 {
			want = 1
		}
		for _, name := range resetServices {
			if got := resets(n, name); got != want {
				t.Errorf("member %d (%s): service %s was Reset %d times, want %d", i, n.Address(), name, got, want)
			}
		}
	}
}

// startSideLoads starts, during a split, a load through each side only
// (the sides' members, by counter prefix) on counters of its own,
// counting what each member acknowledges until the stores are turned off.
func startSideLoads(t *testing.T, sides map[string][]*nodeengine.Node) (map[string]*sideStore, []*clusterload.Load) {
	stores := map[string]*sideStore{}
	var loads []*clusterload.Load
	for prefix, side := range sides {
		s := &sideStore{Store: prefixed{counters, prefix}, acked: map[*nodeengine.Node]*atomic.Int64{}}
		for _, n := range side {
			s.acked[n] = new(atomic.Int64)
		}
		s.on.Store(true)
		stores[prefix] = s
		loads = append(loads, clusterload.Start(t, s, 2, 20, func(r *rand.Rand) *nodeengine.Node { return side[r.IntN(len(side))] }))
	}
	return stores, loads
}

// endSplitLoads ends the split's share of the loads: once the load l on
// store (through every member) and the side loads have made more calls,
// the stores stop counting, and t fails unless every member acknowledged
// increments of each during the split.
func endSplitLoads(t *testing.T, l *clusterload.Load, store *sideStore, sideLoads []*clusterload.Load, stores map[string]*sideStore) {
	t.Helper()
	l.WaitOps(t, 600)
	for _, sl := range sideLoads {
		sl.WaitOps(t, 100)
	}
	store.on.Store(false)
	for _, s := range stores {
		s.on.Store(false)
	}
	for n, k := range store.acked {
		if k.Load() == 0 {
			t.Fatalf("no increment acknowledged through member %s during the split", n.Address())
		}
	}
	for prefix, s := range stores {
		for n, k := range s.acked {
			if k.Load() == 0 {
				t.Fatalf("no increment of the %sonly load acknowledged through member %s during the split", prefix, n.Address())
			}
		}
	}
}

// verifyLoads stops every load, then checks each (VerifyAfterFailure):
// all stop first, as the check compares every counter's backups with its
// primary.
func verifyLoads(t *testing.T, c *clustertest.Cluster, loads []*clusterload.Load) {
	t.Helper()
	for _, l := range loads {
		l.Halt()
	}
	for _, l := range loads {
		l.VerifyAfterFailure(t, c)
	}
}

// Increments through the merging member while it merges: its calls are
// refused and retried until the larger cluster's table arrives, then go
// to the larger cluster's owners; none is acknowledged and lost. (The
// merging member is its own cluster's master until it joins: once it has
// dropped its table it must not make itself a fresh one and serve on it.)
func TestWritesThroughTheMergingMember(t *testing.T) {
	c := clustertest.New(t, 3)
	c.WaitClusterSafe()
	ms := c.Members()
	c.Split([]int{0, 1}, []int{2})
	waitSides(t, ms[:2], ms[2:])
	l := clusterload.Start(t, counters, 8, 100, func(*rand.Rand) *nodeengine.Node { return ms[2] })
	l.WaitOps(t, 200)
	healAndWait(t, c)
	l.WaitOps(t, 200)
	l.VerifyAfterFailure(t, c)
}

// An increment from the single member's side in flight when the network
// splits: it ran on the pair's primary, whose answer the split cut off;
// the caller retries it on its own side, which has no record of it, and
// it runs there too. After the merge it must still count once, as it was
// acknowledged once.
func TestAnIncrementInFlightAcrossTheSplitCountsOnce(t *testing.T) {
	c := clustertest.New(t, 3)
	c.WaitClusterSafe()
	ms := c.Members()
	name := ""
	for k := 0; name == ""; k++ {
		n := fmt.Sprintf("inflight%d", k)
		p := ms[0].Partitions().PartitionID(n)
		if tab := ms[0].Inspect().Table(); tab.Owner(p) == ms[0].ID() && tab.Replica(p, 1) == ms[1].ID() {
			name = n
		}
	}
	incOn(t, c, 0, name, 10)
	// The answer to member 2's increment is held as it arrives, so the
	// split cuts it off.
	hold := make(chan struct{})
	f := &clustertest.Fault{From: ms[2].ID(), To: ms[0].ID(), Kind: "CounterService/", Responses: true, Hold: hold}
	remove := c.AddFault(f)
	ctr := getCounter(t, c, 2, name)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, err := ctr.Inc(ctx, 1)
		done <- err
	}()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if f.Hits() == 0 {
			return fmt.Errorf("the increment's answer has not arrived yet")
		}
		return nil
	})
	c.Split([]int{0, 1}, []int{2})
	remove()
	close(hold)
	if err := <-done; err != nil {
		t.Fatalf("the increment in flight across the split: %v", err)
	}
	waitSides(t, ms[:2], ms[2:])
	healAndWait(t, c)
	want(t, c, name, 11)
}

// prefixed is a Store whose values are named prefix+name, so that two
// loads count on different counters.
type prefixed struct {
	clusterload.Store
	prefix string
}

func (s prefixed) Inc(ctx context.Context, n *nodeengine.Node, name string) error {
	return s.Store.Inc(ctx, n, s.prefix+name)
}

func (s prefixed) Get(ctx context.Context, n *nodeengine.Node, name string) (int64, error) {
	return s.Store.Get(ctx, n, s.prefix+name)
}

// A {0,1,2} | {3,4} split of five members with two synchronous backups,
// under load: callers keep incrementing counters through all five members
// before, during and after the split (so both sides count on the same
// counters), and, during the split, others through the members of one
// side only (counters that side alone makes). Each side promotes the
// backups it holds of the partitions whose primary is on the other side:
// a counter whose primary was across the split is served on each side
// with its value from before the split (the pair starts afresh only the
// partitions it held no replica of). After the heal the pair merges into
// the three: each of its ManagedServices is Reset exactly once (the
// three's never); every counter is its value before the split plus the
// increments of both sides (10, +5 on the three, +2 on the pair: 17; under
// load, acknowledged <= value <= acknowledged + failed); every backup
// equals its primary, each partition has two backups again and no member
// keeps data of a partition it holds no replica of.
func TestSplitOfFiveWithTwoBackups(t *testing.T) {
	c := clustertest.New(t, 5, clustertest.WithConfig(func(i int, cfg *config.Config) {
		cfg.Partitions.BackupCount = 2
		for j, sc := range cfg.Services {
			if sc.Type == counter.TypeName {
				cfg.Services[j].Properties = cfg.Services[j].Properties.With("backup-count", strconv.Itoa(2))
			}
		}
		withResetCounters(i, cfg)
	}))
	c.WaitClusterSafe()
	ms := c.Members()
	three, pair := ms[:3], ms[3:]

	// A counter of each side whose primary is on the other side and which
	// has a backup on this one.
	promoted := map[string][]*nodeengine.Node{}
	tab := ms[0].Inspect().Table()
	on := func(side []*nodeengine.Node, id string) bool {
		return slices.ContainsFunc(side, func(n *nodeengine.Node) bool { return n.ID() == id })
	}
	for _, sides := range [][2][]*nodeengine.Node{{three, pair}, {pair, three}} {
		here, there := sides[0], sides[1]
		for k := 0; ; k++ {
			name := fmt.Sprintf("promoted%d", k)
			p := ms[0].Partitions().PartitionID(name)
			if on(there, tab.Owner(p)) && slices.ContainsFunc(tab.BackupsOf(p), func(id string) bool { return on(here, id) }) {
				promoted[name] = here
				break
			}
		}
	}
	const names = 20
	for i := range names {
		incOn(t, c, i%5, fmt.Sprintf("c%d", i), 10)
	}
	for name := range promoted {
		incOn(t, c, 0, name, 10)
	}

	store := &sideStore{Store: counters, acked: map[*nodeengine.Node]*atomic.Int64{}}
	for _, n := range ms {
		store.acked[n] = new(atomic.Int64)
	}
	l := clusterload.Start(t, store, 6, 100, func(r *rand.Rand) *nodeengine.Node { return ms[r.IntN(len(ms))] })
	l.WaitOps(t, 300)

	c.Split([]int{0, 1, 2}, []int{3, 4})
	waitSides(t, three, pair)
	for name, side := range promoted {
		for _, n := range side {
			if v := incOn(t, c, slices.Index(ms, n), name, 0); v != 10 {
				t.Fatalf("%s, whose primary was across the split, read on %s during the split = %d, want 10 (a backup promoted)", name, n.Address(), v)
			}
		}
	}
	sideStores, sideLoads := startSideLoads(t, map[string][]*nodeengine.Node{"three-": three, "pair-": pair})
	store.on.Store(true)
	for i := range names {
		incOn(t, c, i%3, fmt.Sprintf("c%d", i), 5)
		incOn(t, c, 3+i%2, fmt.Sprintf("c%d", i), 2)
		incOn(t, c, 3+i%2, fmt.Sprintf("pair-only%d", i), 3)
		incOn(t, c, i%3, fmt.Sprintf("three-only%d", i), 7)
	}
	for name := range promoted {
		incOn(t, c, 0, name, 5)
		incOn(t, c, 3, name, 2)
	}
	endSplitLoads(t, l, store, sideLoads, sideStores)
	t.Logf("acknowledged during the split: %d through the three, %d through the pair",
		store.acked[ms[0]].Load()+store.acked[ms[1]].Load()+store.acked[ms[2]].Load(), store.acked[ms[3]].Load()+store.acked[ms[4]].Load())

	healAndWait(t, c)
	l.WaitOps(t, 300)
	verifyLoads(t, c, append(sideLoads, l))
	clusterload.CheckPlacement(t, c, counters)
	for i := range names {
		want(t, c, fmt.Sprintf("c%d", i), 17)
		want(t, c, fmt.Sprintf("pair-only%d", i), 3)
		want(t, c, fmt.Sprintf("three-only%d", i), 7)
	}
	for name := range promoted {
		want(t, c, name, 17)
	}
	tab = c.Member(0).Inspect().Table()
	for p := range tab.Owners {
		if k := len(tab.BackupsOf(p)); k != 2 {
			t.Fatalf("partition %d has %d backups after the merge, want 2", p, k)
		}
	}
	for i, n := range ms {
		wantResets := int64(0)
		if i >= 3 {
			wantResets = 1
		}
		for _, name := range resetServices {
			if got := resets(n, name); got != wantResets {
				t.Errorf("member %d (%s): service %s was Reset %d times, want %d", i, n.Address(), name, got, wantResets)
			}
		}
	}
}

// With split-brain protection min-size 2 on the counter, the single member
// of a {0,1} | {2} split refuses increments and reads with the typed error
// once it has noticed the split (applying none), while the pair serves;
// after the heal and the merge it serves again, with the pair's value.
func TestSplitBrainProtectionOnASplitUntilTheMerge(t *testing.T) {
	c := clustertest.New(t, 3, protectCounter(2, config.ProtectReadWrite))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	name := "guarded"
	incOn(t, c, 0, name, 5)
	ms := c.Members()
	c.Split([]int{0, 1}, []int{2})
	waitSides(t, ms[:2], ms[2:])
	single := getCounter(t, c, 2, name)
	for range 3 {
		_, err := single.Inc(ctx, 100)
		wantRefused(t, "Inc on the single member", err)
	}
	_, err := single.Get(ctx)
	wantRefused(t, "Get on the single member", err)
	if code, _ := readiness(t, ms[2]); code != http.StatusServiceUnavailable {
		t.Errorf("the single member's /health/ready = %d, want 503", code)
	}
	if v := incOn(t, c, 1, name, 3); v != 8 {
		t.Fatalf("Inc on the pair during the split = %d, want 8", v)
	}
	healAndWait(t, c)
	clustertest.Eventually(t, 30*time.Second, func() error {
		if code, reason := readiness(t, ms[2]); code != http.StatusOK {
			return fmt.Errorf("the merged member is not ready: %s", reason)
		}
		return nil
	})
	if v, err := single.Inc(ctx, 1); err != nil || v != 9 {
		t.Fatalf("Inc on the merged member = %d, %v; want 9 (5, +3 on the pair, the refused writes not applied)", v, err)
	}
	want(t, c, name, 9)
	checkReplicas(t, c, name)
}
