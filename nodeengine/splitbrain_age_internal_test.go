package nodeengine

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
)

func withResetCounters(c *config.Config) { testkit.AddResetCounters(c) }

// resets returns how many times each of member n's resetCounter services
// was Reset, by name.
func resets(n *Node) map[string]int64 {
	out := map[string]int64{}
	for _, name := range testkit.ResetServices {
		out[name] = n.services[name].(*testkit.ResetCounter).Resets()
	}
	return out
}

// checkCounterBackups waits until the cluster of nodes is safe, then
// compares every counter on every backup replica with its primary, by
// the table of nodes[0].
func checkCounterBackups(t *testing.T, nodes []*Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := nodes[0].WaitClusterSafe(ctx); err != nil {
		t.Fatal(err)
	}
	tab := nodes[0].view.table.Load()
	values := map[string]map[string]int64{}
	for _, n := range nodes {
		svc, _ := n.Service(counter.ServiceName)
		vals, err := svc.(*counter.Service).LocalValues(ctx)
		if err != nil {
			t.Fatal(err)
		}
		values[n.ID()] = vals
	}
	compared := 0
	for _, n := range nodes {
		for name, v := range values[n.ID()] {
			p := n.Partitions().PartitionID(name)
			if tab.Owner(p) != n.ID() {
				continue
			}
			for _, b := range tab.BackupsOf(p) {
				if bv, ok := values[b][name]; !ok || bv != v {
					t.Errorf("counter %s: primary on %s %d, backup on %s %d (present %v)", name, n.Address(), v, b, bv, ok)
				}
				compared++
			}
		}
	}
	if compared == 0 {
		t.Fatal("no backup compared")
	}
}

// Two clusters of one name started apart, at different times, then
// allowed to meet (each hears of the other at once, as multicast would
// have them): the smaller always merges into the larger, whichever was
// formed first. Age decides nothing: a smaller cluster whose master is
// older than every member of the larger one still merges, and its
// members, younger once merged, leave the larger one's master in place.
// Each ManagedService of each member of the smaller cluster is Reset
// exactly once, the larger one's never, and every backup equals its
// primary afterwards.
func TestSmallerMergesWhicheverFormedFirst(t *testing.T) {
	for _, tc := range []struct {
		name        string
		largerFirst bool
	}{{"larger-first", true}, {"smaller-first", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := func(i int, c *config.Config) {
				c.UseFastFailureDetection()
				c.SplitBrain.FirstProbeDelay = time.Hour // they meet when the test says
				withResetCounters(c)
			}
			start := func(n int, events *lifecycleLog) []*Node {
				t.Helper()
				nodes, err := StartLocal(ctx, n, cfg, WithLifecycleListener(events.add))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ShutdownLocal(nodes) })
				if err := WaitStable(ctx, nodes); err != nil {
					t.Fatal(err)
				}
				return nodes
			}
			largeEvents, smallEvents := &lifecycleLog{}, &lifecycleLog{}
			var large, small []*Node
			if tc.largerFirst {
				large = start(3, largeEvents)
				small = start(2, smallEvents)
			} else {
				small = start(2, smallEvents)
				large = start(3, largeEvents)
			}
			inc := func(n *Node, name string, by int64) {
				t.Helper()
				if _, err := counterOn(t, n, name).Inc(ctx, by); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 10 {
				inc(large[i%3], fmt.Sprintf("c%d", i), 5)
				inc(small[i%2], fmt.Sprintf("c%d", i), 2)
				inc(small[i%2], fmt.Sprintf("small-only%d", i), 3)
			}
			large[0].sb.heard(small[1].Address())
			small[0].sb.heard(large[1].Address())
			all := append(slices.Clone(large), small...)
			waitMerged(t, all)
			for _, n := range all {
				if got := n.view.masterID(); got != large[0].ID() {
					t.Fatalf("member %s sees master %s, want the larger cluster's %s", n.Address(), got, large[0].ID())
				}
			}
			// Each of the smaller cluster's two members: MERGING, then MERGED.
			testkit.Eventually(t, func() bool {
				got := smallEvents.get()
				slices.Sort(got)
				return slices.Equal(got, []spi.LifecycleState{spi.Merging, spi.Merging, spi.Merged, spi.Merged})
			})
			if got := largeEvents.get(); len(got) != 0 {
				t.Fatalf("the larger cluster's members went through %v, want no merge", got)
			}
			for i := range 10 {
				for _, n := range []*Node{large[0], small[0]} {
					if v, err := counterOn(t, n, fmt.Sprintf("c%d", i)).Get(ctx); err != nil || v != 7 {
						t.Fatalf("c%d through %s = %d, %v; want 7 (5 + 2)", i, n.Address(), v, err)
					}
					if v, err := counterOn(t, n, fmt.Sprintf("small-only%d", i)).Get(ctx); err != nil || v != 3 {
						t.Fatalf("small-only%d through %s = %d, %v; want 3", i, n.Address(), v, err)
					}
				}
			}
			for _, n := range all {
				want, side := int64(0), "larger"
				if slices.Contains(small, n) {
					want, side = 1, "smaller"
				}
				for name, got := range resets(n) {
					if got != want {
						t.Errorf("member %s of the %s cluster: service %s was Reset %d times, want %d",
							n.Address(), side, name, got, want)
					}
				}
			}
			checkCounterBackups(t, all)
		})
	}
}
