package nodeengine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/testservice"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/nodeengine/debugui"
	"github.com/partita-go/partita/spi"
)

// The second phase of a split-brain merge (nodeengine/merge.go) when
// things go wrong: the merging member cannot reach the larger cluster
// for a while, its merge operations are refused for a while, or it stops
// before it joined. It keeps the data it collected and tries again; only
// what it cannot deliver is reported, as MERGE_FAILED.

// eventLog records the lifecycle events of a cluster's members, by
// member config index.
type eventLog struct {
	mu sync.Mutex
	by map[int][]spi.LifecycleEvent
}

func (l *eventLog) add(i int, ev spi.LifecycleEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[int][]spi.LifecycleEvent{}
	}
	l.by[i] = append(l.by[i], ev)
}

// states returns member i's lifecycle states so far.
func (l *eventLog) states(i int) []spi.LifecycleState {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []spi.LifecycleState
	for _, ev := range l.by[i] {
		out = append(out, ev.State)
	}
	return out
}

// events returns member i's lifecycle events so far.
func (l *eventLog) events(i int) []spi.LifecycleEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.by[i])
}

// clusterView fetches member n's /debug/cluster as JSON.
func clusterView(t *testing.T, n *nodeengine.Node) (debugui.View, error) {
	t.Helper()
	code, body, err := get(t, n, "/debug/cluster?format=json")
	if err != nil {
		return debugui.View{}, err
	}
	if code != http.StatusOK {
		return debugui.View{}, fmt.Errorf("/debug/cluster: %d %s", code, body)
	}
	var v debugui.View
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		return v, fmt.Errorf("bad /debug/cluster JSON: %w", err)
	}
	return v, nil
}

// mergeMetrics returns member n's partita_split_brain_merges_total by
// result, read from its registry (which outlives its HTTP endpoint).
func mergeMetrics(t *testing.T, n *nodeengine.Node) (merged, failed float64) {
	t.Helper()
	fams, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	m := clustertest.Metrics{}
	for _, f := range fams {
		m[f.GetName()] = f
	}
	return m.Value("partita_split_brain_merges_total", "result", "merged"),
		m.Value("partita_split_brain_merges_total", "result", "failed")
}

// cutAtMerging is a lifecycle listener that, once armed, splits c again
// ({0,1} | {2}) as member 2 begins to merge: the merge's join, which
// follows, finds the larger cluster unreachable.
type cutAtMerging struct {
	c      atomic.Pointer[clustertest.Cluster]
	armed  atomic.Bool
	events eventLog
}

func (x *cutAtMerging) listen(i int, ev spi.LifecycleEvent) {
	x.events.add(i, ev)
	if i == 2 && ev.State == spi.Merging && x.armed.CompareAndSwap(true, false) {
		x.c.Load().Split([]int{0, 1}, []int{2})
	}
}

// splitWriteHealCut starts 3 members, splits them {0,1} | {2}, writes on
// both sides, then heals the network with x armed: member 2 begins its
// merge and the network is cut again under it. It returns once member
// 2's /debug/cluster shows its join failed at least once (and, on the
// way, what the page says during the merge), with the registers each
// side wrote.
func splitWriteHealCut(t *testing.T, x *cutAtMerging, configure func(int, *config.Config)) (*clustertest.Cluster, map[string]int64) {
	t.Helper()
	c := newCluster(t, 3, 1, configure, clustertest.WithLifecycleListener(x.listen))
	x.c.Store(c)
	ctx := splitCtx(t)
	sides := splitApart(t, c, []int{0, 1}, []int{2})
	large, small := sides[0], sides[1][0]
	want := map[string]int64{}
	for i := range 10 {
		k := fmt.Sprintf("large-%d", i)
		addOn(t, ctx, large[i%2], k, int64(i+1))
		want[k] = int64(i + 1)
		k = fmt.Sprintf("small-%d", i)
		addOn(t, ctx, small, k, int64(i+100))
		want[k] = int64(i + 100)
	}
	x.armed.Store(true)
	c.Heal()
	clustertest.Eventually(t, splitTimeout, func() error {
		v, err := clusterView(t, small)
		if err != nil {
			return err
		}
		if m := v.Merge; m.State != "joining" || m.Attempts < 2 || m.LastError == "" || m.Batches == 0 {
			return fmt.Errorf("member 2's merge is %+v; waiting for a failed join attempt", m)
		}
		// The page says why the member is not ready, and its merge
		// state, besides.
		i := slices.IndexFunc(v.Members, func(m debugui.Member) bool { return m.Self })
		if i < 0 || v.Members[i].Ready || !strings.Contains(v.Members[i].Reason, "merging") || v.Members[i].Merge != "joining" {
			return fmt.Errorf("member 2 shows itself as %+v", v.Members)
		}
		return nil
	})
	_, page, err := get(t, small, "/debug/cluster", "Accept", "text/html")
	if err != nil || !strings.Contains(page, "joining "+large[0].Address()) || !strings.Contains(page, "join attempts") {
		t.Errorf("member 2's /debug/cluster page does not show it joining %s (%v):\n%s", large[0].Address(), err, page)
	}
	if v, err := clusterView(t, large[0]); err != nil || v.Merge.State != "idle" {
		t.Errorf("the larger cluster's master shows merge %+v (%v), want idle", v.Merge, err)
	}
	return c, want
}

// A merge whose join fails (the network between the sides is cut again
// as the single member begins to merge) goes on: the member keeps the
// data it collected, says on /debug/cluster that it is joining (with its
// attempts and the last error), tries again, and once the network heals
// it joins and carries its data over: MERGED, nothing lost, every
// backup equal to its primary.
func TestMergeJoinRetriedUntilTheLargerClusterIsReachable(t *testing.T) {
	x := &cutAtMerging{}
	c, want := splitWriteHealCut(t, x, nil)
	c.Heal()
	ctx, cancel := context.WithTimeout(context.Background(), splitTimeout)
	defer cancel()
	if err := c.WaitMerged(ctx); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, splitTimeout, func() error {
		if got := x.events.states(2); !slices.Equal(got, []spi.LifecycleState{spi.Merging, spi.Merged}) {
			return fmt.Errorf("member 2's lifecycle events %v, want MERGING, MERGED", got)
		}
		return nil
	})
	for i, n := range c.Members() {
		wantMerged := 0.0 // the larger side's members merge nothing
		if i == 2 {
			wantMerged = 1
		} else if got := x.events.states(i); len(got) > 0 {
			t.Errorf("member %d of the larger side went through %v", i, got)
		}
		if merged, failed := mergeMetrics(t, n); merged != wantMerged || failed != 0 {
			t.Errorf("member %d: merges merged %v failed %v, want %v and 0", i, merged, failed, wantMerged)
		}
	}
	if v, err := clusterView(t, c.Member(2)); err != nil || v.Merge.State != "idle" {
		t.Errorf("member 2 shows merge %+v (%v) once merged, want idle", v.Merge, err)
	}
	wantRegisters(t, c, want)
}

// A member that stops while it still tries to join the larger cluster
// cannot deliver its merge data: the merge ends with MERGE_FAILED, whose
// reason says so and counts what was not delivered, and
// partita_split_brain_merges_total{result="failed"} counts it.
func TestMergeFailedWhenTheMemberStopsBeforeItJoins(t *testing.T) {
	x := &cutAtMerging{}
	c, _ := splitWriteHealCut(t, x, nil)
	small := c.Member(2)
	c.Shutdown(2) // returns once the member's goroutines, the merge's included, have ended
	evs := x.events.events(2)
	if len(evs) != 2 || evs[0].State != spi.Merging || evs[1].State != spi.MergeFailed {
		t.Fatalf("member 2's lifecycle events %v, want MERGING, MERGE_FAILED", evs)
	}
	reason := evs[1].Reason
	for _, want := range []string{"merge batches not delivered", "the member stopped before it joined the larger cluster", testservice.Name + "="} {
		if !strings.Contains(reason, want) {
			t.Errorf("MERGE_FAILED reason %q lacks %q", reason, want)
		}
	}
	if merged, failed := mergeMetrics(t, small); merged != 0 || failed != 1 {
		t.Errorf("member 2: merges merged %v failed %v, want 0 and 1", merged, failed)
	}
	t.Logf("MERGE_FAILED: %s", reason)
}

// Merge operations their partition refuses (here: dropped on their way,
// as by a broken connection, for longer than the merging member's
// invocation budget) are sent again, in rounds, until delivered, exactly
// once: MERGED, nothing lost or doubled. /debug/cluster shows the member
// replaying meanwhile, with the batches it holds and sends again.
func TestMergeSendsRefusedOperationsAgain(t *testing.T) {
	events := &eventLog{}
	c := newCluster(t, 3, 1, func(i int, cfg *config.Config) {
		if i == 2 {
			// Its merge operations' budget: 2 s (the dedup window and a
			// second), so that a refusal lasts a whole invocation soon.
			cfg.Operations.InvocationTimeout = time.Second
			cfg.Operations.DedupWindow = time.Second
		}
	}, clustertest.WithLifecycleListener(events.add))
	ctx := splitCtx(t)
	sides := splitApart(t, c, []int{0, 1}, []int{2})
	large, small := sides[0], sides[1][0]
	want := map[string]int64{}
	// A few partitions, so that one round sends every batch at once.
	for i := range 3 {
		k := fmt.Sprintf("small-%d", i)
		addOn(t, ctx, small, k, int64(i+1))
		want[k] = int64(i + 1)
		k = fmt.Sprintf("both-%d", i)
		addOn(t, ctx, large[i%2], k, 7)
		addOn(t, ctx, small, k, 5)
		want[k] = 7 // put-if-absent: the larger cluster's value stays
	}
	// Its merge operations are lost on their way to the larger cluster's
	// members, and no partition migrates to it meanwhile (it would run
	// those locally).
	drop := &clustertest.Fault{From: small.ID(), Kind: testservice.Name + "/*testservice.mergeOperation", Drop: true}
	removeDrop := c.AddFault(drop)
	defer removeDrop()
	removeHold := c.AddFault(&clustertest.Fault{Kind: "migration.prepare", Drop: true})
	defer removeHold()
	c.Heal()
	clustertest.Eventually(t, splitTimeout, func() error {
		v, err := clusterView(t, small)
		if err != nil {
			return err
		}
		if m := v.Merge; m.State != "replaying" || m.Replays == 0 || m.Batches == 0 {
			return fmt.Errorf("member 2's merge is %+v; waiting for refused batches", m)
		}
		return nil
	})
	removeDrop()
	removeHold()
	mctx, cancel := context.WithTimeout(context.Background(), splitTimeout)
	defer cancel()
	if err := c.WaitMerged(mctx); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, splitTimeout, func() error {
		if got := events.states(2); !slices.Equal(got, []spi.LifecycleState{spi.Merging, spi.Merged}) {
			return fmt.Errorf("member 2's lifecycle events %v, want MERGING, MERGED", got)
		}
		return nil
	})
	if merged, failed := mergeMetrics(t, small); merged != 1 || failed != 0 {
		t.Errorf("member 2: merges merged %v failed %v, want 1 and 0", merged, failed)
	}
	t.Logf("merge operations dropped on their way: %d", drop.Hits())
	wantRegisters(t, c, want)
}
