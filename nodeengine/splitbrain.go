package nodeengine

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
)

// Split-brain healing. When two clusters of one name meet (a network split
// healed, or two clusters started apart, or multicast brought them
// together), the smaller merges into the larger, whose members keep
// serving throughout:
//
//  1. Detection. Every split-brain.probe-interval (first after
//     first-probe-delay), the master probes the join members, the members
//     heard by multicast and the members it saw leave lately
//     (remember-dead) that are not in its member list: a connection with
//     the 'S' selector asks who is there (clusterInfo). A member of this
//     cluster name, protocol and partition count whose master differs is
//     another cluster of this name.
//  2. Who merges. The cluster with fewer members merges into the one with
//     more; on a tie, the one whose master's address sorts after the
//     other's: both sides decide alike. A master that finds a smaller
//     cluster asks that cluster's master to merge (probeMerge), which
//     checks for itself before it does.
//  3. The merge, driven by the merging side's master in two phases on
//     each of its members (mergeOp, then mergeOp with Join set), so that
//     no member joins the larger cluster while another still holds data
//     or still looks older than the larger cluster's master:
//     prepare (prepareMerge): lifecycle MERGING (warn with both sides'
//     sizes); every partition refuses operations (callers retry, and
//     later reach the larger cluster); each SplitBrainHandlerService's
//     PrepareMerge runs for every partition this member owns; every
//     ManagedService is Reset; the partition table and replicas are
//     dropped (and no table of the cluster left behind is taken
//     meanwhile); the member gossips a new start time, so that it is
//     younger than every member of the larger cluster (whose oldest stays
//     master).
//     join (joinMerge, merge.go): a new memberlist instance, which knows
//     only this member, joins the larger cluster (the old one's view of
//     the cluster left behind, its deaths above all, must not reach it;
//     the member list is held as it was until the join is done, see
//     holdView); once its master's table has arrived, the collected merge
//     operations are invoked on their partitions through the normal path
//     (owner, backups, exactly once). The join is retried until it
//     succeeds, and merge operations their partition refused are sent
//     again, for as long as the member runs: the collected data is the
//     merging side's acknowledged writes, and Reset has dropped every
//     other copy of it. Lifecycle MERGED, or MERGE_FAILED with the reason
//     when some of it could not be delivered (merge.go says when).
//     A member prepared for a merge whose join does not come within
//     mergeJoinWait (its master died) joins by itself.

// selectSplitBrain is the member port's selector of a split-brain probe.
const selectSplitBrain byte = 'S'

const (
	probeInfo   byte = 1 // who is there? (the argument: the asker's member ID)
	probeMerge  byte = 2 // merge into the cluster at the given address (the receiver checks first)
	probeRejoin byte = 3 // your cluster declared you dead: rejoin it at the given address (the receiver checks first)

	probeTimeout  = 2 * time.Second
	mergeJoinWait = 30 * time.Second
	// mergeTableWait bounds the wait for the larger cluster's table after
	// the join.
	mergeTableWait = 2 * time.Minute
	maxProbeReply  = 4096
)

// clusterInfo is what a member says of its cluster to a probe.
type clusterInfo struct {
	Cluster    string
	Protocol   uint8
	Partitions int
	Member     string // the answering member's ID
	Master     string // its master's address
	MasterID   string
	Size       int  // members in its list
	Merging    bool // it is merging into another cluster
	Knows      bool // the asker is in its member list
}

func (ci clusterInfo) encode() []byte {
	w := spi.NewWriter(nil)
	w.WriteString(ci.Cluster)
	w.WriteUint8(ci.Protocol)
	w.WriteUvarint(uint64(ci.Partitions))
	w.WriteString(ci.Member)
	w.WriteString(ci.Master)
	w.WriteString(ci.MasterID)
	w.WriteUvarint(uint64(ci.Size))
	w.WriteBool(ci.Merging)
	w.WriteBool(ci.Knows)
	return w.Bytes()
}

func decodeClusterInfo(b []byte) (clusterInfo, error) {
	r := spi.NewReader(b)
	ci := clusterInfo{Cluster: r.ReadString(), Protocol: r.ReadUint8(), Partitions: int(r.ReadUvarint()),
		Member: r.ReadString(), Master: r.ReadString(), MasterID: r.ReadString(), Size: int(r.ReadUvarint()), Merging: r.ReadBool(), Knows: r.ReadBool()}
	if err := r.Err(); err != nil {
		return ci, fmt.Errorf("bad split-brain probe answer: %w", err)
	}
	return ci, nil
}

// localClusterInfo is this member's answer to a probe.
func (n *Node) localClusterInfo() clusterInfo {
	ms := n.view.memberList()
	ci := clusterInfo{Cluster: n.cfg.Cluster.Name, Protocol: operation.ProtocolVersion, Partitions: n.view.count,
		Member: n.view.id, Size: len(ms), Merging: n.sb.merging()}
	if len(ms) > 0 {
		ci.Master, ci.MasterID = ms[0].Address, ms[0].ID
	}
	return ci
}

// serveProbe answers one split-brain probe on a connection that sent the
// 'S' selector, then closes it. A merge request is acted on (checked
// first) on a goroutine of its own.
func (n *Node) serveProbe(c net.Conn) {
	defer c.Close()
	if n.state.Load() != stateRunning {
		return // starting, or leaving: no cluster to speak for
	}
	c.SetDeadline(time.Now().Add(probeTimeout))
	var hdr [3]byte // kind, then the target's length (uint16)
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	target := make([]byte, binary.LittleEndian.Uint16(hdr[1:]))
	if len(target) > 256 {
		return
	}
	if _, err := io.ReadFull(c, target); err != nil {
		return
	}
	info := n.localClusterInfo()
	if hdr[0] == probeInfo && len(target) > 0 {
		info.Knows = n.view.hasMember(string(target))
	}
	reply := info.encode()
	c.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(reply))))
	c.Write(reply)
	switch {
	case len(target) == 0:
	case hdr[0] == probeMerge:
		n.run.spawn(func() { n.mergeRequested(string(target)) })
	case hdr[0] == probeRejoin:
		n.run.spawn(func() { n.rejoinRequested(string(target)) })
	}
}

// probe asks the member at addr who is there (and, for probeMerge, to
// merge into the cluster at target), dialling as the member's port does
// (a test's network filter applies).
func (n *Node) probe(ctx context.Context, addr string, kind byte, target string) (clusterInfo, error) {
	return probeCluster(ctx, n.tr.dial, addr, kind, target)
}

// probeCluster is probe with the dialler given.
func probeCluster(ctx context.Context, dial func(context.Context, string, time.Duration, byte) (net.Conn, error),
	addr string, kind byte, target string) (clusterInfo, error) {
	c, err := dial(ctx, addr, probeTimeout, selectSplitBrain)
	if err != nil {
		return clusterInfo{}, err
	}
	defer c.Close()
	dl := time.Now().Add(probeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	c.SetDeadline(dl)
	req := binary.LittleEndian.AppendUint16([]byte{kind}, uint16(len(target)))
	if _, err := c.Write(append(req, target...)); err != nil {
		return clusterInfo{}, err
	}
	var lb [4]byte
	if _, err := io.ReadFull(c, lb[:]); err != nil {
		return clusterInfo{}, fmt.Errorf("split-brain probe of %s: %w", addr, err)
	}
	k := binary.LittleEndian.Uint32(lb[:])
	if k > maxProbeReply {
		return clusterInfo{}, fmt.Errorf("%w: split-brain probe answer of %d bytes from %s", spi.ErrProtocol, k, addr)
	}
	body := make([]byte, k)
	if _, err := io.ReadFull(c, body); err != nil {
		return clusterInfo{}, fmt.Errorf("split-brain probe of %s: %w", addr, err)
	}
	return decodeClusterInfo(body)
}

// splitBrain holds this member's split-brain state: the places to look
// for other clusters and its part in a merge.
type splitBrain struct {
	mu         sync.Mutex
	discovered map[string]bool      // addresses heard by multicast
	departed   map[string]time.Time // addresses of members that left, when
	refused    map[string]bool      // addresses already warned about (cannot merge)
	m          mergeRun             // this member's merge (state mergeIdle: none)
	leading    atomic.Bool          // this master drives a merge of its cluster
	wake       chan struct{}        // a new address was heard: look now
}

// mergeRun is this member's part in a merge, from its prepare to its end.
type mergeRun struct {
	state    int                // mergeIdle, mergePrepared, mergeJoining, mergeReplaying
	since    time.Time          // when state began
	target   string             // the larger cluster's address
	leaving  map[string]bool    // addresses of the cluster it leaves: its member list at the prepare
	data     []mergeBatch       // collected by prepare, carried over by join
	ready    bool               // prepare is over: data is all there (joinMerge waits for it)
	cancel   context.CancelFunc // the prepared member's own join timer
	attempts int                // join attempts so far
	lastErr  string             // why the last join attempt failed
	held     int                // merge batches not delivered yet
	replays  int                // batches sent again after their partition refused them
}

const (
	mergeIdle      = iota
	mergePrepared  // MERGING: data collected, services Reset, waiting for the word to join
	mergeJoining   // joining the larger cluster, until its table arrived
	mergeReplaying // sending the merge data to its new owners
)

// mergeStateNames are the merge states as /debug/cluster shows them.
var mergeStateNames = [...]string{mergeIdle: "idle", mergePrepared: "merging", mergeJoining: "joining", mergeReplaying: "replaying"}

func newSplitBrain() *splitBrain {
	return &splitBrain{discovered: map[string]bool{}, departed: map[string]time.Time{}, refused: map[string]bool{},
		wake: make(chan struct{}, 1)}
}

// merging reports whether this member takes part in a merge of its
// cluster into another: it leads one, or prepares, joins or replays. It
// makes no partition table and plans no migration meanwhile, even while
// it is the oldest member it sees (masterEngine.IsMaster).
func (sb *splitBrain) merging() bool {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.m.state != mergeIdle || sb.leading.Load()
}

// leavingFrom reports whether addr is a member of the cluster this member
// is leaving by a merge: a partition table it pushes is not taken (the
// member would carry its data into the cluster it leaves, and answer the
// larger cluster's master with that cluster's table).
func (sb *splitBrain) leavingFrom(addr string) bool {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.m.state != mergeIdle && sb.m.leaving[addr]
}

// setState moves this member's merge to state. Called under mu.
func (sb *splitBrain) setState(state int) {
	sb.m.state, sb.m.since = state, time.Now()
}

// closedToNewMembers reports whether a member that memberlist does not
// know yet must be refused: this member's cluster is preparing a merge
// into another (one that joined now would be neither prepared nor
// younger than the larger cluster's master). While it joins the larger
// cluster, that cluster's members are welcome.
func (sb *splitBrain) closedToNewMembers() bool {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.m.state == mergePrepared || sb.leading.Load() && sb.m.state == mergeIdle
}

// heard records an address heard by multicast; a new one is looked at
// at once.
func (sb *splitBrain) heard(addr string) {
	sb.mu.Lock()
	known := sb.discovered[addr]
	sb.discovered[addr] = true
	sb.mu.Unlock()
	if !known {
		select {
		case sb.wake <- struct{}{}:
		default:
		}
	}
}

// left records the address of a member that left the member list, and
// looks at it soon (a member declared dead that still runs is asked to
// rejoin within a few seconds, not a probe interval).
func (sb *splitBrain) left(addr string) {
	sb.mu.Lock()
	sb.departed[addr] = time.Now()
	sb.mu.Unlock()
	time.AfterFunc(departedLookDelay, func() {
		select {
		case sb.wake <- struct{}{}:
		default:
		}
	})
}

// departedLookDelay is how long after a member left the master looks at
// its address.
const departedLookDelay = 2 * time.Second

// candidates returns the addresses to probe: the join members, those heard
// by multicast and those that left within remember, except members'.
func (n *Node) mergeCandidates() []string {
	seen := map[string]bool{n.address: true}
	for _, m := range n.view.memberList() {
		seen[m.Address] = true
	}
	var out []string
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, a := range n.cfg.Network.Join.Members {
		add(a)
	}
	sb := n.sb
	sb.mu.Lock()
	defer sb.mu.Unlock()
	for a := range sb.discovered {
		add(a)
	}
	for a, at := range sb.departed {
		if time.Since(at) > n.cfg.SplitBrain.RememberDead {
			delete(sb.departed, a)
			continue
		}
		add(a)
	}
	return out
}

// splitBrainLoop looks for other clusters of this name while this member
// is the master, until the node stops.
func (n *Node) splitBrainLoop() {
	t := time.NewTimer(n.cfg.SplitBrain.FirstProbeDelay)
	defer t.Stop()
	for {
		select {
		case <-n.run.stop():
			return
		case <-t.C:
			t.Reset(n.cfg.SplitBrain.ProbeInterval)
		case <-n.sb.wake:
		}
		if n.view.isMaster() && !n.sb.merging() {
			n.lookForOtherClusters()
		}
	}
}

// lookForOtherClusters probes the candidates once; on finding a larger
// cluster of this name it merges this one into it, on finding a smaller
// one it asks that one to merge. Each probe is counted by what it found
// (partita_split_brain_probes_total{found}).
func (n *Node) lookForOtherClusters() {
	mine := n.localClusterInfo()
	for _, addr := range n.mergeCandidates() {
		ctx, cancel := context.WithTimeout(n.run.ctx, probeTimeout)
		other, err := n.probe(ctx, addr, probeInfo, n.view.id)
		cancel()
		if err != nil {
			n.log.Debug("split-brain probe: no answer", "address", addr, "error", err)
			n.metrics.probes.WithLabelValues("none").Inc()
			continue
		}
		if other.Cluster == mine.Cluster && other.Knows && other.Member != "" && !n.view.hasMember(other.Member) && n.del.declaredDead(other.Member) {
			// It takes itself for one of ours; we declared it dead (and
			// refuse it): it rejoins, as a merge of one.
			n.metrics.probes.WithLabelValues("declared_dead").Inc()
			n.log.Warn("a member this cluster declared dead still takes itself for one of its members; asking it to rejoin",
				"member", other.Member, "address", addr)
			ctx, cancel = context.WithTimeout(n.run.ctx, probeTimeout)
			n.probe(ctx, addr, probeRejoin, mine.Master)
			cancel()
			continue
		}
		if !n.mergeable(mine, other, addr) {
			found := "unsettled" // ours seen through member lists that differ, not settled, or merging
			switch {
			case other.Cluster != mine.Cluster:
				found = "other_name"
			case other.Protocol != mine.Protocol || other.Partitions != mine.Partitions:
				found = "incompatible"
			}
			n.metrics.probes.WithLabelValues(found).Inc()
			continue
		}
		if shouldMerge(mine, other) {
			n.metrics.probes.WithLabelValues("larger").Inc()
			n.mergeCluster(other, mine)
			return
		}
		n.metrics.probes.WithLabelValues("smaller").Inc()
		n.log.Warn("found a smaller cluster of this name; asking it to merge into this one",
			"other_master", other.Master, "other_members", other.Size, "members", mine.Size)
		ctx, cancel = context.WithTimeout(n.run.ctx, probeTimeout)
		if _, err := n.probe(ctx, other.Master, probeMerge, mine.Master); err != nil {
			n.log.Warn("cannot ask the smaller cluster to merge", "other_master", other.Master, "error", err)
		}
		cancel()
	}
}

// mergeable reports whether other, found at addr, is another cluster of
// this name that the two could merge.
func (n *Node) mergeable(mine, other clusterInfo, addr string) bool {
	switch {
	case other.Cluster != mine.Cluster:
		n.log.Debug("split-brain probe: a member of another cluster", "address", addr, "cluster", other.Cluster)
		return false
	case other.Protocol != mine.Protocol || other.Partitions != mine.Partitions:
		n.sb.mu.Lock()
		warned := n.sb.refused[addr]
		n.sb.refused[addr] = true
		n.sb.mu.Unlock()
		if !warned {
			n.log.Warn("found another cluster of this name that cannot merge with this one",
				"address", addr, "protocol", other.Protocol, "partitions", other.Partitions,
				"our_protocol", mine.Protocol, "our_partitions", mine.Partitions)
		}
		return false
	case other.MasterID == "" || mine.MasterID == "" || other.MasterID == mine.MasterID || other.Merging || other.Knows,
		n.view.hasMember(other.Member), n.view.hasMember(other.MasterID):
		return false // not settled, ours (member lists that differ for a moment), or busy
	}
	return true
}

// shouldMerge reports whether this cluster (mine) merges into other:
// fewer members, or as many and a master address that sorts after.
func shouldMerge(mine, other clusterInfo) bool {
	if mine.Size != other.Size {
		return mine.Size < other.Size
	}
	return mine.Master > other.Master
}

// mergeRequested acts on another cluster's request that this one merge
// into the cluster at target: the master checks for itself first.
func (n *Node) mergeRequested(target string) {
	if !n.view.isMaster() || n.sb.merging() {
		return
	}
	ctx, cancel := context.WithTimeout(n.run.ctx, probeTimeout)
	other, err := n.probe(ctx, target, probeInfo, n.view.id)
	cancel()
	mine := n.localClusterInfo()
	if err != nil || !n.mergeable(mine, other, target) || !shouldMerge(mine, other) {
		return
	}
	n.mergeCluster(other, mine)
}

// rejoinRequested acts on a cluster's word that it declared this member
// dead: once the member at target confirms it (it is in this member's
// list, and does not list this member), this member merges into its
// cluster alone, as a cluster of one.
func (n *Node) rejoinRequested(target string) {
	if n.sb.merging() {
		return
	}
	ctx, cancel := context.WithTimeout(n.run.ctx, probeTimeout)
	other, err := n.probe(ctx, target, probeInfo, n.view.id)
	cancel()
	mine := n.localClusterInfo()
	if err != nil || other.Knows || other.Cluster != mine.Cluster || other.Protocol != mine.Protocol ||
		other.Partitions != mine.Partitions || other.Merging || !n.view.hasMember(other.Member) {
		return
	}
	n.log.Warn("this member's cluster declared it dead: it rejoins as a merge of one", "master", other.Master, "members", other.Size)
	n.prepareMerge(other.Master, 1, other.Size, true)
	n.joinMerge()
}

// reconsiderDead looks again at a member this one declared dead and
// refused when it came back (id at addr). The refusal keeps a member that
// formed or followed another cluster out; but a suspicion can also reach
// some members before the suspect's refutation and others after it, and
// then only some declare it dead. When this member's master still lists
// it and it still follows that master, it never left the cluster: this
// member takes it back (and pushes state with it, so that memberlist has
// its refutation at once) rather than refuse it for good while the rest
// of the cluster routes to it. A master never takes a member back this
// way: a member the master declared dead rejoins as a merge of one
// (rejoinRequested).
func (n *Node) reconsiderDead(id, addr string) {
	for _, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		select {
		case <-n.run.stop():
			return
		case <-time.After(wait):
		}
		if n.view.hasMember(id) || !n.del.declaredDead(id) {
			return
		}
		ms := n.view.memberList()
		if len(ms) == 0 || ms[0].ID == n.view.id || n.sb.merging() {
			continue
		}
		master := ms[0]
		ctx, cancel := context.WithTimeout(n.run.ctx, probeTimeout)
		byMaster, err := n.probe(ctx, master.Address, probeInfo, id) // Knows: the master lists id
		var theirs clusterInfo
		if err == nil {
			theirs, err = n.probe(ctx, addr, probeInfo, n.view.id)
		}
		cancel()
		if err != nil || !byMaster.Knows || byMaster.MasterID != master.ID || theirs.MasterID != master.ID ||
			theirs.Member != id || theirs.Merging {
			continue
		}
		if !n.del.takeBack(id) {
			return
		}
		n.log.Warn("taking back a member declared dead here: the master still lists it and it follows the master",
			"member", id, "address", addr, "master", master.Address)
		if err := n.withMemberlist(func() error { _, err := n.ml.Join([]string{addr}); return err }); err != nil {
			n.log.Warn("cannot reach the member taken back", "member", id, "address", addr, "error", err)
		}
		return
	}
}

// mergeCluster merges this cluster into other: the master prepares every
// member (itself last), waits until all gossip their new start time, then
// has every member join.
func (n *Node) mergeCluster(other, mine clusterInfo) {
	if !n.sb.leading.CompareAndSwap(false, true) {
		return // a merge of this cluster is under way
	}
	defer n.sb.leading.Store(false)
	n.log.Warn("found a larger cluster of this name: this cluster merges into it",
		"members", mine.Size, "other_members", other.Size, "other_master", other.Master, "master", mine.Master)
	ms := n.view.memberList()
	begun := time.Now()
	for _, m := range ms {
		if m.ID == n.view.id {
			continue
		}
		ctx, cancel := context.WithTimeout(n.run.ctx, n.cfg.Operations.InvocationTimeout)
		_, err := n.ops.InvokeOnMember(ctx, engineService, &mergeOp{Target: other.Master, Mine: mine.Size, Theirs: other.Size}, m.ID)
		cancel()
		if err != nil {
			n.log.Warn("a member did not prepare for the merge; it joins by itself later", "member", m.Address, "error", err)
		}
	}
	n.prepareMerge(other.Master, mine.Size, other.Size, false)
	// Every member's new start time must be known before any joins: one
	// member's join hands its whole member list to the larger cluster.
	ctx, cancel := context.WithTimeout(n.run.ctx, 5*time.Second)
	for ctx.Err() == nil && !n.allStartedSince(begun) {
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	for _, m := range ms {
		if m.ID == n.view.id {
			continue
		}
		ctx, cancel := context.WithTimeout(n.run.ctx, n.cfg.Operations.InvocationTimeout)
		_, err := n.ops.InvokeOnMember(ctx, engineService, &mergeOp{Target: other.Master, Join: true}, m.ID)
		cancel()
		if err != nil {
			n.log.Warn("a member was not told to join; it joins by itself later", "member", m.Address, "error", err)
		}
	}
	n.run.spawn(n.joinMerge)
}

// holdsTableAgain has this member, which dropped its table to merge,
// gossip that it holds one again (tables.fresh: the first table it took
// since), so that the members whose table names it list it again
// (delegates.members).
func (n *Node) holdsTableAgain() {
	n.del.setDropped(false)
	n.run.spawn(func() {
		if err := n.withMemberlist(func() error { return n.ml.UpdateNode(time.Second) }); err != nil {
			n.log.Warn("cannot gossip that this member holds a partition table again", "error", err)
		}
	})
}

// allStartedSince reports whether every member this one sees gossips a
// start time of t or later (with members' clocks apart, it may never: the
// wait for it is bounded).
func (n *Node) allStartedSince(t time.Time) bool {
	for _, m := range n.del.members(n.cfg.Cluster.Name) {
		if m.Started.Before(t) {
			return false
		}
	}
	return true
}

// prepareMerge is the first phase of a merge on this member (see the top
// of this file). The members it lists are the cluster it leaves, whose
// tables it takes no more (splitBrain.leavingFrom) — unless it rejoins,
// as a merge of one, the cluster that declared it dead: those it lists
// are then the cluster it joins.
func (n *Node) prepareMerge(target string, mine, theirs int, rejoin bool) {
	sb := n.sb
	leaving := map[string]bool{}
	for _, m := range n.view.memberList() {
		if m.ID != n.view.id && !rejoin {
			leaving[m.Address] = true
		}
	}
	sb.mu.Lock()
	if sb.m.state != mergeIdle || n.state.Load() != stateRunning {
		sb.mu.Unlock()
		return
	}
	sb.m = mergeRun{target: target, leaving: leaving}
	sb.setState(mergePrepared)
	sb.mu.Unlock()
	n.log.Warn("merging into a larger cluster of this name: this member gives up its data and joins it",
		"members", mine, "other_members", theirs, "target", target)
	n.lifecycle(spi.LifecycleEvent{State: spi.Merging})
	n.del.forgetDead() // the cluster it joins may be the one it saw die
	for p := range n.view.count {
		n.ops.SetMigrating(p, true) // callers retry, and later reach the larger cluster
	}
	data := n.collectMergeData()
	sum := summarize(data)
	n.log.Warn("merge data collected", "batches", sum.batches, "partitions", sum.partitions,
		"operations", sum.operations, "services", sum.services)
	var reset []string
	n.whileExecutorsWait(func() {
		for _, sc := range n.order {
			if ms, ok := n.services[sc.Name].(spi.ManagedService); ok {
				ms.Reset()
				reset = append(reset, sc.Name)
			}
		}
		// Migrations in flight here belong to the cluster left behind.
		for p := range n.view.count {
			if n.migs.at(p) != nil {
				n.migs.set(p, nil)
			}
		}
		n.tables.drop()
		// The replicas' state is the executors' (ResetReplica runs as
		// partition p's executor would).
		for p := range n.view.count {
			n.ops.ResetReplica(p)
			n.ops.SetMigrating(p, false) // no table: operations are refused as not ready
		}
	})
	n.log.Warn("services reset for the merge; partition table and replicas dropped", "services", reset)
	now := time.Now()
	n.del.setStarted(now)
	n.del.setDropped(true) // until its first table in the larger cluster (holdsTableAgain)
	if err := n.withMemberlist(func() error { return n.ml.UpdateNode(time.Second) }); err != nil {
		n.log.Warn("cannot gossip the new start time", "error", err)
	}
	ctx, cancel := context.WithCancel(n.run.ctx)
	sb.mu.Lock()
	sb.m.data, sb.m.held, sb.m.cancel, sb.m.ready = data, len(data), cancel, true
	sb.mu.Unlock()
	// Join by itself if the master's word does not come.
	n.run.spawn(func() {
		select {
		case <-ctx.Done():
		case <-time.After(mergeJoinWait):
			n.joinMerge()
		}
	})
}

// whileExecutorsWait runs f while every partition executor waits in a
// task of its own: no operation and no engine task runs meanwhile, so f
// may touch what the executors own (a service's Reset).
func (n *Node) whileExecutorsWait(f func()) {
	threads := min(n.ops.PartitionThreads(), n.view.count)
	release := make(chan struct{})
	var entered sync.WaitGroup
	for i := range threads {
		entered.Add(1)
		if err := n.ops.RunOnPartition(i, func() { entered.Done(); <-release }); err != nil {
			entered.Done()
		}
	}
	entered.Wait()
	f()
	close(release)
}

// collectMergeData runs every SplitBrainHandlerService's PrepareMerge for
// each partition this member owns, as the partition's executor.
func (n *Node) collectMergeData() []mergeBatch {
	t := n.view.table.Load()
	if t == nil {
		return nil
	}
	var mu sync.Mutex
	var out []mergeBatch
	var wg sync.WaitGroup
	for p := range n.view.count {
		if t.Owner(p) != n.view.id {
			continue
		}
		wg.Add(1)
		err := n.ops.RunOnPartition(p, func() {
			defer wg.Done()
			for _, sc := range n.order {
				h, ok := n.services[sc.Name].(spi.SplitBrainHandlerService)
				if !ok {
					continue
				}
				if ops := h.PrepareMerge(p); len(ops) > 0 {
					mu.Lock()
					out = append(out, mergeBatch{service: sc.Name, partition: p, ops: ops})
					mu.Unlock()
				}
			}
		})
		if err != nil {
			wg.Done()
			n.log.Warn("cannot collect a partition's merge data", "partition", p, "error", err)
		}
	}
	wg.Wait()
	return out
}

// mergeOp is the merging side's master telling a member to prepare for a
// merge into the cluster at Target, or (Join) to join it.
type mergeOp struct {
	Target       string
	Mine, Theirs int
	Join         bool
}

func (op *mergeOp) MessageKind() string { return "splitbrain.merge" }
func (op *mergeOp) Run(ctx *spi.OpContext) error {
	n := ctx.Service.(*Node)
	if op.Join {
		n.run.spawn(n.joinMerge)
		return nil
	}
	n.prepareMerge(op.Target, op.Mine, op.Theirs, false)
	return nil
}
func (op *mergeOp) WriteData(w *spi.Writer) {
	w.WriteString(op.Target)
	w.WriteUvarint(uint64(op.Mine))
	w.WriteUvarint(uint64(op.Theirs))
	w.WriteBool(op.Join)
}
func (op *mergeOp) ReadData(r *spi.Reader) error {
	op.Target, op.Mine, op.Theirs, op.Join = r.ReadString(), int(r.ReadUvarint()), int(r.ReadUvarint()), r.ReadBool()
	return r.Err()
}
