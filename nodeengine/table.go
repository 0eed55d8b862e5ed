package nodeengine

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
	"github.com/prometheus/client_golang/prometheus"
)

// tables installs newer partition tables on this member, one at a time:
// it marks promoted partitions, makes the table current and has replicas
// run the role changes. Whoever holds a newer table calls install, from
// any goroutine: a master push (publishTableOp, resolveOp), the master
// adopting a member's newer table (publisher) and the migration manager
// (masterEngine.Install).
type tables struct {
	view     *clusterView
	ops      *operation.Service
	replicas *replicas
	installs prometheus.Counter
	log      *slog.Logger

	mu sync.Mutex // serialises installs
	// logged and skipped rate-limit the table log line (under mu).
	logged  time.Time
	skipped int
	// dropped: the table was dropped for a merge and none installed
	// since (under mu); stale is whether a table refused for that was
	// logged.
	dropped, stale bool
	// fresh is called (under mu) when the first table after a drop is
	// installed: the member gossips that it holds one again.
	fresh func()
}

// install makes t the current table if it is newer and valid
// (partition.Table.Validate); it reports whether it did. Destination
// migrations waiting for their table are released.
func (ts *tables) install(t *partition.Table) bool {
	// One install at a time: the role changes of two tables must not
	// interleave (a promotion's mark could be undone by the other).
	ts.mu.Lock()
	defer ts.mu.Unlock()
	cur := ts.view.table.Load()
	if !t.Newer(cur) || dropsMember(cur, t, ts.view.id) {
		return false
	}
	if ts.refusesAfterMerge(t) {
		return false
	}
	// Decode refuses such a table from a peer; this one is the master's
	// own (the migration manager never makes one: it would count copies
	// that do not exist and back writes up twice to one member).
	if err := t.Validate(); err != nil {
		ts.log.Error("partition table refused: it is not valid", "term", t.Term, "version", t.Version, "error", err)
		return false
	}
	if ts.dropped && ts.fresh != nil {
		ts.fresh()
	}
	ts.dropped, ts.stale = false, false
	// A promoted backup refuses operations until its promotion hooks ran:
	// mark it before the table becomes visible.
	if cur != nil {
		for p := range t.Owners {
			if t.Owners[p] == ts.view.id && cur.ReplicaIndex(p, ts.view.id) > 0 {
				ts.ops.SetMigrating(p, true)
			}
		}
	}
	// A member that becomes a backup replica must not, once the table is
	// visible, report its replica as it was before the reset that
	// changes queues (empty and not syncing looks in sync at version 0).
	ts.replicas.expectChanges(cur, t)
	ts.view.table.Store(t)
	ts.replicas.changes(cur, t)
	ts.installs.Inc()
	ts.logTable(t)
	return true
}

// refusesAfterMerge reports whether t is a table this member, which
// dropped its table and data to merge, must not take as its first one:
// it makes this member owner of partitions. The cluster it joins may list
// it all along (it never saw it go) and push it the table of before its
// merge, whose partitions' data is on their backups now, in a newer
// epoch, or in its merge data; the master takes it for gone first
// (delegates.members), and a fresh member owns nothing until a migration
// gives it data (a destination of a move in flight here may own its
// partition in the table). No exception for a master: a member merging
// alone lists only itself until it joined. The first refusal is logged.
// Called under mu, or through refuses.
func (ts *tables) refusesAfterMerge(t *partition.Table) bool {
	if !ts.dropped {
		return false
	}
	owns := false
	for p, o := range t.Owners {
		if o == ts.view.id && !ts.replicas.migs.inFlight.destination(p) {
			owns = true
			break
		}
	}
	if !owns {
		return false
	}
	if !ts.stale {
		ts.stale = true
		ts.log.Warn("partition table refused: it makes this member, which dropped its data to merge, owner of partitions; waiting for the master to take it for gone",
			"term", t.Term, "version", t.Version)
	}
	return true
}

// refuses is refusesAfterMerge for a caller outside install.
func (ts *tables) refuses(t *partition.Table) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.refusesAfterMerge(t)
}

// dropsMember reports whether t, a table of a newer term than cur, no
// longer lists member id, which cur lists: a master that took over after
// the cluster declared id dead made it (id was frozen, or cut off, and
// runs again). Installing it would drop what id holds, writes it
// acknowledged meanwhile included; id must rejoin as a merge instead,
// which carries them (publisher.adoptNewer asks).
func dropsMember(cur, t *partition.Table, id string) bool {
	return cur != nil && t.Term > cur.Term && cur.Members[id] != "" && t.Members[id] == ""
}

// drop forgets the table: the member is merging into another cluster,
// whose table it takes whatever its version.
func (ts *tables) drop() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.view.table.Store(nil)
	ts.dropped = true
}

// logTable reports an installed table at info, at most once a second (a
// rebalance installs one per migration: the migration manager logs the
// progress), and every version at debug. Called under mu.
func (ts *tables) logTable(t *partition.Table) {
	if time.Since(ts.logged) < time.Second {
		ts.skipped++
		ts.log.Debug("partition table installed", "version", t.Version)
		return
	}
	owned, backups, _ := ts.view.replicaCounts()
	ts.log.Info("partition table installed", "version", t.Version, "owned", owned, "backups", backups,
		"versions_since_last_line", ts.skipped)
	ts.logged, ts.skipped = time.Now(), 0
}

// replicaCounts returns how many primaries and backups this member holds
// in its table, and the table's version.
func (v *clusterView) replicaCounts() (owned, backups int, version int64) {
	t := v.table.Load()
	if t == nil {
		return 0, 0, 0
	}
	for p := range t.Owners {
		switch i := t.ReplicaIndex(p, v.id); {
		case i == 0:
			owned++
		case i > 0:
			backups++
		}
	}
	return owned, backups, t.Version
}

// acceptTable installs a table pushed by the master and returns the
// encoded table this member holds when that one is newer (nil otherwise).
// The first table also brings the distributed objects the cluster knows.
// While this member merges into another cluster, a table from the cluster
// it leaves is not taken (splitBrain.leavingFrom). A table a member that
// merged must not take as its first (tables.refusesAfterMerge) fails the
// push, so that the master sends a later one.
func (n *Node) acceptTable(t *partition.Table, from string) ([]byte, error) {
	if n.sb.leavingFrom(from) {
		n.log.Debug("partition table of the cluster this member leaves by a merge not taken", "version", t.Version, "from", from)
		return nil, nil
	}
	if n.tables.refuses(t) {
		// Not a retryable error: the push ends, and the master's next
		// round sends its newest table.
		return nil, fmt.Errorf("%s merged and holds no table yet; table version %d makes it owner of partitions whose data it dropped",
			n.address, t.Version)
	}
	prev := n.view.table.Load()
	if !n.tables.install(t) {
		if cur := n.view.table.Load(); cur.Newer(t) {
			w := spi.NewWriter(nil)
			cur.Encode(w)
			return w.Bytes(), nil
		}
		return nil, nil
	}
	n.log.Debug("partition table received", "version", t.Version, "from", from, "owned", t.Counts()[n.view.id])
	if prev == nil && from != n.address {
		// First table: learn the distributed objects created before this
		// member joined.
		if sender := t.MemberAt(from); sender != "" {
			n.run.spawn(func() {
				ctx, cancel := n.run.stopContext(10 * time.Second)
				defer cancel()
				n.proxies.syncFrom(ctx, sender)
			})
		}
	}
	return nil, nil
}
