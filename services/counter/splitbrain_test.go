package counter_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
)

// onPartition runs fn as partition p's executor on member n and waits.
func onPartition(t *testing.T, n *nodeengine.Node, p int, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if err := n.Operations().RunOnPartition(p, func() { fn(); close(done) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("partition %d's executor on %s did not run", p, n.Address())
	}
}

func service(n *nodeengine.Node) *counter.Service {
	svc, _ := n.Service(counter.ServiceName)
	return svc.(*counter.Service)
}

// mergeCluster does what the engine does when small merges into large:
// every member of small hands PrepareMerge's operations for the
// partitions it owns, and they are invoked on large's owners.
func mergeCluster(t *testing.T, small, large *clustertest.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range small.Members() {
		for p := range m.Partitions().PartitionCount() {
			if !m.Partitions().IsLocalOwner(p) {
				continue
			}
			var ops []spi.Operation
			onPartition(t, m, p, func() { ops = service(m).PrepareMerge(p) })
			for _, op := range ops {
				if _, err := large.Member(0).Operations().Invoke(ctx, counter.ServiceName, op, p); err != nil {
					t.Fatalf("merge of partition %d: %v", p, err)
				}
			}
		}
	}
}

// checkReplicas checks that every replica of the partition of each name
// holds the same states as its primary.
func checkReplicas(t *testing.T, c *clustertest.Cluster, names ...string) {
	t.Helper()
	c.WaitClusterSafe()
	for _, name := range names {
		p := c.Member(0).Partitions().PartitionID(name)
		var primary map[string]counter.State
		replicas := 0
		for _, m := range c.Members() {
			if m.Partitions().ReplicaIndex(p) < 0 {
				continue
			}
			var got map[string]counter.State
			onPartition(t, m, p, func() { got = service(m).PartitionStates(p) })
			if primary == nil {
				primary = got
			} else if !maps.EqualFunc(got, primary, counter.State.Equal) {
				t.Fatalf("partition %d: replica on %s holds %v, another %v", p, m.Address(), got, primary)
			}
			replicas++
		}
		if replicas != 2 {
			t.Fatalf("partition %d has %d replicas, want 2", p, replicas)
		}
	}
}

func incOn(t *testing.T, c *clustertest.Cluster, member int, name string, amount int64) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := getCounter(t, c, member, name).Inc(ctx, amount)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func want(t *testing.T, c *clustertest.Cluster, name string, v int64) {
	t.Helper()
	for i := range c.Members() {
		if got := incOn(t, c, i, name, 0); got != v {
			t.Fatalf("%s read on member %d = %d, want %d", name, i, got, v)
		}
	}
}

// Two clusters of one name that never met stand for the two sides of a
// split: the smaller one's PrepareMerge operations, invoked on the larger
// one as the engine will, lose no increment of either side (10, then +5
// on the larger side and +2 on the smaller: 17), and the backups hold
// what the primaries hold. With put-if-absent chosen in the config, the
// larger side's counters win instead.
func TestMergeBetweenClusters(t *testing.T) {
	for _, tc := range []struct {
		policy string
		c      int64
	}{{"", 17}, {"put-if-absent", 15}} {
		t.Run("policy="+tc.policy, func(t *testing.T) {
			policy := clustertest.WithConfig(func(_ int, cfg *config.Config) {
				for j, sc := range cfg.Services {
					if sc.Type == counter.TypeName {
						cfg.Services[j].MergePolicy = tc.policy
					}
				}
			})
			large := clustertest.New(t, 3, policy)
			small := clustertest.New(t, 2)
			// The history both sides share: c at 10 on the smaller side,
			// merged into the empty larger one.
			names := []string{"c", "small-only", "large-only"}
			for i := range 10 {
				incOn(t, small, i%2, "c", 1)
			}
			mergeCluster(t, small, large)
			want(t, large, "c", 10)
			// The split: each side counts on its own.
			incOn(t, large, 1, "c", 5)
			incOn(t, small, 0, "c", 1)
			incOn(t, small, 1, "c", 1)
			incOn(t, small, 0, "small-only", 3)
			incOn(t, large, 2, "large-only", 7)
			want(t, small, "c", 12)
			want(t, large, "c", 15)
			mergeCluster(t, small, large)
			want(t, large, "c", tc.c)
			want(t, large, "small-only", 3)
			want(t, large, "large-only", 7)
			checkReplicas(t, large, names...)
			if tc.policy == "" {
				if p := large.Member(0).MergePolicy(counter.ServiceName); p.Name() != counter.CounterSumName {
					t.Fatalf("default policy %s, want %s", p.Name(), counter.CounterSumName)
				}
			}
			// Increments after the merge count on, once.
			if got := incOn(t, large, 2, "c", 1); got != tc.c+1 {
				t.Fatalf("after the merge: %d, want %d", got, tc.c+1)
			}
		})
	}
}

// A real split of a running cluster, {0,1} | {2}, with increments on both
// sides, then a heal: the sides find each other by themselves, the single
// member merges into the pair (its services Reset), and no increment of
// either side is lost or doubled: 10 before the split, +5 on the pair and
// +2 on the single member make 17; a counter made only on the single
// member comes over; backups equal primaries.
func TestSplitHealIsLossless(t *testing.T) {
	c := clustertest.New(t, 3)
	c.WaitClusterSafe()
	// The counter both sides increment has a replica on the single
	// member, so that its side serves the 10 (a partition without one
	// starts empty there, with the error "partitions lost").
	shared := ""
	single, table := c.Member(2), c.Member(0).Inspect().Table()
	for k := 0; shared == ""; k++ {
		name := fmt.Sprintf("shared-%d", k)
		p := single.Partitions().PartitionID(name)
		if table.Owners[p] == single.ID() || slices.Contains(table.BackupsOf(p), single.ID()) {
			shared = name
		}
	}
	incOn(t, c, 0, shared, 10)
	c.Split([]int{0, 1}, []int{2})
	clustertest.Eventually(t, 30*time.Second, func() error {
		if n := len(c.Member(2).Members()); n != 1 {
			return fmt.Errorf("the single member still sees %d members", n)
		}
		if n := len(c.Member(0).Members()); n != 2 {
			return fmt.Errorf("the pair still sees %d members", n)
		}
		return nil
	})
	// Each side serves the counter on its own (the single member has
	// promoted its backups or started partitions afresh).
	clustertest.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := getCounter(t, c, 2, "probe").Inc(ctx, 0)
		return err
	})
	if v := incOn(t, c, 0, shared, 5); v != 15 {
		t.Fatalf("pair side: %d, want 15", v)
	}
	if v := incOn(t, c, 2, shared, 2); v != 12 {
		t.Fatalf("single side: %d, want 12", v)
	}
	incOn(t, c, 2, "only-single", 3)
	c.Heal()
	healed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitMerged(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("merged %v after the heal (split-brain.probe-interval %v)", time.Since(healed).Round(time.Millisecond), c.Config(0).SplitBrain.ProbeInterval)
	want(t, c, shared, 17)
	want(t, c, "only-single", 3)
	checkReplicas(t, c, shared, "only-single")
	// Only the single member merged. The pair's members never took each
	// other for dead: the single member's memberlist, which declared
	// them dead during the split, must not spread that news once joined
	// (a member of the pair declared dead rejoins as a merge of one).
	for i, wantMerges := range []float64{0, 0, 1} {
		if got := clustertest.Scrape(t, c.Member(i)).Value("partita_split_brain_merges_total", "result", "merged"); got != wantMerges {
			t.Errorf("member %d merged %v times, want %v", i, got, wantMerges)
		}
	}
}
