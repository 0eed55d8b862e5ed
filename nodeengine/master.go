package nodeengine

import (
	"context"
	"slices"
	"time"

	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// takeOverTimeout bounds how long a new master waits for every member's
// answer to its first table push before it plans anyway.
const takeOverTimeout = 3 * time.Second

// republishInterval is how often the membership loop re-checks the member
// list and re-sends the table to members that have not acknowledged it.
const republishInterval = 200 * time.Millisecond

// memberEvent wakes the membership loop; called from memberlist's
// goroutines, it never blocks.
func (n *Node) memberEvent() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// membershipLoop applies member list changes: it tells the operation
// service about members that left, resolves migrations of a departed
// master and, on the master, wakes the migration manager and publishes the
// table to members that lack it.
func (n *Node) membershipLoop() {
	defer n.wg.Done()
	tick := time.NewTicker(republishInterval)
	defer tick.Stop()
	for {
		n.refreshMembers()
		if n.IsMaster() {
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

// refreshMembers reads memberlist's view and reports who joined and left.
func (n *Node) refreshMembers() {
	next := n.memberView()
	prev := *n.members.Load()
	if slices.Equal(prev, next) {
		return
	}
	if len(prev) > 0 && len(next) > 0 && prev[0].ID != next[0].ID && next[0].ID == n.id {
		// Taking over: gate the planner before IsMaster turns true.
		n.publish.Lock()
		n.answered, n.takeOverEnd = map[string]bool{}, time.Now().Add(takeOverTimeout)
		n.term++
		clear(n.acked) // acknowledgements and pushes of an earlier term
		clear(n.inflight)
		n.publish.Unlock()
	}
	n.members.Store(&next)
	for _, m := range prev {
		if !containsMember(next, m.ID) && m.ID != n.id {
			n.log.Info("member left", "left", m.Address, "left_id", m.ID, "members", len(next))
			n.ops.MemberLeft(m.ID)
			n.publish.Lock()
			delete(n.acked, m.ID)
			n.publish.Unlock()
			n.leavingMu.Lock()
			delete(n.leaving, m.ID)
			n.leavingMu.Unlock()
		}
	}
	for _, m := range next {
		if !containsMember(prev, m.ID) && m.ID != n.id {
			n.log.Info("member joined", "joined", m.Address, "joined_id", m.ID, "members", len(next))
		}
	}
	if len(next) > 0 && (len(prev) == 0 || prev[0].ID != next[0].ID) {
		n.log.Info("master is now", "master", next[0].Address, "master_id", next[0].ID, "self", next[0].ID == n.id)
		if len(prev) > 0 && next[0].ID != n.id {
			// A new master resolves them once it holds the newest table
			// (tookOver): by its own, possibly older one, it could drop
			// data that the newest table gives it.
			n.resolveDepartedMaster(false)
		}
	}
	if n.mgr != nil {
		n.mgr.Trigger()
	}
}

// memberView returns memberlist's view of the members, oldest first. It
// is not built from n.ml.Members(): memberlist rewrites the fields of the
// nodes that returns after releasing its lock (see delegates.alive).
func (n *Node) memberView() []spi.Member { return n.del.members(n.cfg.Cluster.Name) }

func containsMember(ms []spi.Member, id string) bool {
	for _, m := range ms {
		if m.ID == id {
			return true
		}
	}
	return false
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
		done := m.ID == n.id || n.acked[m.ID] >= t.Version || n.inflight[m.ID]
		if !done {
			n.inflight[m.ID] = true
		}
		term := n.term
		n.publish.Unlock()
		if done {
			continue
		}
		n.spawn(func() { n.push(m, t, term) })
	}
}

// push sends t to m in the given term (see Node.term).
func (n *Node) push(m spi.Member, t *partition.Table, term uint64) {
	ctx, cancel := n.stopContext(2 * time.Second)
	defer cancel()
	resp, err := n.ops.InvokeOnMember(ctx, engineService, &publishTableOp{table: t}, m.ID)
	n.publish.Lock()
	current := n.term == term
	if current {
		delete(n.inflight, m.ID)
		if err == nil {
			n.acked[m.ID] = max(n.acked[m.ID], t.Version)
		}
	}
	n.publish.Unlock()
	if err != nil {
		n.log.Debug("table push failed; will retry", "to", m.Address, "version", t.Version, "error", err)
		return
	}
	n.adoptNewer(resp, m.Address) // a newer table is news in any term
	n.publish.Lock()
	taking := n.term == term && n.answered != nil // still the same take-over
	if taking {
		n.answered[m.ID] = true
	}
	n.publish.Unlock()
	if taking {
		n.mgr.Trigger()
	}
}

// tookOver reports whether this member, master now, may plan: a master
// that took over from another one plans from its table only once every
// member answered a push of it, adopting any newer table they held. A
// plan from an older table moves partitions by a table the members do not
// hold: a destination commits and waits for a table naming it that never
// comes, a source drops data that the newer table still gives it. The
// migrations the old master left half done here are resolved then too.
func (n *Node) tookOver() bool {
	n.publish.Lock()
	if n.answered == nil {
		n.publish.Unlock()
		return true
	}
	var missing []string
	for _, m := range *n.members.Load() {
		if m.ID != n.id && !n.answered[m.ID] {
			missing = append(missing, m.Address)
		}
	}
	if len(missing) > 0 && time.Now().Before(n.takeOverEnd) {
		n.publish.Unlock()
		return false
	}
	n.answered = nil
	n.publish.Unlock()
	if len(missing) > 0 {
		n.log.Warn("new master: members did not answer its table push in time; planning from the newest table it holds", "members", missing)
	}
	// By the newest table now, committed destinations included, here
	// and on the other members.
	n.spawn(func() { n.resolveDepartedMaster(true) })
	n.resolveOthers()
	return true
}

// adoptNewer installs a table a member answered with because it is newer
// than the one pushed (it came from an earlier master): a new master plans
// from the newest table in the cluster.
func (n *Node) adoptNewer(resp any, from string) {
	b, _ := resp.([]byte)
	if len(b) == 0 {
		return
	}
	t, err := partition.Decode(spi.NewReader(b), n.count)
	if err != nil {
		n.log.Warn("bad table in a publish answer", "from", from, "error", err)
		return
	}
	if n.installTable(t) {
		n.log.Info("adopted a newer partition table from a member", "version", t.Version, "from", from)
		n.memberEvent()
		n.mgr.Trigger()
	}
}

// stopContext returns a context that ends after d or when the node stops.
func (n *Node) stopContext(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(n.ctx, d)
}

// installTable makes t the current table if it is newer; it reports
// whether it did. Destination migrations waiting for their table are
// released.
func (n *Node) installTable(t *partition.Table) bool {
	// One install at a time: the role changes of two tables must not
	// interleave (a promotion's mark could be undone by the other).
	n.installMu.Lock()
	defer n.installMu.Unlock()
	cur := n.table.Load()
	if cur != nil && cur.Version >= t.Version {
		return false
	}
	// A promoted backup refuses operations until its promotion hooks ran:
	// mark it before the table becomes visible.
	if cur != nil {
		for p := range t.Owners {
			if t.Owners[p] == n.id && cur.ReplicaIndex(p, n.id) > 0 {
				n.ops.SetMigrating(p, true)
			}
		}
	}
	n.table.Store(t)
	n.replicaChanges(cur, t)
	n.metrics.tableInstalls.Inc()
	n.logTable(t)
	return true
}

// logTable reports an installed table at info, at most once a second (a
// rebalance installs one per migration: the migration manager logs the
// progress), and every version at debug. Called under installMu.
func (n *Node) logTable(t *partition.Table) {
	if time.Since(n.tableLogged) < time.Second {
		n.tableSkipped++
		n.log.Debug("partition table installed", "version", t.Version)
		return
	}
	owned, backups, _ := n.replicaCounts()
	n.log.Info("partition table installed", "version", t.Version, "owned", owned, "backups", backups,
		"versions_since_last_line", n.tableSkipped)
	n.tableLogged, n.tableSkipped = time.Now(), 0
}

// acceptTable installs a table pushed by the master and returns the
// encoded table this member holds when that one is newer (nil otherwise).
func (n *Node) acceptTable(t *partition.Table, from string) []byte {
	prev := n.table.Load()
	if !n.installTable(t) {
		if cur := n.table.Load(); cur.Version > t.Version {
			w := spi.NewWriter(nil)
			cur.Encode(w)
			return w.Bytes()
		}
		return nil
	}
	n.log.Debug("partition table received", "version", t.Version, "from", from, "owned", t.Counts()[n.id])
	if prev == nil && from != n.address {
		// First table: learn the distributed objects created before this
		// member joined.
		if sender := t.MemberAt(from); sender != "" {
			n.spawn(func() {
				ctx, cancel := n.stopContext(10 * time.Second)
				defer cancel()
				n.proxies.syncFrom(ctx, sender)
			})
		}
	}
	return nil
}
