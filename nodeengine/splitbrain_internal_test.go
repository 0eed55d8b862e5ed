package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
)

// lifecycleLog records a member's lifecycle events.
type lifecycleLog struct {
	mu     sync.Mutex
	states []spi.LifecycleState
}

func (l *lifecycleLog) add(ev spi.LifecycleEvent) {
	l.mu.Lock()
	l.states = append(l.states, ev.State)
	l.mu.Unlock()
}

func (l *lifecycleLog) get() []spi.LifecycleState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.states)
}

// twoClusters starts two clusters of one name apart, of big and small
// members; the small one's events are recorded. Nobody looks for other
// clusters on a timer: the test says who hears whom.
func twoClusters(t *testing.T, big, small int) (a, b []*Node, events *lifecycleLog) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := func(i int, c *config.Config) {
		c.UseFastFailureDetection()
		c.SplitBrain.FirstProbeDelay = time.Hour
	}
	a, err := StartLocal(ctx, big, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ShutdownLocal(a) })
	events = &lifecycleLog{}
	b, err = StartLocal(ctx, small, cfg, WithLifecycleListener(events.add))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ShutdownLocal(b) })
	for _, side := range [][]*Node{a, b} { // each side settled: its size is what the test says
		if err := WaitStable(ctx, side); err != nil {
			t.Fatal(err)
		}
	}
	return a, b, events
}

// waitMerged waits until all the nodes form one stable cluster.
func waitMerged(t *testing.T, nodes []*Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := WaitStable(ctx, nodes); err != nil {
		t.Fatalf("the clusters did not merge: %v", err)
	}
}

// The smaller cluster, hearing of the larger, merges into it: every
// member of the merged cluster sees them all, the larger one's master
// stays master, and the smaller one's members go through MERGING to
// MERGED.
func TestSmallerClusterMergesIntoTheLarger(t *testing.T) {
	a, b, events := twoClusters(t, 2, 1)
	b[0].sb.heard(a[1].Address()) // any member of the larger cluster answers for it
	all := append(slices.Clone(a), b...)
	waitMerged(t, all)
	for _, n := range all {
		if n.view.masterID() != a[0].ID() {
			t.Fatalf("member %s sees master %s, want the larger cluster's %s", n.Address(), n.view.masterID(), a[0].ID())
		}
	}
	want := []spi.LifecycleState{spi.Merging, spi.Merged}
	testkit.Eventually(t, func() bool { return slices.Equal(events.get(), want) })
}

// The larger cluster, hearing of the smaller, asks it to merge; it does,
// after checking for itself.
func TestLargerClusterAsksTheSmallerToMerge(t *testing.T) {
	a, b, _ := twoClusters(t, 2, 1)
	a[0].sb.heard(b[0].Address())
	waitMerged(t, append(slices.Clone(a), b...))
	if got := a[0].view.masterID(); got != a[0].ID() {
		t.Fatalf("master is %s after the merge, want the larger cluster's %s", got, a[0].ID())
	}
}

// Of two clusters of one size, the one whose master's address sorts
// after the other's merges, whichever hears of the other.
func TestEqualClustersMergeByMasterAddress(t *testing.T) {
	a, b, _ := twoClusters(t, 1, 1)
	mine, other := b[0].localClusterInfo(), a[0].localClusterInfo()
	if shouldMerge(mine, other) == shouldMerge(other, mine) {
		t.Fatalf("both sides decide alike: %v", shouldMerge(mine, other))
	}
	b[0].sb.heard(a[0].Address())
	waitMerged(t, append(slices.Clone(a), b...))
	loser := a[0]
	if shouldMerge(mine, other) {
		loser = b[0]
	}
	if loser.view.isMaster() {
		t.Fatalf("the merging side's master %s is master of the merged cluster", loser.Address())
	}
}

// A member of another cluster name, or with another partition count,
// is never merged with.
func TestNoMergeAcrossNamesOrPartitionCounts(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*config.Config)
	}{
		{"name", func(c *config.Config) { c.Cluster.Name = "other" }},
		{"partitions", func(c *config.Config) { c.Partitions.Count = 100 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a, err := StartLocal(ctx, 2, func(i int, c *config.Config) { c.SplitBrain.FirstProbeDelay = time.Hour })
			if err != nil {
				t.Fatal(err)
			}
			defer ShutdownLocal(a)
			b, err := StartLocal(ctx, 1, func(i int, c *config.Config) { c.SplitBrain.FirstProbeDelay = time.Hour; tc.set(c) })
			if err != nil {
				t.Fatal(err)
			}
			defer ShutdownLocal(b)
			mine, theirs := b[0].localClusterInfo(), a[0].localClusterInfo()
			info, err := b[0].probe(ctx, a[0].Address(), probeInfo, "")
			if err != nil || info.MasterID != theirs.MasterID || info.Size != 2 {
				t.Fatalf("probe = %+v, %v", info, err)
			}
			if b[0].mergeable(mine, info, a[0].Address()) {
				t.Fatal("a cluster of another name or partition count is taken as mergeable")
			}
			b[0].lookForOtherClusters() // with a's member among its candidates
			b[0].sb.heard(a[0].Address())
			b[0].lookForOtherClusters()
			if b[0].sb.merging() || len(b[0].Members()) != 1 {
				t.Fatalf("merging %v, %d members", b[0].sb.merging(), len(b[0].Members()))
			}
		})
	}
}

// A probe of something that is not a member fails cleanly.
func TestProbeOfNothingFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := probeCluster(ctx, dialSelect, "127.0.0.1:1", probeInfo, ""); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe of a closed port: %v", err)
	}
}

// counterOn returns the counter name through member n.
func counterOn(t *testing.T, n *Node, name string) *counter.Counter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obj, err := n.Proxies().Get(ctx, counter.ServiceName, name)
	if err != nil {
		t.Fatal(err)
	}
	return obj.(*counter.Counter)
}

// The counters of both clusters survive their merge: increments made on
// either side are all counted, once, and a counter only the smaller one
// had comes over whole (the counter's default policy, counter-sum).
func TestMergeKeepsBothSidesCounters(t *testing.T) {
	a, b, events := twoClusters(t, 2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inc := func(n *Node, name string, by int64) {
		t.Helper()
		if _, err := counterOn(t, n, name).Inc(ctx, by); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		inc(a[i%2], fmt.Sprintf("c%d", i), 5)
		inc(b[0], fmt.Sprintf("c%d", i), 2)
		inc(b[0], fmt.Sprintf("only-b%d", i), 3)
	}
	b[0].sb.heard(a[0].Address())
	waitMerged(t, append(slices.Clone(a), b...))
	testkit.Eventually(t, func() bool { return slices.Equal(events.get(), []spi.LifecycleState{spi.Merging, spi.Merged}) })
	for i := range 20 {
		for _, n := range []*Node{a[0], b[0]} {
			if v, err := counterOn(t, n, fmt.Sprintf("c%d", i)).Get(ctx); err != nil || v != 7 {
				t.Fatalf("c%d through %s = %d, %v; want 7 (5 + 2)", i, n.Address(), v, err)
			}
			if v, err := counterOn(t, n, fmt.Sprintf("only-b%d", i)).Get(ctx); err != nil || v != 3 {
				t.Fatalf("only-b%d through %s = %d, %v; want 3", i, n.Address(), v, err)
			}
		}
	}
}
