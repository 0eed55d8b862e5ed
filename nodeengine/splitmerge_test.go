package nodeengine_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/internal/testservice"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/spi/mergepolicy"
)

// Split-brain healing on real splits of running clusters (issue 20), with
// the test service, which merges register by register under its merge
// policy: who merges (the smaller side; on a tie, the side whose master's
// address sorts after; never a cluster of another name), and what each
// standard policy keeps.

// splitApart splits c into groups and waits until each side lists exactly
// its own members and is stable: each is a cluster of its own.
func splitApart(t *testing.T, c *clustertest.Cluster, groups ...[]int) [][]*nodeengine.Node {
	t.Helper()
	ms := c.Members()
	sides := make([][]*nodeengine.Node, len(groups))
	for g, idx := range groups {
		for _, i := range idx {
			sides[g] = append(sides[g], ms[i])
		}
	}
	c.Split(groups...)
	clustertest.Eventually(t, splitTimeout, func() error {
		var errs []error
		for _, side := range sides {
			for _, n := range side {
				errs = append(errs, sees(n, side...))
			}
		}
		return errors.Join(errs...)
	})
	for _, side := range sides {
		clustertest.WaitStable(t, splitTimeout, side...)
	}
	return sides
}

// heal heals c's split and waits until it is one stable cluster again.
func heal(t *testing.T, c *clustertest.Cluster) {
	t.Helper()
	c.Heal()
	healed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), splitTimeout)
	defer cancel()
	if err := c.WaitMerged(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("merged %v after the heal", time.Since(healed).Round(time.Millisecond))
}

// merges returns how many merges member n has made (its
// partita_split_brain_merges_total, of any result).
func merges(t *testing.T, n *nodeengine.Node) float64 {
	t.Helper()
	return clustertest.Scrape(t, n).Value("partita_split_brain_merges_total")
}

// addOn adds delta to register key through member n.
func addOn(t *testing.T, ctx context.Context, n *nodeengine.Node, key string, delta int64) {
	t.Helper()
	if _, err := testservice.Add(ctx, n, key, delta); err != nil {
		t.Fatalf("add %d to %s through %s: %v", delta, key, n.Address(), err)
	}
}

// wantRegisters checks that every member reads the registers want (0 for
// a register absent), that the replicas of each hold what its primary
// holds, and that the registers absent hold no value on any member.
func wantRegisters(t *testing.T, c *clustertest.Cluster, want map[string]int64, absent ...string) {
	t.Helper()
	ctx := ctxT(t)
	keys := slices.Sorted(maps.Keys(want))
	for _, n := range c.Members() {
		for _, k := range append(keys, absent...) {
			v, err := testservice.Get(ctx, n, k)
			if err != nil || v != want[k] {
				t.Errorf("%s read through %s = %d, %v; want %d", k, n.Address(), v, err, want[k])
			}
		}
	}
	c.WaitClusterSafe()
	for i, n := range c.Members() {
		vals := local(t, c, i)
		for _, k := range absent {
			if v, ok := vals[k]; ok {
				t.Errorf("member %s holds %s = %d, want no value", n.Address(), k, v)
			}
		}
		tab := n.Inspect().Table()
		for _, k := range keys {
			if tab.ReplicaIndex(n.Partitions().PartitionID(k), n.ID()) < 0 {
				continue
			}
			if v := vals[k]; v != want[k] {
				t.Errorf("replica %d of %s on member %s holds %d, want %d", tab.ReplicaIndex(n.Partitions().PartitionID(k), n.ID()), k, n.Address(), v, want[k])
			}
		}
	}
	clusterload.CheckBackupsEqualPrimaries(t, c, clusterload.TestService)
}

// Each standard merge policy, chosen in the test service's config entry,
// on a real {0,1} | {2} split with writes on both sides: after the heal,
// the single member merges into the pair, and each register is what the
// policy says (the pair's value is the existing one, the single member's
// the merging one), on every replica.
func TestMergePoliciesOnASplit(t *testing.T) {
	for _, tc := range []struct {
		policy string
		want   map[string]int64
		absent []string
	}{
		{mergepolicy.PutIfAbsentName, map[string]int64{"large-higher": 15, "small-higher": 11, "small-only": 3, "large-only": 7}, nil},
		{mergepolicy.PassThroughName, map[string]int64{"large-higher": 12, "small-higher": 17, "small-only": 3, "large-only": 7}, nil},
		{mergepolicy.DiscardName, map[string]int64{"large-higher": 15, "small-higher": 11, "large-only": 7}, []string{"small-only"}},
		{mergepolicy.HigherValueName, map[string]int64{"large-higher": 15, "small-higher": 17, "small-only": 3, "large-only": 7}, nil},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			c := newCluster(t, 3, 1, func(_ int, cfg *config.Config) {
				for j, sc := range cfg.Services {
					if sc.Name == testservice.Name {
						cfg.Services[j].MergePolicy = tc.policy
					}
				}
			})
			if got := c.Member(0).MergePolicy(testservice.Name).Name(); got != tc.policy {
				t.Fatalf("the test service's merge policy is %s, want %s", got, tc.policy)
			}
			ctx := splitCtx(t)
			sides := splitApart(t, c, []int{0, 1}, []int{2})
			large, small := sides[0][0], sides[1][0]
			addOn(t, ctx, large, "large-higher", 15)
			addOn(t, ctx, small, "large-higher", 12)
			addOn(t, ctx, large, "small-higher", 11)
			addOn(t, ctx, small, "small-higher", 17)
			addOn(t, ctx, small, "small-only", 3)
			addOn(t, ctx, sides[0][1], "large-only", 7)
			heal(t, c)
			if !large.Inspect().IsMaster() {
				t.Errorf("the pair's master %s is not the merged cluster's master", large.Address())
			}
			for _, n := range c.Members() {
				want := 0.0
				if n == small {
					want = 1
				}
				if got := merges(t, n); got != want {
					t.Errorf("member %s made %v merges, want %v", n.Address(), got, want)
				}
			}
			wantRegisters(t, c, tc.want, tc.absent...)
		})
	}
}

// A {0,1} | {2,3} split: a tie. The side whose master's address sorts
// after the other's merges, and only that side: both masters decide
// alike. Each side's writes come over (put-if-absent, the default, on
// registers only one side has).
func TestTieOnASplitMergesOneSide(t *testing.T) {
	c := newCluster(t, 4, 1, nil)
	ctx := splitCtx(t)
	sides := splitApart(t, c, []int{0, 1}, []int{2, 3})
	stays, goes := sides[0], sides[1]
	if goes[0].Address() < stays[0].Address() {
		stays, goes = goes, stays
	}
	for _, side := range sides {
		if !side[0].Inspect().IsMaster() {
			t.Fatalf("member %s is not its side's master", side[0].Address())
		}
	}
	t.Logf("masters %s (stays) and %s (merges: its address sorts after)", stays[0].Address(), goes[0].Address())
	want := map[string]int64{}
	for i := range 10 {
		k := fmt.Sprintf("stays-%d", i)
		addOn(t, ctx, stays[i%2], k, int64(i+1))
		want[k] = int64(i + 1)
		k = fmt.Sprintf("goes-%d", i)
		addOn(t, ctx, goes[i%2], k, int64(i+100))
		want[k] = int64(i + 100)
	}
	heal(t, c)
	if !stays[0].Inspect().IsMaster() {
		t.Errorf("the staying side's master %s is not the merged cluster's master", stays[0].Address())
	}
	for _, n := range stays {
		if got := merges(t, n); got != 0 {
			t.Errorf("member %s of the side whose master sorts first made %v merges, want none", n.Address(), got)
		}
	}
	for _, n := range goes {
		if got := clustertest.Scrape(t, n).Value("partita_split_brain_merges_total", "result", "merged"); got != 1 {
			t.Errorf("member %s of the side whose master sorts after made %v merges, want 1", n.Address(), got)
		}
	}
	wantRegisters(t, c, want)
}

// freeAddress returns a loopback address whose port is free for TCP and
// UDP now (a member port uses both), for a member that others must name
// before it starts.
func freeAddress(t *testing.T) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no free port for TCP and UDP")
	return ""
}

// Two clusters of different names whose members all have the same join
// list, naming the first member of each: each master probes the other
// cluster every probe interval (1 s in the fast preset) and finds another
// name. Watched over several probes, they never merge: no merge counted,
// no lifecycle event, each keeps its members and its data.
func TestClustersOfAnotherNameOnTheSameSeedsNeverMerge(t *testing.T) {
	seeds := []string{freeAddress(t), freeAddress(t)}
	start := func(name string, first string, events *eventLog) *clustertest.Cluster {
		return newCluster(t, 2, 1, func(i int, cfg *config.Config) {
			cfg.Cluster.Name = name
			cfg.Network.Join.Members = slices.Clone(seeds)
			if i == 0 {
				cfg.Network.Bind = first
			}
		}, clustertest.WithLifecycleListener(events.add))
	}
	var aEvents, bEvents eventLog
	a := start("alpha", seeds[0], &aEvents)
	b := start("beta", seeds[1], &bEvents)
	ctx := ctxT(t)
	want := map[*clustertest.Cluster]map[string]int64{a: {}, b: {}}
	for i := range 10 {
		for j, c := range []*clustertest.Cluster{a, b} {
			k := fmt.Sprintf("shared-%d", i)
			addOn(t, ctx, c.Member(i%2), k, int64(10*j+i+1))
			want[c][k] = int64(10*j + i + 1)
		}
	}
	// Several probes each way, each finding the other name.
	const probes = 3
	clustertest.Eventually(t, splitTimeout, func() error {
		for _, c := range []*clustertest.Cluster{a, b} {
			m := c.Member(0)
			if got := clustertest.Scrape(t, m).Value("partita_split_brain_probes_total", "found", "other_name"); got < probes {
				return fmt.Errorf("master %s of %s has probed another cluster name %v times, waiting for %d", m.Address(), m.ClusterName(), got, probes)
			}
		}
		return nil
	})
	for _, c := range []*clustertest.Cluster{a, b} {
		ms := c.Members()
		for i, n := range ms {
			if err := sees(n, ms...); err != nil {
				t.Error(err)
			}
			if got := clustertest.Scrape(t, n).Value("partita_split_brain_merges_total"); got != 0 {
				t.Errorf("member %d of %s made %v merges", i, n.ClusterName(), got)
			}
		}
		scraped := clustertest.Scrape(t, ms[0])
		for _, found := range []string{"larger", "smaller", "unsettled", "incompatible", "declared_dead"} {
			if got := scraped.Value("partita_split_brain_probes_total", "found", found); got != 0 {
				t.Errorf("master of %s found %q %v times", ms[0].ClusterName(), found, got)
			}
		}
		wantRegisters(t, c, want[c])
	}
	for i := range 2 {
		if got := append(aEvents.states(i), bEvents.states(i)...); len(got) != 0 {
			t.Errorf("member %d of a cluster went through %v", i, got)
		}
	}
}
