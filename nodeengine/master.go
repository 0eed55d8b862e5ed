package nodeengine

import (
	"context"
	"slices"
	"time"

	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// republishInterval is how often the membership loop re-checks the member
// list and re-sends the table to members that have not acknowledged it.
const republishInterval = 200 * time.Millisecond

// masterState is the membership loop's memory; only that goroutine
// touches it.
type masterState struct {
	minVersion int64           // a member reported this version: go above it
	inflight   map[string]bool // members with a table push in flight
}

// memberEvent wakes the membership loop; called from memberlist's
// goroutines, it never blocks.
func (n *Node) memberEvent() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// membershipLoop applies member list changes: it tells the operation
// service about members that left and, on the master, keeps the partition
// table balanced and published.
func (n *Node) membershipLoop() {
	defer n.wg.Done()
	n.master.inflight = make(map[string]bool)
	tick := time.NewTicker(republishInterval)
	defer tick.Stop()
	for {
		n.refreshMembers()
		if n.IsMaster() {
			n.rebalance()
			n.publishTable()
		}
		select {
		case <-n.stop:
			return
		case <-n.wake:
		case <-tick.C:
		}
	}
}

// refreshMembers reads memberlist's view and reports who left.
func (n *Node) refreshMembers() {
	next := memberList(n.ml.Members(), n.cfg.Cluster.Name)
	prev := *n.members.Load()
	if slices.Equal(prev, next) {
		return
	}
	n.members.Store(&next)
	for _, m := range prev {
		if !containsMember(next, m.ID) && m.ID != n.id {
			n.log.Info("member left", "left", m.Address, "left_id", m.ID, "members", len(next))
			n.ops.MemberLeft(m.ID)
			n.publish.Lock()
			delete(n.acked, m.ID)
			n.publish.Unlock()
		}
	}
	for _, m := range next {
		if !containsMember(prev, m.ID) && m.ID != n.id {
			n.log.Info("member joined", "joined", m.Address, "joined_id", m.ID, "members", len(next))
		}
	}
	if len(next) > 0 && (len(prev) == 0 || prev[0].ID != next[0].ID) {
		n.log.Info("master is now", "master", next[0].Address, "master_id", next[0].ID, "self", next[0].ID == n.id)
	}
}

func containsMember(ms []spi.Member, id string) bool {
	for _, m := range ms {
		if m.ID == id {
			return true
		}
	}
	return false
}

// rebalance makes a new table version when the member list no longer
// matches the current table. Until migration exists, partitions that change
// owner start empty on the new owner.
func (n *Node) rebalance() {
	members := *n.members.Load()
	ids := make([]string, len(members))
	addrs := make(map[string]string, len(members))
	for i, m := range members {
		ids[i] = m.ID
		addrs[m.ID] = m.Address
	}
	cur := n.table.Load()
	var prev []string
	version := n.master.minVersion
	if cur != nil {
		prev = cur.Owners
		version = max(version, cur.Version)
	}
	owners := partition.Rebalance(prev, ids, n.count)
	if cur != nil && slices.Equal(owners, cur.Owners) && version == cur.Version {
		return
	}
	t := &partition.Table{Version: version + 1, Owners: owners, Members: make(map[string]string)}
	for _, o := range owners {
		t.Members[o] = addrs[o]
	}
	n.table.Store(t)
	n.log.Info("partition table published", "version", t.Version, "members", len(members), "owned", t.Counts()[n.id])
}

// publishTable sends the current table to every member that has not
// acknowledged it, one push per member at a time.
func (n *Node) publishTable() {
	t := n.table.Load()
	if t == nil {
		return
	}
	for _, m := range *n.members.Load() {
		n.publish.Lock()
		done := m.ID == n.id || n.acked[m.ID] >= t.Version || n.master.inflight[m.ID]
		if !done {
			n.master.inflight[m.ID] = true
		}
		n.publish.Unlock()
		if done {
			continue
		}
		n.wg.Add(1)
		go n.push(m, t)
	}
}

func (n *Node) push(m spi.Member, t *partition.Table) {
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	resp, err := n.ops.InvokeOnMember(ctx, engineService, &publishTableOp{table: t}, m.ID)
	n.publish.Lock()
	defer n.publish.Unlock()
	delete(n.master.inflight, m.ID)
	if err != nil {
		n.log.Debug("table push failed; will retry", "to", m.Address, "version", t.Version, "error", err)
		return
	}
	v, _ := resp.(int64)
	n.acked[m.ID] = v
	if v > t.Version {
		// The member holds a newer table from an earlier master: publish
		// above it on the next round.
		n.master.minVersion = max(n.master.minVersion, v)
		n.memberEvent()
	}
}

// acceptTable installs t if it is newer than the current table and returns
// the version this member holds afterwards.
func (n *Node) acceptTable(t *partition.Table, from string) int64 {
	for {
		cur := n.table.Load()
		if cur != nil && cur.Version >= t.Version {
			return cur.Version
		}
		if n.table.CompareAndSwap(cur, t) {
			n.log.Info("partition table received", "version", t.Version, "from", from, "owned", t.Counts()[n.id])
			if cur == nil && from != n.address {
				// First table: learn the distributed objects created before
				// this member joined.
				if sender := t.MemberAt(from); sender != "" {
					n.wg.Add(1)
					go func() {
						defer n.wg.Done()
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						go func() {
							select {
							case <-n.stop:
								cancel()
							case <-ctx.Done():
							}
						}()
						n.proxies.syncFrom(ctx, sender)
					}()
				}
			}
			return t.Version
		}
	}
}
