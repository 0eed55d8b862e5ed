package migration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// Engine is what the Manager needs from the node engine. Its methods are
// called from the Manager's goroutines.
type Engine interface {
	// IsMaster reports whether this member plans migrations now.
	IsMaster() bool
	// Table returns this member's current table (nil before the first).
	Table() *partition.Table
	// Targets returns the members that should own partitions: alive and
	// not leaving, oldest first.
	Targets() []spi.Member
	// Alive reports whether a member is in the member list (leaving ones
	// included); this member is always alive.
	Alive(id string) bool
	// Address returns a live member's address.
	Address(id string) string
	// Lost reports partitions whose every replica was gone (they were
	// assigned again, empty), or whose promoted backup was still syncing
	// (it may lack acknowledged writes).
	Lost(partitions []int)
	// ReplicaStatus returns the version of the table a member holds, and
	// its replica version and whether that replica still waits for a
	// full sync, per partition. A replica the member's table names but
	// whose reset it has not run yet is reported syncing. The Manager
	// also asks members that are not alive (memberlist may declare a
	// member dead that still runs, one starved of CPU): those are asked
	// once, at the address the table holds; an error means no answer.
	ReplicaStatus(ctx context.Context, member string) (table int64, versions []int64, syncing []bool, err error)
	// CaughtUp asks partition p's primary, on its executor of p, whether
	// its table lists member as a replica of p that gets its backups and
	// its replica version is at most version, in the same epoch: then a
	// replica at version holds every write the primary made before, and
	// gets every later one.
	CaughtUp(ctx context.Context, p int, primary, member string, version int64) (bool, error)
	// Install makes t this member's table and has it published to all;
	// false when the member already holds a newer table (then the change
	// is void), or when t is not valid (partition.Table.Validate: the
	// engine refuses it and logs why; the Manager never makes one).
	Install(t *partition.Table) bool
	// Push sends t to one member and returns once that member holds t or
	// a newer table of this master's term; one of a newer term (another
	// master took over) makes it fail with ErrSuperseded.
	Push(ctx context.Context, t *partition.Table, member string) error
	// Prepare runs step 1 on the source and returns the replication data.
	Prepare(ctx context.Context, m Move) ([]byte, error)
	// Apply runs step 2 on the destination.
	Apply(ctx context.Context, m Move, data []byte) error
	// Finish commits or rolls back one endpoint; repeating it is harmless.
	// A destination that no longer holds the move makes a commit fail
	// with ErrMoveGone.
	Finish(ctx context.Context, m Move, endpoint spi.MigrationEndpoint, commit bool) error
}

// Config configures a Manager.
type Config struct {
	Count    int           // partitions
	Backups  int           // backup replicas per partition in the table
	Parallel int           // moves at once (default 4)
	Timeout  time.Duration // one step of a move (default 30s)
	Logger   *slog.Logger
}

// Stats counts what the Manager did since it was made.
type Stats struct {
	Planned, Completed, RolledBack int64
}

// Manager plans and runs migrations on the master. Its goroutine (Run)
// owns every change to the master's table.
type Manager struct {
	e    Engine
	cfg  Config
	log  *slog.Logger
	wake chan struct{}

	mu sync.Mutex // serialises table changes

	seq                            atomic.Uint64 // move ids
	inflight                       atomic.Int32
	planned, completed, rolledBack atomic.Int64

	deferMu     sync.Mutex
	deferLogged string // the partitions whose repair waits, as last logged
}

// statusTimeout bounds a replica state query of a live backup; probeTimeout
// bounds the question to a member declared dead whether it still runs and
// holds a partition in sync, before that partition is reported lost.
const (
	statusTimeout = 2 * time.Second
	probeTimeout  = 5 * time.Second
)

// New returns a Manager; start Run on a goroutine of its own.
func New(e Engine, cfg Config) *Manager {
	if cfg.Parallel <= 0 {
		cfg.Parallel = 4
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{e: e, cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1)}
}

// Trigger asks the Manager to look at the member list again. It never
// blocks.
func (m *Manager) Trigger() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// InFlight returns the number of moves running now.
func (m *Manager) InFlight() int { return int(m.inflight.Load()) }

// Idle reports whether nothing is running and the table already is the
// balanced target for the current members (so a member that just joined
// makes the Manager busy at once, before it plans).
func (m *Manager) Idle() bool {
	if m.inflight.Load() > 0 {
		return false
	}
	t := m.e.Table()
	if t == nil {
		return false
	}
	var ids []string
	for _, mb := range m.e.Targets() {
		ids = append(ids, mb.ID)
	}
	if len(ids) == 0 {
		return false
	}
	_, moves, orphans := Plan(t.Owners, ids, m.cfg.Count, m.e.Alive)
	return len(moves) == 0 && len(orphans) == 0 && !t.HasIncoming()
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	return Stats{Planned: m.planned.Load(), Completed: m.completed.Load(), RolledBack: m.rolledBack.Load()}
}

// Run plans and runs migrations until ctx ends. A new master continues
// from the table it holds.
func (m *Manager) Run(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if m.e.IsMaster() {
			m.round(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-tick.C:
		}
	}
}

// round brings the table one planning round closer to the target.
func (m *Manager) round(ctx context.Context) {
	targets := m.e.Targets()
	if len(targets) == 0 {
		return
	}
	ids := make([]string, len(targets))
	for i, t := range targets {
		ids[i] = t.ID
	}
	m.repair(ids)
	m.settleIncoming(ctx)
	t := m.e.Table()
	if t == nil {
		return
	}
	_, moves, _ := Plan(t.Owners, ids, m.cfg.Count, m.e.Alive)
	if len(moves) == 0 {
		return
	}
	m.planned.Add(int64(len(moves)))
	m.log.Info("migrations planned", "moves", len(moves), "members", len(ids))
	sem := make(chan struct{}, m.cfg.Parallel)
	var wg sync.WaitGroup
	var done atomic.Int32
	var failed atomic.Bool
	for _, mv := range moves {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		if !m.e.IsMaster() {
			<-sem
			break
		}
		wg.Add(1)
		m.inflight.Add(1)
		go func(mv Move) {
			defer func() { m.inflight.Add(-1); <-sem; wg.Done() }()
			if err := m.migrate(ctx, mv); err != nil {
				failed.Store(true)
				m.rolledBack.Add(1)
				m.log.Warn("migration rolled back", "partition", mv.Partition,
					"from", m.e.Address(mv.Source), "to", m.e.Address(mv.Destination), "error", err)
			} else {
				m.completed.Add(1)
			}
			if n := done.Add(1); n%50 == 0 || int(n) == len(moves) {
				m.log.Info("migration progress", "done", n, "of", len(moves))
			}
		}(mv)
	}
	wg.Wait()
	if !failed.Load() {
		m.Trigger() // look again at once: members may have changed meanwhile
	} // after a failure, wait for the next tick rather than spin
}

// repair makes a new table version when a partition has no live primary
// (a backup is promoted; with no live replica the partition is lost and
// assigned empty) or its backups do not match the members.
//
// A partition is promoted only from replicas whose state is known: a live
// backup whose state could not be read may be the one in sync, so while
// no backup is known to be in sync the partition waits for the next
// repair. Before a partition is reported lost, the members memberlist
// declared dead that hold a replica of it in the table are asked once:
// under load memberlist declares members dead that still run (and that
// rejoin a moment later); one that answers with the partition in sync
// holds every acknowledged write, so the partition waits rather than
// start empty or from a replica that is still syncing.
func (m *Manager) repair(ids []string) {
	var promoted, lost, waiting []int
	var why []string // per lost partition: what its live replicas answered
	changed := false
	status := m.candidateStatus()
	m.update(func(t *partition.Table, first bool) bool {
		promoted, lost, waiting, why, changed = nil, nil, nil, nil, false
		target := partition.Rebalance(nil, ids, m.cfg.Count)
		if !first {
			alive := make([]string, m.cfg.Count)
			for p, o := range t.Owners {
				if o != "" && m.e.Alive(o) {
					alive[p] = o
				}
			}
			target = partition.Rebalance(alive, ids, m.cfg.Count)
		}
		for p, o := range t.Owners {
			if o != "" && m.e.Alive(o) {
				continue
			}
			// Promote the most advanced live backup that is in sync; one
			// still syncing may lack acknowledged writes: promote it only
			// if no other is left, and report the partition as lost.
			k, best, bestSynced, unknown := 0, int64(-1), false, false
			for i, b := range t.Backups[p] {
				if b == "" || !m.e.Alive(b) {
					continue
				}
				st, ok := status[b]
				if !ok || p >= len(st.versions) || p >= len(st.syncing) {
					unknown = true // not read: it may be the one in sync
					continue
				}
				v, synced := st.versions[p], !st.syncing[p]
				if k == 0 || (synced && !bestSynced) || (synced == bestSynced && v > best) {
					k, best, bestSynced = i+1, v, synced
				}
			}
			if !bestSynced && (unknown || !first && inSyncElsewhere(t, p, status, m.e.Alive)) {
				waiting = append(waiting, p)
				continue
			}
			switch {
			case k > 0:
				if !bestSynced {
					why = append(why, lostDetail(t, p, status))
				}
				t.Owners[p] = t.Backups[p][k-1]
				t.Backups[p][k-1] = ""
				promoted = append(promoted, p)
				if !bestSynced {
					lost = append(lost, p)
				}
			default:
				if !first {
					lost = append(lost, p)
					why = append(why, lostDetail(t, p, status))
				}
				t.Owners[p] = target[p]
			}
			changed = true
		}
		// An incoming backup takes the place it was syncing for when the
		// replica there died or was promoted.
		prev := t.Backups
		if t.HasIncoming() {
			prev = make([][]string, len(t.Backups))
			for p := range t.Backups {
				prev[p] = slices.Clone(t.Backups[p])
				for i, id := range t.IncomingOf(p) {
					if id != "" && m.e.Alive(id) && i < len(prev[p]) && (prev[p][i] == "" || !m.e.Alive(prev[p][i])) {
						prev[p][i] = id
					}
				}
			}
		}
		// A waiting partition's replicas stay where they are: the members
		// it waits for keep their place in the table.
		if moveBackups(t, partition.RebalanceBackups(t.Owners, prev, ids, m.cfg.Backups), m.e.Alive, waiting) {
			changed = true
		}
		return changed
	})
	m.logWaiting(waiting)
	if len(promoted) > 0 {
		m.log.Info("backups promoted to primary", "partitions", len(promoted))
	}
	if len(lost) > 0 {
		m.log.Error("partitions lost: no live replica was in sync; they start empty or from a backup that may lack acknowledged writes",
			"count", len(lost), "partitions", lost, "replicas", why)
		m.e.Lost(lost)
	}
}

// lostDetail says, for a partition about to be reported lost, what its
// replicas in t answered: each backup's and incoming replica's member,
// and its replica version and whether it was syncing, or why it was not
// asked (before the table changes).
func lostDetail(t *partition.Table, p int, status map[string]replicaStatus) string {
	s := fmt.Sprintf("p%d owner=%s", p, t.Owners[p])
	say := func(kind, id string) {
		st, ok := status[id]
		switch {
		case id == "":
		case !ok || p >= len(st.versions) || p >= len(st.syncing):
			s += fmt.Sprintf(" %s=%s(no answer)", kind, id)
		default:
			s += fmt.Sprintf(" %s=%s(v%d.%d syncing=%v)", kind, id, st.versions[p]>>32, st.versions[p]&(1<<32-1), st.syncing[p])
		}
	}
	for _, b := range t.BackupsOf(p) {
		say("backup", b)
	}
	for _, b := range t.IncomingOf(p) {
		say("incoming", b)
	}
	return s
}

// moveBackups changes t's backups towards want (partition.RebalanceBackups'
// choice) and reports whether it changed anything. A backup replica held
// by a live member that is not the partition's owner is not replaced at
// once: the member that is to take it over becomes incoming, syncs, and
// takes over only once settleIncoming finds it caught up, so a failover
// always finds the old, in-sync copy meanwhile. An empty or dead slot,
// or a change of the number of backups, is filled directly (there is no
// in-sync copy to keep). The partitions in keep stay as they are.
//
// want is a set per partition, not a layout: RebalanceBackups lists the
// backups it keeps first, whatever their slot. Each is compared with the
// slot it holds (alignBackups), so that no member is named for a second
// slot while it still holds its first.
//
// Every partition keeps the same number of backup slots, as the table's
// wire form and readers require: while a partition in keep holds more
// slots than want has backups (the members it waits for left the targets
// and the backup count fell with them), every partition keeps as many,
// the extra ones empty; one holding fewer gets empty ones.
func moveBackups(t *partition.Table, want [][]string, alive func(string) bool, keep []int) bool {
	slots := 0
	for p := range t.Owners {
		if p < len(want) {
			slots = max(slots, len(want[p]))
		}
	}
	for _, p := range keep {
		slots = max(slots, len(t.BackupsOf(p)))
	}
	if t.Backups == nil && slots > 0 {
		t.Backups = make([][]string, len(t.Owners))
	}
	changed := false
	var incoming [][]string
	for p := range t.Owners {
		cur := t.BackupsOf(p)
		if slices.Contains(keep, p) {
			if len(cur) < slots {
				t.Backups[p] = padded(cur, slots)
				changed = true
			}
			if in := t.IncomingOf(p); in != nil {
				if incoming == nil {
					incoming = make([][]string, len(t.Owners))
				}
				incoming[p] = padded(in, slots)
			}
			continue
		}
		var w []string
		if p < len(want) {
			w = want[p]
		}
		w = padded(w, slots)
		if len(cur) != len(w) {
			if t.Backups == nil {
				t.Backups = make([][]string, len(t.Owners))
			}
			t.Backups[p] = w
			changed = true
			continue
		}
		cur = slices.Clone(cur) // t.Backups[p] changes below
		var in []string
		for i, w := range alignBackups(cur, t.IncomingOf(p), w) {
			c := cur[i]
			switch {
			case c == w:
			case c == "" || !alive(c) || c == t.Owners[p] || w == "" || slices.Index(cur, c) < i:
				// Nothing in sync to keep here (a member listed in an
				// earlier slot too holds one copy, kept there).
				t.Backups[p][i] = w
				changed = true
			default:
				if in == nil {
					in = make([]string, len(cur))
				}
				in[i] = w
			}
		}
		if in != nil {
			if incoming == nil {
				incoming = make([][]string, len(t.Owners))
			}
			incoming[p] = in
		}
	}
	if !slices.EqualFunc(incoming, t.Incoming, slices.Equal[[]string]) && (incoming != nil || t.HasIncoming()) {
		changed = true
	}
	t.Incoming = incoming
	return changed
}

// padded returns a copy of ids with n entries, the added ones empty (nil
// for none).
func padded(ids []string, n int) []string {
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	copy(out, ids)
	return out
}

// alignBackups lays want (the members that are to hold a partition's
// backups, as many as cur has slots) over the slots of cur: a member of
// want that holds a slot in cur keeps that slot, one that is incoming for
// a slot in in (the incoming replicas) keeps that one while it is free,
// and the others take the remaining slots in order. Laid out so, the slot
// a member holds is the only one it is named for: when the promotion of
// the backup in slot 1 of [X, Y] emptied that slot and want was [Y, Z],
// comparing slot by slot filled slot 1 with Y at once and named Z
// incoming for slot 2, which Y kept serving ([Y, Y], Z incoming): the
// table counted two backups while Y held one copy, and every write backed
// up to Y twice.
func alignBackups(cur, in, want []string) []string {
	out := make([]string, len(cur))
	placed := make([]bool, len(want))
	put := func(from []string) {
		for i, id := range from {
			if i >= len(out) || id == "" || out[i] != "" {
				continue
			}
			if k := slices.Index(want, id); k >= 0 && !placed[k] {
				out[i], placed[k] = id, true
			}
		}
	}
	put(cur)
	put(in)
	i := 0
	for k, id := range want {
		if placed[k] || id == "" {
			continue
		}
		for out[i] != "" {
			i++
		}
		out[i] = id
	}
	return out
}

// settleIncoming swaps in the incoming backup replicas that caught up
// with their primary: a new table version names each the backup replica
// it was to take over, and the member it replaces drops its copy.
func (m *Manager) settleIncoming(ctx context.Context) {
	t := m.e.Table()
	if t == nil || !t.HasIncoming() {
		return
	}
	status := map[string]replicaStatus{}
	mute := map[string]bool{} // primaries that did not answer this round
	type swap struct{ p, i int }
	var ready []swap
	for p, in := range t.Incoming {
		for i, id := range in {
			if id == "" || !m.e.Alive(id) || !m.e.Alive(t.Owners[p]) {
				continue
			}
			st, ok := status[id]
			if !ok {
				sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				tv, v, s, err := m.e.ReplicaStatus(sctx, id)
				cancel()
				if err != nil {
					m.log.Debug("cannot read an incoming backup's replica state", "member", m.e.Address(id), "error", err)
				}
				st = replicaStatus{table: tv, versions: v, syncing: s}
				status[id] = st
			}
			// A member that does not hold t yet may not know it is to take
			// over this replica: it answers for the replica it had, at
			// version 0 and not syncing if none, which is what a copy in
			// sync says of a partition never written. It is asked again
			// next round.
			if st.table < t.Version || !st.inSync(p) || mute[t.Owners[p]] {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ok, err := m.e.CaughtUp(sctx, p, t.Owners[p], id, st.versions[p])
			cancel()
			if err != nil {
				// A primary that does not answer (frozen, or dead and not
				// yet declared so) is not asked again this round: the
				// round must reach the next repair soon.
				mute[t.Owners[p]] = true
				m.log.Debug("cannot ask a primary whether its incoming backup caught up", "partition", p, "error", err)
			}
			if ok {
				ready = append(ready, swap{p, i})
			}
		}
	}
	if len(ready) == 0 {
		return
	}
	if m.update(func(nt *partition.Table, _ bool) bool {
		changed := false
		for _, s := range ready {
			id := t.Incoming[s.p][s.i]
			if nt.Owners[s.p] != t.Owners[s.p] || !nt.IsIncoming(s.p, id) || nt.Incoming[s.p][s.i] != id {
				continue // the table moved on meanwhile
			}
			nt.Backups[s.p][s.i] = id
			nt.Incoming[s.p][s.i] = ""
			changed = true
		}
		if changed && !nt.HasIncoming() {
			nt.Incoming = nil
		}
		return changed
	}) != nil {
		m.log.Info("backup replicas moved", "count", len(ready))
	}
}

type replicaStatus struct {
	table    int64 // the version of the member's table
	versions []int64
	syncing  []bool
}

// inSync reports whether the replica of p is there and not waiting for a
// full sync.
func (s replicaStatus) inSync(p int) bool {
	return p < len(s.versions) && p < len(s.syncing) && !s.syncing[p]
}

// inSyncElsewhere reports whether a member that is not alive but holds a
// replica of p in t (its owner or a backup) answered that it holds p in
// sync: memberlist declared it dead while it runs.
func inSyncElsewhere(t *partition.Table, p int, status map[string]replicaStatus, alive func(string) bool) bool {
	for _, id := range append([]string{t.Owners[p]}, t.BackupsOf(p)...) {
		if id == "" || alive(id) {
			continue
		}
		if st, ok := status[id]; ok && st.inSync(p) {
			return true
		}
	}
	return false
}

// candidateStatus asks the live backups of partitions whose primary is
// gone for their replica state, then, for the partitions none of them
// holds in sync, the members declared dead that hold a replica of them in
// the table (nil when no promotion is due). A member that does not
// answer is left out.
func (m *Manager) candidateStatus() map[string]replicaStatus {
	t := m.e.Table()
	if t == nil {
		return nil
	}
	want := map[string]bool{}
	for p, o := range t.Owners {
		if o != "" && m.e.Alive(o) {
			continue
		}
		for _, b := range t.BackupsOf(p) {
			if b != "" && m.e.Alive(b) {
				want[b] = true
			}
		}
	}
	out := m.askStatus(want, statusTimeout, "cannot read a backup's replica state before promoting")
	probe := map[string]bool{}
	for p, o := range t.Owners {
		if o != "" && m.e.Alive(o) {
			continue
		}
		synced := false
		for _, b := range t.BackupsOf(p) {
			if st, ok := out[b]; ok && b != "" && st.inSync(p) {
				synced = true
			}
		}
		if synced {
			continue
		}
		for _, id := range append([]string{o}, t.BackupsOf(p)...) {
			if id != "" && !m.e.Alive(id) {
				probe[id] = true
			}
		}
	}
	for id, st := range m.askStatus(probe, probeTimeout, "") {
		m.log.Warn("a member declared dead still answers; the partitions it holds in sync wait for it rather than be reported lost",
			"member_id", id)
		out[id] = st
	}
	return out
}

// askStatus asks the members for their replica state at once, each for
// up to timeout, and returns the answers; a failure is logged with
// failMsg (when not empty).
func (m *Manager) askStatus(members map[string]bool, timeout time.Duration, failMsg string) map[string]replicaStatus {
	out := make(map[string]replicaStatus, len(members))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			tv, v, s, err := m.e.ReplicaStatus(ctx, id)
			cancel()
			if err != nil {
				if failMsg != "" {
					m.log.Warn(failMsg, "member", m.e.Address(id), "error", err)
				}
				return
			}
			mu.Lock()
			out[id] = replicaStatus{table: tv, versions: v, syncing: s}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// logWaiting reports the partitions whose repair waits, when they change.
func (m *Manager) logWaiting(waiting []int) {
	key := fmt.Sprint(waiting)
	m.deferMu.Lock()
	changed := key != m.deferLogged
	m.deferLogged = key
	m.deferMu.Unlock()
	if changed && len(waiting) > 0 {
		m.log.Warn("partitions without a live primary wait: no live backup is known to be in sync, and a replica's state is unknown or a member declared dead still holds it in sync",
			"count", len(waiting), "partitions", waiting)
	}
}

// update changes a copy of the master's table under the lock and installs
// it as the next version when change reports a change. first is true when
// there was no table yet. It returns the installed table, or nil.
func (m *Manager) update(change func(t *partition.Table, first bool) bool) *partition.Table {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.e.Table()
	var next *partition.Table
	if cur != nil {
		next = cur.Clone()
	} else {
		next = &partition.Table{Owners: make([]string, m.cfg.Count)}
	}
	if next.Backups == nil {
		next.Backups = make([][]string, m.cfg.Count)
	}
	if !change(next, cur == nil) {
		return nil
	}
	if len(next.Backups) != m.cfg.Count {
		next.Backups = make([][]string, m.cfg.Count)
	}
	next.Version++
	next.Members = make(map[string]string)
	add := func(id string) {
		if id == "" {
			return
		}
		if a := m.e.Address(id); a != "" {
			next.Members[id] = a
		} else if cur != nil && cur.Members[id] != "" {
			next.Members[id] = cur.Members[id]
		}
	}
	for p, o := range next.Owners {
		add(o)
		for _, b := range next.Backups[p] {
			add(b)
		}
		for _, b := range next.IncomingOf(p) {
			add(b)
		}
	}
	if next.BackupCount() == 0 {
		next.Backups = nil
	}
	if !m.e.Install(next) {
		return nil
	}
	return next
}

var errGone = errors.New("member left the cluster")

// ErrMoveGone is what Engine.Finish returns when a destination asked to
// commit no longer holds the move: it rolled it back on its own (it took
// the master for gone). Committing would name an owner without the
// source's data, so the move is rolled back; it is not retried.
var ErrMoveGone = errors.New("migration: the destination no longer holds the move")

// ErrSuperseded is what Engine.Push returns when the member holds a table
// of a newer master's term: another member took over as master, and this
// one's tables will never be installed there. It is not retried.
var ErrSuperseded = errors.New("migration: another master took over")

// untilGone repeats f until it succeeds, the member leaves, ctx ends, or
// f fails with ErrMoveGone or ErrSuperseded.
func (m *Manager) untilGone(ctx context.Context, member string, f func(ctx context.Context) error) error {
	pause := 10 * time.Millisecond
	for {
		sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		err := f(sctx)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrMoveGone) || errors.Is(err, ErrSuperseded) {
			return err
		}
		if !m.e.Alive(member) {
			return fmt.Errorf("%w: %v", errGone, err)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

// migrate runs one move (see the package doc for the steps).
func (m *Manager) migrate(ctx context.Context, mv Move) error {
	// A member may have died since the round was planned: repair first
	// (promote backups, assign lost partitions) rather than after the
	// whole round.
	var ids []string
	for _, t := range m.e.Targets() {
		ids = append(ids, t.ID)
	}
	if len(ids) > 0 {
		m.repair(ids)
	}
	t := m.e.Table()
	if t == nil || t.Owner(mv.Partition) != mv.Source || !m.e.Alive(mv.Destination) || !m.e.Alive(mv.Source) {
		return errors.New("plan is stale")
	}
	mv.ID, mv.Term = m.seq.Add(1), t.Term
	// A destination that is a backup of the partition swaps places with
	// the source, which becomes that backup and keeps its data.
	mv.DestinationIndex = t.ReplicaIndex(mv.Partition, mv.Destination)
	if t.IsIncoming(mv.Partition, mv.Destination) {
		mv.DestinationIndex = -1 // not a backup yet: nothing to swap
	}
	mv.SourceNewIndex = -1
	if mv.DestinationIndex > 0 {
		mv.SourceNewIndex = mv.DestinationIndex
	}
	step, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	data, err := m.e.Prepare(step, mv)
	cancel()
	if err != nil {
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("prepare on source: %w", err)
	}
	step, cancel = context.WithTimeout(ctx, m.cfg.Timeout)
	err = m.e.Apply(step, mv, data)
	cancel()
	if err != nil {
		m.finish(ctx, mv, spi.MigrationDestination, false)
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("apply on destination: %w", err)
	}
	if err := m.untilGone(ctx, mv.Destination, func(ctx context.Context) error {
		return m.e.Finish(ctx, mv, spi.MigrationDestination, true)
	}); err != nil {
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("commit on destination: %w", err)
	}
	next := m.update(func(t *partition.Table, _ bool) bool {
		// A table of another term (this member took over as master
		// again: its move's destination ends the move when that table
		// comes) or another owner: the move is void.
		if t.Term != mv.Term || t.Owners[mv.Partition] != mv.Source {
			return false
		}
		t.Owners[mv.Partition] = mv.Destination
		if k := mv.DestinationIndex; k > 0 && k <= len(t.Backups[mv.Partition]) && t.Backups[mv.Partition][k-1] == mv.Destination {
			t.Backups[mv.Partition][k-1] = mv.Source
		}
		// A member holds one replica of a partition: a destination that
		// was taking over a backup replica of it stops doing so, and one
		// that a repair named a backup in another slot while the move ran
		// leaves that slot (empty: the next repair fills it).
		leaveBackups(t, mv.Partition, mv.Destination)
		return true
	})
	if next == nil {
		// A newer table (from an earlier master, a repair that promoted
		// the destination, or this master's new term) arrived meanwhile.
		// Unless it names the destination owner (the table's push then
		// ends the destination's wait, keeping the data), the destination
		// committed data that no table will name it for: it must stop
		// waiting, and keep the data only as the backup a table may make
		// it.
		if now := m.e.Table(); now == nil || now.Owner(mv.Partition) != mv.Destination {
			m.finish(ctx, mv, spi.MigrationDestination, false)
		}
		m.finish(ctx, mv, spi.MigrationSource, false)
		return errors.New("table changed under the migration")
	}
	if err := m.untilGone(ctx, mv.Destination, func(ctx context.Context) error {
		return m.e.Push(ctx, next, mv.Destination)
	}); err != nil {
		if !errors.Is(err, errGone) {
			// The master is stopping, or another took over
			// (ErrSuperseded): the table names the destination, which
			// committed; the next master resolves the source, and the
			// newer term's table ends the destination's wait.
			return fmt.Errorf("publish to destination: %w", err)
		}
		// The destination died after the table naming it was installed:
		// it may have served writes, which its backups hold and the
		// source does not. With backups, repair promotes the most
		// advanced one and the source's data is stale: it commits (drops
		// it, or keeps it as a backup after a swap). Only a partition
		// without backups goes back to the source, its best copy left.
		if len(next.BackupsOf(mv.Partition)) > 0 && slices.ContainsFunc(next.BackupsOf(mv.Partition), func(b string) bool { return b != "" && b != mv.Source && m.e.Alive(b) }) {
			m.finish(ctx, mv, spi.MigrationSource, true)
			m.Trigger()
			return fmt.Errorf("destination died after taking over: %w", err)
		}
		if m.e.Alive(mv.Source) {
			m.update(func(t *partition.Table, _ bool) bool {
				if t.Owners[mv.Partition] != mv.Destination {
					return false
				}
				t.Owners[mv.Partition] = mv.Source
				// The source took the destination's backup slot (a swap),
				// or a repair named it a backup since: it is the owner now.
				leaveBackups(t, mv.Partition, mv.Source)
				return true
			})
		}
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("publish to destination: %w", err)
	}
	// The source must hold the new table before it drops the data and
	// stops refusing operations, or it would serve them as the owner.
	if err := m.untilGone(ctx, mv.Source, func(ctx context.Context) error {
		return m.e.Push(ctx, next, mv.Source)
	}); err != nil {
		return nil
	}
	if now := m.e.Table(); now != nil && now.Term != mv.Term && now.Owner(mv.Partition) != mv.Destination {
		// This master took over again meanwhile, from a table that does
		// not name the destination (another master's, adopted): the
		// members hold that term's table, which a push counts as held,
		// and it gives the partition to another owner. The source keeps
		// its data; the destination's move ends with the newer term.
		m.finish(ctx, mv, spi.MigrationSource, false)
		return errors.New("a newer term's table does not name the destination")
	}
	m.finish(ctx, mv, spi.MigrationSource, true)
	return nil
}

// leaveBackups takes the owner of partition p out of the backup and
// incoming slots it holds in t: a member holds one replica of a
// partition.
func leaveBackups(t *partition.Table, p int, owner string) {
	for i, id := range t.BackupsOf(p) {
		if id == owner {
			t.Backups[p][i] = ""
		}
	}
	for i, id := range t.IncomingOf(p) {
		if id == owner {
			t.Incoming[p][i] = ""
		}
	}
}

// finish commits or rolls back one endpoint, retrying while it lives.
func (m *Manager) finish(ctx context.Context, mv Move, ep spi.MigrationEndpoint, commit bool) {
	member := mv.Source
	if ep == spi.MigrationDestination {
		member = mv.Destination
	}
	if err := m.untilGone(ctx, member, func(ctx context.Context) error {
		return m.e.Finish(ctx, mv, ep, commit)
	}); err != nil && !errors.Is(err, errGone) {
		m.log.Warn("cannot finish migration", "partition", mv.Partition, "endpoint", ep.String(), "commit", commit, "error", err)
	}
}

// Counts is a helper for logs and tests: partitions per member.
func Counts(owners []string) map[string]int {
	c := make(map[string]int)
	for _, o := range owners {
		c[o]++
	}
	return c
}
