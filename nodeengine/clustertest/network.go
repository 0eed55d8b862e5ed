package clustertest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/partita-go/partita/nodeengine"
)

// network is the cluster's grouping of members for Split and Heal: while
// split, a member reaches only the members of its own group. Each member's
// network filter (nodeengine.WithNetworkFilter) asks it.
type network struct {
	mu    sync.RWMutex
	split bool
	// group is each member's group while split, by member address.
	group map[string]int
	// own is each member's own group while split, by member: known from
	// before the member's Start (when its address is not yet), so that a
	// member started while the cluster is split joins only its group.
	own map[*memberFilter]int
}

// memberFilter is one member's network filter.
type memberFilter struct {
	net *network
}

// reachable implements the member's nodeengine.WithNetworkFilter: an
// address that is no member's is always reachable.
func (f *memberFilter) reachable(remote string) bool {
	w := f.net
	w.mu.RLock()
	defer w.mu.RUnlock()
	if !w.split {
		return true
	}
	g, ok := w.group[remote]
	return !ok || g == w.own[f]
}

// newFilter makes the network filter of a member about to start: while
// the cluster is split, the member is in the group of the oldest running
// member, the one it joins through (see Config).
func (c *Cluster) newFilter() *memberFilter {
	f := &memberFilter{net: &c.net}
	w := &c.net
	ms := c.Members()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.split && len(ms) > 0 {
		w.own[f] = w.group[ms[0].Address()]
	}
	return f
}

// startedOn records a started member's address: while split, it is in its
// filter's group.
func (c *Cluster) startedOn(n *nodeengine.Node, f *memberFilter) {
	w := &c.net
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.filters == nil {
		c.filters = make(map[*nodeengine.Node]*memberFilter)
	}
	c.filters[n] = f
	if w.split {
		w.group[n.Address()] = w.own[f]
	}
}

// Split cuts the network between groups of running members, given by
// their indexes (oldest first, as Member's); the members no group names
// form one more group. From then on members of different groups cannot
// exchange anything: memberlist packets between them are dropped, their
// dials fail, and the operation connections between them are closed on
// both ends before Split returns (the calls waiting on them fail with
// spi.ErrMemberLeft and are retried, as for a member that left). Within a
// group everything works. Each side's failure detection then declares the
// other side's members dead, and each side carries on as a cluster of its
// own.
//
// A member added while the cluster is split (AddMember) is in the group of
// the oldest running member, the one it joins through; Split must not run
// while a member is being added. Split replaces any earlier split; Heal
// ends it.
func (c *Cluster) Split(groups ...[]int) {
	c.t.Helper()
	ms := c.Members()
	of := make(map[int]int) // member index → group
	for g, idx := range groups {
		for _, i := range idx {
			if i < 0 || i >= len(ms) {
				c.t.Fatalf("clustertest: Split: no member %d (have %d)", i, len(ms))
			}
			if h, ok := of[i]; ok {
				c.t.Fatalf("clustertest: Split: member %d is in groups %d and %d", i, h, g)
			}
			of[i] = g
		}
	}
	w := &c.net
	w.mu.Lock()
	w.split = true
	w.group = make(map[string]int)
	w.own = make(map[*memberFilter]int)
	for i, n := range ms {
		g, ok := of[i]
		if !ok {
			g = len(groups) // the members not named
		}
		w.group[n.Address()] = g
		if f := c.filters[n]; f != nil {
			w.own[f] = g
		}
	}
	w.mu.Unlock()
	for _, n := range ms {
		n.NetworkChanged()
	}
	c.t.Logf("clustertest: network split: %s", c.describeGroups(ms, of, len(groups)))
}

// Isolate cuts member i off from all the others (Split of i alone).
func (c *Cluster) Isolate(i int) {
	c.t.Helper()
	c.Split([]int{i})
}

// Heal ends a Split: traffic flows between all members again. The sides,
// which became clusters of their own once they declared each other dead,
// find each other by split-brain healing (within the config's
// split-brain.probe-interval: 1 s in clustertest's fast preset), and the
// smaller merges into the larger: WaitMerged waits for it.
func (c *Cluster) Heal() {
	c.t.Helper()
	w := &c.net
	w.mu.Lock()
	w.split, w.group, w.own = false, nil, nil
	w.mu.Unlock()
	c.t.Logf("clustertest: network healed")
}

// WaitMerged waits until the running members form one stable cluster
// again (after a Heal: the split-brain merge done, one table, no
// migration in flight), or ctx ends.
func (c *Cluster) WaitMerged(ctx context.Context) error {
	for {
		err := Stable(c.Members()...)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("clustertest: not merged: %w (%w)", err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// describeGroups is a split's groups for the test log: "{0 1} | {2}".
func (c *Cluster) describeGroups(ms []*nodeengine.Node, of map[int]int, named int) string {
	sets := make([][]int, named+1)
	for i := range ms {
		g, ok := of[i]
		if !ok {
			g = named
		}
		sets[g] = append(sets[g], i)
	}
	s := ""
	for _, set := range sets {
		if len(set) == 0 {
			continue
		}
		if s != "" {
			s += " | "
		}
		s += fmt.Sprint(set)
	}
	return s
}
