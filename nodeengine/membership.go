package nodeengine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

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
// table to members that lack it. It runs on its own goroutine until the
// node stops.
func (n *Node) membershipLoop() {
	tick := time.NewTicker(republishInterval)
	defer tick.Stop()
	for {
		n.refreshMembers()
		if n.view.isMaster() {
			n.pub.publish()
		}
		select {
		case <-n.run.stop():
			return
		case <-n.wake:
		case <-tick.C:
		}
	}
}

// refreshMembers reads memberlist's view and reports who joined and left.
func (n *Node) refreshMembers() {
	next := n.memberView()
	prev := n.view.memberList()
	if slices.Equal(prev, next) {
		return
	}
	self := n.view.id
	if len(prev) > 0 && len(next) > 0 && prev[0].ID != next[0].ID && next[0].ID == self {
		n.pub.takeOver() // gate the planner before isMaster turns true
	}
	n.view.members.Store(&next)
	for _, m := range prev {
		if !containsMember(next, m.ID) && m.ID != self {
			n.sb.left(m.Address) // after a split, the other side is there
			if n.del.droppedItsData(m.ID) {
				n.log.Warn("member taken for gone: it dropped its data to merge while this cluster listed it; it is listed again once the partition table no longer names it",
					"left", m.Address, "left_id", m.ID, "members", len(next))
			}
			n.log.Info("member left", "left", m.Address, "left_id", m.ID, "members", len(next))
			n.ops.MemberLeft(m.ID)
			n.pub.forget(m.ID)
			n.leavers.forget(m.ID)
		}
	}
	for _, m := range next {
		if !containsMember(prev, m.ID) && m.ID != self {
			n.log.Info("member joined", "joined", m.Address, "joined_id", m.ID, "members", len(next))
		}
	}
	if len(next) > 0 && (len(prev) == 0 || prev[0].ID != next[0].ID) {
		n.log.Info("master is now", "master", next[0].Address, "master_id", next[0].ID, "self", next[0].ID == self)
		if len(prev) > 0 && next[0].ID != self {
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

// memberMeta is what each member gossips about itself in memberlist's node
// meta: enough to refuse strangers and to order members by age.
type memberMeta struct {
	protocol uint8
	cluster  string
	address  string // operation address, host:port
	started  int64  // unix nanoseconds; the oldest member is the master
	// dropped: the member dropped its partition table and data to merge
	// and holds no table yet (see delegates.members). Encoded last, and
	// only when set.
	dropped bool
}

func (m memberMeta) encode() []byte {
	w := spi.NewWriter(nil)
	w.WriteUint8(m.protocol)
	w.WriteString(m.cluster)
	w.WriteString(m.address)
	w.WriteVarint(m.started)
	if m.dropped {
		w.WriteBool(true)
	}
	return w.Bytes()
}

func decodeMeta(b []byte) (memberMeta, error) {
	r := spi.NewReader(b)
	m := memberMeta{protocol: r.ReadUint8(), cluster: r.ReadString(), address: r.ReadString(), started: r.ReadVarint()}
	if r.Err() == nil && r.Remaining() > 0 {
		m.dropped = r.ReadBool()
	}
	return m, r.Err()
}

// delegates implements memberlist's Delegate, EventDelegate, AliveDelegate
// and MergeDelegate for a node. memberlist calls them on its own
// goroutines; they never block: events go to the node's membership loop.
type delegates struct {
	n    *Node
	meta []byte

	mu      sync.Mutex
	refused map[string]bool // peers already logged as refused
	// alive holds a copy of the meta of every member memberlist holds
	// alive (or suspect), by name, kept by the event callbacks. memberlist
	// calls them with its node lock held, the only time a *memberlist.Node
	// may be read: it rewrites Meta (and Addr, Port) of the node states
	// Members() points to whenever an alive message with a newer
	// incarnation arrives, which a member that refutes a suspicion sends.
	alive map[string][]byte
	// dead holds the start time of every member memberlist declared
	// dead, by name: one that comes back with the same start time formed
	// or joined another cluster meanwhile (a split) and is refused; it
	// comes back through split-brain healing, with a new start time.
	dead map[string]int64
	// gone holds the members this one declared dead by their refused
	// port (confirmDead) while memberlist still lists them: members leaves
	// them out. memberlist's own declaration ends the entry, or undoGone
	// when memberlist goes on listing the member.
	gone map[string]bool
	// disputed holds the members a refused port declared dead whom
	// memberlist went on listing (undoGone): their refusals are ignored.
	disputed map[string]bool
	// cleared holds, by name, the start time of the merge after which a
	// member that dropped its data (memberMeta.dropped) was left out of
	// the list until this member's table no longer named it (members):
	// the table that names it again gives it new replicas, which it
	// takes as the fresh member it is.
	cleared map[string]int64
	// held, while holding, is the member list members returns instead of
	// alive's: a merge replaces the memberlist instance (holdView).
	held    []spi.Member
	holding bool
}

func newDelegates(n *Node, meta []byte) *delegates {
	return &delegates{n: n, meta: meta, refused: make(map[string]bool), alive: make(map[string][]byte), dead: make(map[string]int64),
		gone: make(map[string]bool), disputed: make(map[string]bool), cleared: make(map[string]int64)}
}

func (d *delegates) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		panic(fmt.Sprintf("partita: member meta of %d bytes exceeds memberlist's %d", len(d.meta), limit))
	}
	return d.meta
}

// setStarted changes the start time this member gossips (a merging member
// becomes younger than every member of the cluster it joins); the caller
// then has memberlist gossip it (UpdateNode).
func (d *delegates) setStarted(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := decodeMeta(d.meta)
	if err != nil {
		return
	}
	m.started = t.UnixNano()
	d.meta = m.encode()
}

// setDropped changes whether this member gossips that it dropped its
// table and data to merge and holds no table yet; the caller then has
// memberlist gossip it (UpdateNode).
func (d *delegates) setDropped(dropped bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := decodeMeta(d.meta)
	if err != nil {
		return
	}
	m.dropped = dropped
	d.meta = m.encode()
}
func (d *delegates) NotifyMsg([]byte)                           {}
func (d *delegates) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegates) LocalState(join bool) []byte                { return nil }
func (d *delegates) MergeRemoteState(buf []byte, join bool)     {}

// check refuses members of another cluster or protocol, logging each
// stranger once.
func (d *delegates) check(peer *memberlist.Node) error {
	m, err := decodeMeta(peer.Meta)
	switch {
	case err != nil:
		err = fmt.Errorf("%w: member %s at %s sent unreadable metadata: %v", spi.ErrClusterMismatch, peer.Name, peer.Address(), err)
	case m.protocol != operation.ProtocolVersion:
		err = fmt.Errorf("%w: member %s at %s speaks protocol version %d, we speak %d", spi.ErrClusterMismatch, peer.Name, peer.Address(), m.protocol, operation.ProtocolVersion)
	case m.cluster != d.n.cfg.Cluster.Name:
		err = fmt.Errorf("%w: member %s at %s belongs to cluster %q, we are %q", spi.ErrClusterMismatch, peer.Name, peer.Address(), m.cluster, d.n.cfg.Cluster.Name)
	default:
		d.mu.Lock()
		_, known := d.alive[peer.Name]
		d.mu.Unlock()
		if !known && peer.Name != d.n.view.id && d.n.sb.closedToNewMembers() {
			return fmt.Errorf("member %s at %s may not join now: this cluster is merging into another", peer.Name, peer.Address())
		}
		d.mu.Lock()
		started, wasDead := d.dead[peer.Name]
		if wasDead && started != m.started {
			delete(d.dead, peer.Name) // merged since: welcome back
		}
		d.mu.Unlock()
		if !wasDead || started != m.started {
			return nil
		}
		err = fmt.Errorf("member %s at %s was declared dead and comes back unmerged (it may hold another cluster's table): it rejoins through split-brain healing", peer.Name, peer.Address())
		d.mu.Lock()
		gone := d.gone[peer.Name]
		key := "dead:" + peer.Name
		if gone {
			// Its port refused connections: the alive messages are the
			// others' gossip about it until their memberlist declares it
			// dead too, not the member coming back (its own key, so that
			// a comeback after memberlist's declaration is warned of).
			key = "gone:" + peer.Name
			err = fmt.Errorf("member %s at %s %s", peer.Name, peer.Address(), goneReason)
		}
		first := !d.refused[key]
		d.refused[key] = true
		d.mu.Unlock()
		if first {
			level := slog.LevelWarn
			if gone {
				level = slog.LevelDebug
			}
			d.n.log.Log(context.Background(), level, "refusing member", "member", peer.Name, "address", peer.Address(), "reason", err)
			name, addr := peer.Name, peer.Address()
			d.n.run.spawn(func() { d.n.reconsiderDead(name, addr) })
		}
		return err
	}
	d.mu.Lock()
	first := !d.refused[peer.Name]
	d.refused[peer.Name] = true
	d.mu.Unlock()
	if first {
		d.n.log.Warn("refusing member", "member", peer.Name, "address", peer.Address(), "reason", err)
	}
	return err
}

// declaredDead reports whether memberlist declared member id dead (and it
// has not come back merged since).
func (d *delegates) declaredDead(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.dead[id]
	return ok
}

// forgetDead forgets the members declared dead: this member is merging
// into another cluster, whose members it may have declared dead.
func (d *delegates) forgetDead() {
	d.mu.Lock()
	clear(d.dead)
	for k := range d.refused {
		if strings.HasPrefix(k, "dead:") {
			delete(d.refused, k)
		}
	}
	d.mu.Unlock()
}

func (d *delegates) NotifyAlive(peer *memberlist.Node) error { return d.check(peer) }

func (d *delegates) NotifyMerge(peers []*memberlist.Node) error {
	for _, p := range peers {
		if err := d.check(p); err != nil {
			return err
		}
	}
	return nil
}

// takeBack forgets that member id was declared dead, unless it came back
// meanwhile; it reports whether it was still refused.
func (d *delegates) takeBack(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.refused["dead:"+id] && !d.refused["gone:"+id] {
		return false
	}
	delete(d.dead, id)
	delete(d.gone, id)
	delete(d.refused, "dead:"+id)
	delete(d.refused, "gone:"+id)
	return true
}

// goneReason ends the refusal of an alive message about a member declared
// dead by its refused port (confirmDead).
const goneReason = "was declared dead: its port refuses connections"

// confirmDead declares member id dead ahead of memberlist (its port
// refuses connections: see Node.portRefused): the member list leaves it
// out, and it is refused if it comes back with the same start time, as
// one memberlist declared dead. It reports whether it declared id dead
// now: false when memberlist no longer lists it, it is declared already,
// or undoGone found it running before.
func (d *delegates) confirmDead(id string) bool {
	d.mu.Lock()
	meta, ok := d.alive[id]
	ok = ok && !d.gone[id] && !d.disputed[id]
	if ok {
		d.gone[id] = true
		if m, err := decodeMeta(meta); err == nil {
			d.dead[id] = m.started
		}
	}
	d.mu.Unlock()
	if ok {
		d.n.memberEvent()
	}
	return ok
}

// undoGone takes back confirmDead's declaration of member id while
// memberlist still lists it, long after it would have declared a dead
// member dead: the member runs, and something refuses connections to its
// port (a firewall rule that rejects rather than drops). Its port's
// refusals count for nothing from then on. It reports whether id was
// still declared dead that way.
func (d *delegates) undoGone(id string) bool {
	d.mu.Lock()
	_, listed := d.alive[id]
	undo := listed && d.gone[id]
	if undo {
		delete(d.gone, id)
		delete(d.dead, id)
		delete(d.refused, "gone:"+id)
		d.disputed[id] = true
	}
	d.mu.Unlock()
	if undo {
		d.n.memberEvent()
	}
	return undo
}

// refusalsCount reports whether member id's refused port may declare it
// dead (undoGone has not found it running).
func (d *delegates) refusalsCount(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.disputed[id]
}

// forgetMembers forgets every member and every death: the memberlist
// instance is replaced by one that knows nothing yet (a merge).
func (d *delegates) forgetMembers() {
	d.mu.Lock()
	clear(d.alive)
	clear(d.gone)
	clear(d.disputed)
	clear(d.cleared)
	d.mu.Unlock()
	d.forgetDead()
}

// instanceEvents are one memberlist instance's event callbacks: once a
// merge replaced the instance (retired), its late events are ignored.
// memberlist calls them with its node lock held (memberlist v0.7.0,
// state.go: aliveNode, deadNode), in the order of its changes: they copy
// what the member list needs.
type instanceEvents struct {
	*delegates
	retired atomic.Bool
}

func (e *instanceEvents) NotifyJoin(node *memberlist.Node)   { e.set(node, true) }
func (e *instanceEvents) NotifyLeave(node *memberlist.Node)  { e.set(node, false) }
func (e *instanceEvents) NotifyUpdate(node *memberlist.Node) { e.set(node, true) }

func (e *instanceEvents) set(node *memberlist.Node, alive bool) {
	if !e.retired.Load() {
		e.delegates.set(node, alive)
	}
}

func (d *delegates) set(node *memberlist.Node, alive bool) {
	d.mu.Lock()
	if alive {
		d.alive[node.Name] = bytes.Clone(node.Meta)
		if _, dead := d.dead[node.Name]; !dead {
			delete(d.gone, node.Name) // came back merged (a new start time)
		}
	} else {
		delete(d.alive, node.Name)
		delete(d.gone, node.Name)
		delete(d.cleared, node.Name)
		delete(d.refused, "gone:"+node.Name)
		// Dead or left alike (memberlist's Node.State does not say which
		// here): a member that left never comes back under its name with
		// the same start time, so only one declared dead can.
		if m, err := decodeMeta(node.Meta); err == nil && node.Name != d.n.view.id {
			d.dead[node.Name] = m.started
		}
	}
	d.mu.Unlock()
	d.n.memberEvent()
}

// members returns the member list from the copies the callbacks made,
// oldest first (the list held, while holdView holds it).
//
// It leaves out a member that gossips that it dropped its table and data
// to merge (memberMeta.dropped) while this member's table gives it
// replicas, unless this member merges too: such a member merged as a
// cluster of one while this cluster listed it all along (it declared the
// others dead after a freeze, before it read their refutations), so the
// replicas the table gives it are gone, with their data on the backups
// or in its merge data. Taken for gone, its backups are promoted and it
// leaves the table; then it is listed again, a fresh member, and takes
// its first table (which makes it owner of nothing, tables.install).
func (d *delegates) members(cluster string) []spi.Member {
	merging := d.n.sb.merging()
	t := d.n.view.table.Load()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.holding {
		return slices.Clone(d.held)
	}
	return memberList(d.alive, d.gone, cluster, d.droppedHere(t, merging))
}

// droppedItsData reports whether member id, which memberlist lists,
// gossips that it dropped its table and data to merge.
func (d *delegates) droppedItsData(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := decodeMeta(d.alive[id])
	return err == nil && d.alive[id] != nil && m.dropped
}

// droppedHere returns the filter of members for members (under mu): a
// member that dropped its data to merge is left out while t names it,
// until t no longer does once (cleared).
func (d *delegates) droppedHere(t *partition.Table, merging bool) func(string, memberMeta) bool {
	if merging || t == nil {
		return nil
	}
	self := d.n.view.id
	return func(name string, m memberMeta) bool {
		if !m.dropped || name == self || d.cleared[name] == m.started {
			return false
		}
		if !tableNames(t, name) {
			d.cleared[name] = m.started // taken for gone here: listed from now on
			return false
		}
		return true
	}
}

// tableNames reports whether table t gives member id a replica (owner,
// backup or incoming backup) of some partition.
func tableNames(t *partition.Table, id string) bool {
	if slices.Contains(t.Owners, id) {
		return true
	}
	for p := range t.Owners {
		if (t.Backups != nil && slices.Contains(t.Backups[p], id)) || (t.Incoming != nil && slices.Contains(t.Incoming[p], id)) {
			return true
		}
	}
	return false
}

// holdView keeps the member list as it is now until releaseView: a merge
// replaces the memberlist instance, and the new one knows only this
// member until its join brought the larger cluster's members. The larger
// cluster may list this member all along (its old instance, which
// gossiped the new start time, was taken back there), and its master may
// have begun migrations to it: had the member seen every other member
// leave and itself master for that moment, it would fail its calls to
// them and roll back the migrations it received, which the master then
// commits (a primary without its data, never in sync with its backups).
func (d *delegates) holdView(cluster string) {
	d.mu.Lock()
	d.held, d.holding = memberList(d.alive, d.gone, cluster, nil), true
	d.mu.Unlock()
}

// releaseView ends holdView: the member list is memberlist's again.
func (d *delegates) releaseView() {
	d.mu.Lock()
	d.held, d.holding = nil, false
	d.mu.Unlock()
	d.n.memberEvent()
}

// memberList builds the member list from the members' meta by name,
// oldest first, leaving out those in skip.
func memberList(metas map[string][]byte, skip map[string]bool, cluster string, drop func(string, memberMeta) bool) []spi.Member {
	out := make([]spi.Member, 0, len(metas))
	for name, meta := range metas {
		if skip[name] {
			continue
		}
		m, err := decodeMeta(meta)
		if err != nil || m.cluster != cluster || m.protocol != operation.ProtocolVersion || (drop != nil && drop(name, m)) {
			continue
		}
		out = append(out, spi.Member{ID: name, Address: m.address, Started: time.Unix(0, m.started)})
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Started.Equal(out[j].Started) {
			return out[i].Started.Before(out[j].Started)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records at the matching level. A line about input memberlist could
// not decode goes to bad instead (when set), which counts it and
// rate-limits such lines per remote address: garbage sent to the port
// must not flood the log.
type logWriter struct {
	log     *slog.Logger
	stopped *atomic.Bool
	bad     func(remote, line string)
}

// badInputMarkers are the (lower-case) marks of memberlist's lines about
// undecodable input, from a packet or a stream.
var badInputMarkers = []string{"failed to decode", "invalid msgtype", "not supported", "label header", "unacceptable label",
	"decrypt packet failed", "invalid checksum", "missing message type", "truncated messages", "failed to decompress",
	"failed to receive", "failed to read remote state", "ping for unexpected node", "remote node state size"}

// badInput returns the remote address of a line about undecodable input
// ("" when the line does not name it), and whether it is one.
func badInput(line string) (remote string, ok bool) {
	low := strings.ToLower(line)
	if !slices.ContainsFunc(badInputMarkers, func(m string) bool { return strings.Contains(low, m) }) {
		return "", false
	}
	if i := strings.LastIndex(line, "from="); i >= 0 {
		remote, _, _ = strings.Cut(line[i+len("from="):], " ")
	}
	return remote, true
}

func (w logWriter) Write(p []byte) (int, error) {
	if w.stopped.Load() {
		// memberlist's goroutines may still be finishing after its
		// Shutdown returned; the member is gone, so are its logs.
		return len(p), nil
	}
	line := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if i := strings.Index(line, prefix); i >= 0 {
			level = l
			line = strings.TrimSpace(line[i+len(prefix):])
			break
		}
	}
	if level >= slog.LevelWarn && w.bad != nil {
		if remote, ok := badInput(line); ok {
			w.bad(remote, line)
			return len(p), nil
		}
	}
	// memberlist reports ordinary churn (a peer going away) as errors;
	// keep them visible but below error level.
	if level == slog.LevelError {
		level = slog.LevelWarn
	}
	if strings.Contains(line, goneReason) {
		level = slog.LevelDebug // gossip about a member gone (delegates.check)
	}
	w.log.Log(nil, level, line, "component", "memberlist")
	return len(p), nil
}
