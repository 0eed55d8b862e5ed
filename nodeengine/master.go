package nodeengine

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// takeOverTimeout bounds how long a new master waits for every member's
// answer to its first table push before it plans anyway.
const takeOverTimeout = 3 * time.Second

// publisher is the master's side of the partition table: it pushes the
// current table to every member that has not acknowledged it, one push
// per member at a time, and gates a member that takes over as master
// (tookOver) until every member answered a push, adopting any newer
// table they held. The membership loop calls publish and takeOver, the
// migration manager calls tookOver and ack (its own pushes), a shutting
// down master calls waitAllAcked; pushes run on goroutines of the runner.
type publisher struct {
	view   *clusterView
	ops    *operation.Service
	run    *runner
	log    *slog.Logger
	tables *tables
	wake   func() // wakes the membership loop, which publishes
	plan   func() // wakes the migration planner
	// resolve runs when the take-over gate opens: the migrations that
	// departed masters left are resolved by the newest table.
	resolve func()

	mu       sync.Mutex // guards acked, inflight, answered, takeOverEnd and term
	acked    map[string]int64
	inflight map[string]bool // table pushes in flight, by member
	// answered is not nil while this member takes over as master: it
	// plans nothing until every member answered a table push (so it holds
	// the newest table any of them got from the old master) or takeOverEnd
	// passed.
	answered    map[string]bool
	takeOverEnd time.Time
	// term counts this member's take-overs: a push sent in an earlier
	// term neither acknowledges nor answers for the current one.
	term uint64
	// ownTerm is the table term (partition.Table.Term) this member makes
	// tables in as master: 0 until it takes over (a cluster's first
	// master makes tables in term 0), then one above the newest table's
	// once its take-over gate opened (startTerm); pending meanwhile.
	ownTerm uint64
	pending bool
	// replaced is told when this member, master by its own member list,
	// adopts a table of a newer term than its own: another member took
	// over as master (this one was declared dead: frozen, or cut off). from
	// is the member that answered with it.
	replaced func(from string)
}

// takeOver starts a take-over: the planner waits (tookOver) and what was
// acknowledged or in flight in an earlier term is forgotten. The
// membership loop calls it before the member list names this member
// master.
func (pb *publisher) takeOver() {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	pb.answered, pb.takeOverEnd = map[string]bool{}, time.Now().Add(takeOverTimeout)
	pb.term++
	pb.pending = true
	clear(pb.acked) // acknowledgements and pushes of an earlier term
	clear(pb.inflight)
}

// forget drops what member id acknowledged: it left.
func (pb *publisher) forget(id string) {
	pb.mu.Lock()
	delete(pb.acked, id)
	pb.mu.Unlock()
}

// ack records that member holds table version v (or a newer one).
func (pb *publisher) ack(member string, v int64) {
	pb.mu.Lock()
	pb.acked[member] = max(pb.acked[member], v)
	pb.mu.Unlock()
}

// publish sends the current table to every member that has not
// acknowledged it, one push per member at a time.
func (pb *publisher) publish() {
	t := pb.view.table.Load()
	if t == nil {
		return
	}
	for _, m := range pb.view.memberList() {
		pb.mu.Lock()
		done := m.ID == pb.view.id || pb.acked[m.ID] >= t.Version || pb.inflight[m.ID]
		if !done {
			pb.inflight[m.ID] = true
		}
		term := pb.term
		pb.mu.Unlock()
		if done {
			continue
		}
		pb.run.spawn(func() { pb.push(m, t, term) })
	}
}

// push sends t to m in the given term (see publisher.term).
func (pb *publisher) push(m spi.Member, t *partition.Table, term uint64) {
	ctx, cancel := pb.run.stopContext(2 * time.Second)
	defer cancel()
	resp, err := pb.ops.InvokeOnMember(ctx, engineService, &publishTableOp{table: t}, m.ID)
	pb.mu.Lock()
	current := pb.term == term
	if current {
		delete(pb.inflight, m.ID)
		if err == nil {
			pb.acked[m.ID] = max(pb.acked[m.ID], t.Version)
		}
	}
	pb.mu.Unlock()
	if err != nil {
		pb.log.Debug("table push failed; will retry", "to", m.Address, "version", t.Version, "error", err)
		return
	}
	pb.adoptNewer(resp, m.Address) // a newer table is news in any term
	pb.mu.Lock()
	taking := pb.term == term && pb.answered != nil // still the same take-over
	if taking {
		pb.answered[m.ID] = true
	}
	pb.mu.Unlock()
	if taking {
		pb.plan()
	}
}

// tookOver reports whether this member, master now, may plan: a master
// that took over from another one plans from its table only once every
// member answered a push of it, adopting any newer table they held. A
// plan from an older table moves partitions by a table the members do not
// hold: a destination commits and waits for a table naming it that never
// comes, a source drops data that the newer table still gives it. The
// migrations the old master left half done are resolved then too
// (resolve).
func (pb *publisher) tookOver() bool {
	pb.mu.Lock()
	if pb.answered == nil {
		pb.mu.Unlock()
		return true
	}
	var missing []string
	for _, m := range pb.view.memberList() {
		if m.ID != pb.view.id && !pb.answered[m.ID] {
			missing = append(missing, m.Address)
		}
	}
	if len(missing) > 0 && time.Now().Before(pb.takeOverEnd) {
		pb.mu.Unlock()
		return false
	}
	pb.answered = nil
	pb.mu.Unlock()
	if len(missing) > 0 {
		pb.log.Warn("new master: members did not answer its table push in time; planning from the newest table it holds", "members", missing)
	}
	pb.startTerm()
	pb.resolve()
	return true
}

// startTerm starts this member's term as master: the newest table it
// holds, again, in a term one above that table's (and the next version),
// so that every table it makes from now on is newer than any a master it
// replaced may still make.
func (pb *publisher) startTerm() {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if !pb.pending {
		return // another call started it
	}
	// Read under mu: a table of this master's ending term installs under
	// it too (installOwn), so the new term starts from it, or it is
	// refused.
	cur := pb.view.table.Load()
	pb.pending = false
	if cur == nil {
		return
	}
	t := cur.Clone()
	t.Term, t.Version = max(cur.Term, pb.ownTerm)+1, cur.Version+1
	pb.ownTerm = t.Term
	if pb.tables.install(t) {
		pb.log.Info("master term started", "term", t.Term, "version", t.Version)
		pb.wake()
	}
}

// inTerm reports whether this member, as master, may make tables: its
// term has started and no table of a newer term came.
func (pb *publisher) inTerm() bool {
	t := pb.view.table.Load()
	pb.mu.Lock()
	defer pb.mu.Unlock()
	return !pb.pending && (t == nil || t.Term <= pb.ownTerm)
}

// installOwn installs t, a table this member made as master, if it is of
// its current term (see tables.install). The check and the install are one
// step against startTerm: a table of the ending term is either in the
// table the new term starts from or refused. Otherwise a move's table
// could be installed just after the new term's first table was cloned
// from an older one; a member holding that newer table would count as
// holding the move's (masterEngine.Push), and the source would commit and
// drop data the new term still gives it.
func (pb *publisher) installOwn(t *partition.Table) bool {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	return !pb.pending && t.Term == pb.ownTerm && pb.tables.install(t)
}

// ownsTerm reports whether t is of this member's term as master.
func (pb *publisher) ownsTerm(t *partition.Table) bool {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	return !pb.pending && t.Term == pb.ownTerm
}

// adoptNewer installs a table a member answered with because it is newer
// than the one pushed (it came from an earlier master): a new master plans
// from the newest table in the cluster.
func (pb *publisher) adoptNewer(resp any, from string) {
	b, _ := resp.([]byte)
	if len(b) == 0 {
		return
	}
	t, err := partition.Decode(spi.NewReader(b), pb.view.count)
	if err != nil {
		pb.log.Warn("bad table in a publish answer", "from", from, "error", err)
		return
	}
	if cur := pb.view.table.Load(); dropsMember(cur, t, pb.view.id) {
		pb.log.Warn("a member answered with a table of a newer term that no longer lists this member: it was declared dead; it keeps its data and checks whether to rejoin as a merge",
			"term", t.Term, "version", t.Version, "from", from)
		if pb.replaced != nil {
			pb.replaced(from)
		}
		return
	}
	if pb.tables.install(t) {
		pb.log.Info("adopted a newer partition table from a member", "term", t.Term, "version", t.Version, "from", from)
		pb.mu.Lock()
		own := pb.ownTerm
		replaced := pb.answered == nil && !pb.pending && t.Term > own && pb.view.isMaster()
		pb.mu.Unlock()
		if replaced && pb.replaced != nil {
			pb.log.Warn("another member took over as master meanwhile (a table of a newer term came back): this member stops acting as master and checks whether it was declared dead",
				"term", t.Term, "own_term", own, "from", from)
			pb.replaced(from)
		}
		pb.wake()
		pb.plan()
	}
}

// waitAllAcked waits until every other member acknowledged the current
// table, or ctx ends.
func (pb *publisher) waitAllAcked(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		t := pb.view.table.Load()
		all := true
		pb.mu.Lock()
		for _, m := range pb.view.memberList() {
			if m.ID != pb.view.id && pb.acked[m.ID] < t.Version {
				all = false
			}
		}
		pb.mu.Unlock()
		if all {
			return
		}
		pb.wake()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
