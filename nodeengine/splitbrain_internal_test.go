package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
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
			if err := WaitStable(ctx, a); err != nil { // a's master answers for both of its members
				t.Fatal(err)
			}
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

// heldProxy forwards TCP connections to an address, once the test
// releases it: until then a connection is accepted and waits.
type heldProxy struct {
	ln       net.Listener
	accepted chan struct{} // closed on the first connection
	released chan struct{}
	release  func()
	wg       sync.WaitGroup
}

func newHeldProxy(t *testing.T, to string) *heldProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &heldProxy{ln: ln, accepted: make(chan struct{}), released: make(chan struct{})}
	var once, first sync.Once
	p.release = func() { once.Do(func() { close(p.released) }) }
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			first.Do(func() { close(p.accepted) })
			p.wg.Go(func() {
				defer c.Close()
				<-p.released
				d, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer d.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(d, c); done <- struct{}{} }()
				go func() { io.Copy(c, d); done <- struct{}{} }()
				<-done // either side ended: close both, the other copy ends too
				c.Close()
				d.Close()
				<-done
			})
		}
	})
	t.Cleanup(func() {
		p.release()
		ln.Close()
		p.wg.Wait()
	})
	return p
}

// cutOff is a network filter for StartLocal's members (an Option): while
// a member is cut off, nothing passes between it and the others.
type cutOff struct{ member atomic.Pointer[Node] }

func (c *cutOff) option() Option {
	return func(n *Node) {
		n.reach = func(remote string) bool {
			cut := c.member.Load()
			return cut == nil || (n == cut) == (remote == cut.address)
		}
	}
}

// set cuts member n off (nil: heals) and tells every member.
func (c *cutOff) set(n *Node, nodes []*Node) {
	c.member.Store(n)
	for _, m := range nodes {
		m.NetworkChanged()
	}
}

// A member cut off from its cluster for a moment can still list the
// others (its own suspicion of them has not run out) when they have
// declared it dead; it rejoins as a merge of one. Its old memberlist
// instance, gossiping the merge's new start time, is then taken back by
// the others, and the master begins migrations to it, before the new
// instance joins (the nemesis of TestCounterNemesisSplitKeepsTotals, seed
// 4). While the new instance, which knows only this member, joins, the
// member's list stays as it was: it must not see every other member
// leave and itself master for that moment, roll back the migrations it
// received (which the master then commits: a primary without its data,
// and a cluster never safe again) and fail its calls to them.
func TestMergeOfOneKeepsItsMemberListWhileItsMemberlistIsReplaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	events := &lifecycleLog{}
	var cut cutOff
	nodes, err := StartLocal(ctx, 3, func(i int, c *config.Config) {
		c.UseFastFailureDetection()
		c.SplitBrain.FirstProbeDelay = time.Hour
		if i == 2 {
			c.Membership.SuspicionMult = 1000 // it suspects the others for good, never declares them dead
		}
	}, WithLifecycleListener(events.add), cut.option())
	if err != nil {
		t.Fatal(err)
	}
	defer ShutdownLocal(nodes)
	if err := WaitStable(ctx, nodes); err != nil {
		t.Fatal(err)
	}
	a, b := nodes[:2], nodes[2]
	cut.set(b, nodes)
	if err := WaitStable(ctx, a); err != nil { // the others declared it dead and took over its partitions
		t.Fatal(err)
	}
	if got := len(b.memberView()); got != 3 {
		t.Fatalf("the member cut off lists %d members, want the 3 it suspects", got)
	}
	cut.set(nil, nodes)
	// Its join goes through a proxy to the master that holds it until
	// the member list was looked at.
	proxy := newHeldProxy(t, a[0].Address())
	b.prepareMerge(proxy.ln.Addr().String(), 1, 2, true)
	testkit.Eventually(t, func() bool { return a[0].view.hasMember(b.ID()) }) // its old instance is back
	merged := make(chan struct{})
	go func() { defer close(merged); b.joinMerge() }()
	select {
	case <-proxy.accepted: // the old instance is gone, the new one joins
	case <-ctx.Done():
		t.Fatal("the new memberlist instance did not join")
	}
	var ids []string
	for _, m := range b.memberView() {
		ids = append(ids, m.ID)
	}
	if want := []string{a[0].ID(), a[1].ID(), b.ID()}; !slices.Equal(ids, want) {
		t.Errorf("while its new memberlist instance joins, the member lists %v, want %v (as before, oldest first)", ids, want)
	}
	proxy.release()
	waitMergedSafe(ctx, t, merged, events, nodes)
}

// waitMergedSafe waits until merged is closed (the merging member's
// joinMerge returned), checks that its lifecycle events were MERGING
// then MERGED, and waits until nodes are one stable cluster, safe within
// 30 s.
func waitMergedSafe(ctx context.Context, t *testing.T, merged <-chan struct{}, events *lifecycleLog, nodes []*Node) {
	t.Helper()
	select {
	case <-merged:
	case <-ctx.Done():
		t.Fatal("the merge did not end")
	}
	if got := events.get(); !slices.Equal(got, []spi.LifecycleState{spi.Merging, spi.Merged}) {
		t.Fatalf("lifecycle events %v, want MERGING, MERGED", got)
	}
	if err := WaitStable(ctx, nodes); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := nodes[0].WaitClusterSafe(sctx); err != nil {
		t.Fatal(err)
	}
}

// A member that merges as a merge of one while its cluster never saw it
// die (it declared the others dead after a freeze, say, and they refuted
// nothing it heard) drops its data and rejoins the cluster that lists it
// all along, whose table still makes it owner and backup of partitions.
// The others take it for gone until their table no longer names it (its
// backups promoted or, with none, its partitions lost and refilled by its
// merge data), then it joins as a fresh member: every counter keeps its
// value, read through every member, and the cluster becomes safe.
// (Before, it stayed owner of partitions at version 0.0 with their
// backups in a newer epoch, which refused its writes as superseded: never
// safe again, and its merge operations dropped — a 1-minute soak's split
// seeds 12 and 13.)
func TestMergeOfOneIntoTheClusterThatListsItAllAlong(t *testing.T) {
	for _, backups := range []int{1, 0} {
		t.Run(fmt.Sprintf("backups%d", backups), func(t *testing.T) { mergeOfOneIntoTheClusterThatListsIt(t, backups) })
	}
}

func mergeOfOneIntoTheClusterThatListsIt(t *testing.T, backups int) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	events := &lifecycleLog{}
	nodes, err := StartLocal(ctx, 3, func(i int, c *config.Config) {
		c.UseFastFailureDetection()
		c.SplitBrain.FirstProbeDelay = time.Hour
		c.Partitions.BackupCount = backups
		for j, sc := range c.Services {
			if sc.Type == counter.TypeName {
				c.Services[j].Properties = sc.Properties.With("backup-count", strconv.Itoa(backups))
			}
		}
	}, WithLifecycleListener(events.add))
	if err != nil {
		t.Fatal(err)
	}
	defer ShutdownLocal(nodes)
	if err := WaitStable(ctx, nodes); err != nil {
		t.Fatal(err)
	}
	const counters = 60
	for i := range counters {
		if _, err := counterOn(t, nodes[i%3], fmt.Sprintf("c%d", i)).Inc(ctx, int64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[0].WaitClusterSafe(ctx); err != nil {
		t.Fatal(err)
	}
	b := nodes[2]
	owned := 0
	for p := range b.view.count {
		if b.view.table.Load().Owner(p) == b.ID() {
			owned++
		}
	}
	if owned == 0 {
		t.Fatal("member 2 owns no partition")
	}
	b.prepareMerge(nodes[0].Address(), 1, 2, true)
	merged := make(chan struct{})
	go func() { defer close(merged); b.joinMerge() }()
	waitMergedSafe(ctx, t, merged, events, nodes)
	for i := range counters {
		for _, n := range nodes {
			if v, err := counterOn(t, n, fmt.Sprintf("c%d", i)).Get(ctx); err != nil || v != int64(i+1) {
				t.Errorf("c%d through %s = %d, %v; want %d", i, n.Address(), v, err, i+1)
			}
		}
	}
}

// A member that dropped its table for a merge takes, as its first table,
// none that makes it owner of partitions: the cluster it joins may list
// it all along and push it the table of before its merge, whose
// partitions it owned hold none of its data now. A table made after the
// master took it for gone names it owner of nothing, and once it holds a
// table, migrations make it owner as usual.
func TestMergedMemberRefusesATableThatMakesItOwner(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nodes, err := StartLocal(ctx, 2, func(_ int, c *config.Config) { c.UseFastFailureDetection() })
	if err != nil {
		t.Fatal(err)
	}
	defer ShutdownLocal(nodes)
	if err := WaitStable(ctx, nodes); err != nil {
		t.Fatal(err)
	}
	a, b := nodes[0], nodes[1]
	stale := b.view.table.Load()
	if !slices.Contains(stale.Owners, b.ID()) {
		t.Fatal("member 1 owns no partition")
	}
	b.tables.drop()
	if b.tables.install(stale) {
		t.Fatal("a member that dropped its table for a merge took one that makes it owner of partitions")
	}
	fresh := stale.Clone()
	fresh.Version += 10
	for p := range fresh.Owners {
		fresh.Owners[p], fresh.Backups[p][0] = a.ID(), b.ID()
	}
	if !b.tables.install(fresh) {
		t.Fatal("the member refused a table that makes it owner of nothing")
	}
	later := stale.Clone()
	later.Version = fresh.Version + 1
	if !b.tables.install(later) {
		t.Fatal("once it holds a table, the member refused a newer one that makes it owner")
	}
}

// A join asked for while the prepare still collects the merge data (a
// second "rejoin as a merge of one" that found the merge under way) does
// nothing: the prepare's own caller joins once the data is there. It used
// to join at once with no data; the prepare then stored its data in a
// merge that was over, and it was lost (a paused master's merge,
// TestPauseLongerThanDetectionRejoinsAsMerge, lost an acknowledged add).
func TestJoinWaitsForThePreparedData(t *testing.T) {
	n := &Node{sb: newSplitBrain()}
	n.sb.m = mergeRun{state: mergePrepared, target: "127.0.0.1:1"}
	n.joinMerge()
	if n.sb.m.state != mergePrepared || n.sb.m.target == "" {
		t.Fatalf("a join before the data was collected changed the merge to %+v", n.sb.m)
	}
}
