package partition

import (
	"fmt"
	"slices"
	"sort"

	"github.com/partita-go/partita/spi"
)

// Table is one version of the partition table. A Table is immutable once
// published: readers share it without locks, and a change makes a new Table
// with a higher Version.
type Table struct {
	// Term is the master's term that made the table: a member that takes
	// over as master starts a term above that of the newest table it
	// holds, and makes every table of its own in it. Tables are ordered
	// by term, then version (Newer), so a table of a master that others
	// replaced (declared dead while frozen, and running again) is older
	// than any of its successor's, whatever its version.
	Term uint64
	// Version increases with every change; members accept only newer ones.
	Version int64
	// Owners[p] is the ID of the member owning partition p, its primary
	// replica ("" for none).
	Owners []string
	// Backups[p][i] is the ID of the member holding backup replica i+1 of
	// partition p ("" for none). Nil when the table keeps no backups. A
	// member never holds two replicas of one partition.
	Backups [][]string
	// Incoming[p][i], when not "", is the member that will take over
	// backup replica i+1 of partition p from Backups[p][i] once it holds
	// a full copy (the master checks, then swaps them in a new version).
	// Until then the primary backs up to both, and Backups[p][i] stays
	// the replica a failover promotes: a backup replica moves like a
	// primary, never leaving its partition without an in-sync copy. Nil
	// when no backup replica is moving.
	Incoming [][]string
	// Members maps member IDs to addresses for every owner in the table.
	Members map[string]string
}

// Owner returns the owner of partition p.
func (t *Table) Owner(p int) string {
	if t == nil || p < 0 || p >= len(t.Owners) {
		return ""
	}
	return t.Owners[p]
}

// MemberAt returns the ID of the member at address in the table, or "".
func (t *Table) MemberAt(address string) string {
	for id, a := range t.Members {
		if a == address {
			return id
		}
	}
	return ""
}

// ReplicaIndex returns member id's replica index of partition p: 0 for the
// primary, i for backup i, -1 for none.
func (t *Table) ReplicaIndex(p int, id string) int {
	if t == nil || p < 0 || p >= len(t.Owners) || id == "" {
		return -1
	}
	if t.Owners[p] == id {
		return 0
	}
	if p < len(t.Backups) {
		for i, b := range t.Backups[p] {
			if b == id {
				return i + 1
			}
		}
	}
	if p < len(t.Incoming) {
		for i, b := range t.Incoming[p] {
			if b == id {
				return i + 1
			}
		}
	}
	return -1
}

// IsIncoming reports whether member id is taking over one of partition
// p's backup replicas (it is syncing a copy and not yet a replica that a
// failover may promote).
func (t *Table) IsIncoming(p int, id string) bool {
	return id != "" && t != nil && p >= 0 && p < len(t.Incoming) && slices.Contains(t.Incoming[p], id)
}

// IncomingOf returns the members taking over partition p's backup
// replicas, by replica (nil when none; do not modify).
func (t *Table) IncomingOf(p int) []string {
	if t == nil || p < 0 || p >= len(t.Incoming) {
		return nil
	}
	return t.Incoming[p]
}

// HasIncoming reports whether any backup replica is moving.
func (t *Table) HasIncoming() bool {
	if t == nil {
		return false
	}
	for _, in := range t.Incoming {
		for _, id := range in {
			if id != "" {
				return true
			}
		}
	}
	return false
}

// Replica returns the member holding replica i of partition p ("" none).
func (t *Table) Replica(p, i int) string {
	if i == 0 {
		return t.Owner(p)
	}
	if t == nil || p < 0 || p >= len(t.Backups) || i > len(t.Backups[p]) {
		return ""
	}
	return t.Backups[p][i-1]
}

// BackupsOf returns partition p's backup replicas (nil when none; do not
// modify).
func (t *Table) BackupsOf(p int) []string {
	if t == nil || p < 0 || p >= len(t.Backups) {
		return nil
	}
	return t.Backups[p]
}

// BackupCount returns how many backup replicas the table keeps per
// partition.
func (t *Table) BackupCount() int {
	if t == nil || len(t.Backups) == 0 {
		return 0
	}
	return len(t.Backups[0])
}

// Newer reports whether t is newer than o (nil: any table is newer): a
// higher term, or the same term and a higher version.
func (t *Table) Newer(o *Table) bool {
	if o == nil {
		return true
	}
	if t.Term != o.Term {
		return t.Term > o.Term
	}
	return t.Version > o.Version
}

// Clone returns a deep copy of t with the same term and version.
func (t *Table) Clone() *Table {
	c := &Table{Term: t.Term, Version: t.Version, Owners: append([]string(nil), t.Owners...), Members: make(map[string]string, len(t.Members))}
	for id, a := range t.Members {
		c.Members[id] = a
	}
	if t.Backups != nil {
		c.Backups = make([][]string, len(t.Backups))
		for p, b := range t.Backups {
			c.Backups[p] = append([]string(nil), b...)
		}
	}
	if t.Incoming != nil {
		c.Incoming = make([][]string, len(t.Incoming))
		for p, b := range t.Incoming {
			c.Incoming[p] = append([]string(nil), b...)
		}
	}
	return c
}

// Counts returns how many partitions each member owns.
func (t *Table) Counts() map[string]int {
	c := make(map[string]int)
	for _, o := range t.Owners {
		if o != "" {
			c[o]++
		}
	}
	return c
}

// Encode appends the table's wire form to w.
func (t *Table) Encode(w *spi.Writer) {
	w.WriteUvarint(t.Term)
	w.WriteVarint(t.Version)
	ids := make([]string, 0, len(t.Members))
	for id := range t.Members {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	index := make(map[string]int, len(ids))
	w.WriteUvarint(uint64(len(ids)))
	for i, id := range ids {
		index[id] = i
		w.WriteString(id)
		w.WriteString(t.Members[id])
	}
	ref := func(id string) uint64 {
		if id == "" {
			return 0
		}
		return uint64(index[id] + 1)
	}
	w.WriteUvarint(uint64(len(t.Owners)))
	for _, o := range t.Owners {
		w.WriteUvarint(ref(o))
	}
	b := t.BackupCount()
	w.WriteUvarint(uint64(b))
	for p := 0; p < len(t.Owners) && b > 0; p++ {
		for i := 0; i < b; i++ {
			w.WriteUvarint(ref(t.Backups[p][i]))
		}
	}
	// Incoming backups, sparse: count, then (partition, replica, member).
	n := 0
	for p := range t.Incoming {
		for _, id := range t.Incoming[p] {
			if id != "" {
				n++
			}
		}
	}
	w.WriteUvarint(uint64(n))
	for p := range t.Incoming {
		for i, id := range t.Incoming[p] {
			if id != "" {
				w.WriteUvarint(uint64(p))
				w.WriteUvarint(uint64(i))
				w.WriteUvarint(ref(id))
			}
		}
	}
}

// Decode reads a table written by Encode. It rejects tables whose member
// references are out of range or whose size differs from count.
func Decode(r *spi.Reader, count int) (*Table, error) {
	t := &Table{Term: r.ReadUvarint(), Version: r.ReadVarint()}
	n := r.ReadUvarint()
	if r.Err() == nil && n > uint64(r.Remaining()) {
		return nil, fmt.Errorf("%w: table lists %d members in %d bytes", spi.ErrProtocol, n, r.Remaining())
	}
	ids := make([]string, 0, n)
	t.Members = make(map[string]string, n)
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		id, addr := r.ReadString(), r.ReadString()
		ids = append(ids, id)
		t.Members[id] = addr
	}
	np := r.ReadUvarint()
	if err := r.Err(); err != nil {
		return nil, err
	}
	if np != uint64(count) {
		return nil, fmt.Errorf("%w: table has %d partitions, this member is configured for %d", spi.ErrProtocol, np, count)
	}
	ref := func(p int) (string, error) {
		i := r.ReadUvarint()
		if r.Err() != nil {
			return "", r.Err()
		}
		if i > uint64(len(ids)) {
			return "", fmt.Errorf("%w: partition %d names member %d of %d", spi.ErrProtocol, p, i, len(ids))
		}
		if i == 0 {
			return "", nil
		}
		return ids[i-1], nil
	}
	var err error
	t.Owners = make([]string, count)
	for p := range t.Owners {
		if t.Owners[p], err = ref(p); err != nil {
			return nil, err
		}
	}
	b := r.ReadUvarint()
	if r.Err() == nil && b > MaxBackups {
		return nil, fmt.Errorf("%w: table has %d backups per partition, at most %d", spi.ErrProtocol, b, MaxBackups)
	}
	if b > 0 {
		t.Backups = make([][]string, count)
		for p := range t.Backups {
			t.Backups[p] = make([]string, b)
			for i := range t.Backups[p] {
				if t.Backups[p][i], err = ref(p); err != nil {
					return nil, err
				}
			}
		}
	}
	n = r.ReadUvarint()
	if r.Err() == nil && n > uint64(r.Remaining()) {
		return nil, fmt.Errorf("%w: table lists %d incoming backups in %d bytes", spi.ErrProtocol, n, r.Remaining())
	}
	for k := uint64(0); k < n && r.Err() == nil; k++ {
		p, i := r.ReadUvarint(), r.ReadUvarint()
		if r.Err() == nil && (p >= uint64(count) || i >= b) {
			return nil, fmt.Errorf("%w: incoming backup %d of partition %d in a table of %d partitions and %d backups", spi.ErrProtocol, i+1, p, count, b)
		}
		id, err := ref(int(p))
		if err != nil {
			return nil, err
		}
		if t.Incoming == nil {
			t.Incoming = make([][]string, count)
		}
		if t.Incoming[p] == nil {
			t.Incoming[p] = make([]string, b)
		}
		t.Incoming[p][i] = id
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", spi.ErrProtocol, err)
	}
	return t, nil
}

// Validate reports the first way t breaks the rules every table keeps:
// every partition has the same number of backup slots (at most
// MaxBackups), incoming replicas only beside them, and no member holds
// two replicas of one partition, counting the primary, the backups and
// the incoming ones (a member taking over a backup replica is not
// already a replica: once swapped in it would be one twice). A table
// that lists a member twice claims copies that do not exist, and every
// write backs up to that member once per listing. The master checks
// each table it makes; Decode refuses one a peer sends.
func (t *Table) Validate() error {
	n := len(t.Owners)
	b := t.BackupCount()
	if t.Backups != nil && len(t.Backups) != n {
		return fmt.Errorf("table has backups of %d partitions and owners of %d", len(t.Backups), n)
	}
	if b > MaxBackups {
		return fmt.Errorf("table has %d backups per partition, at most %d", b, MaxBackups)
	}
	if t.Incoming != nil && len(t.Incoming) != n {
		return fmt.Errorf("table has incoming replicas of %d partitions and owners of %d", len(t.Incoming), n)
	}
	for p := range n {
		if p < len(t.Backups) && len(t.Backups[p]) != b {
			return fmt.Errorf("partition %d has %d backup slots, partition 0 has %d", p, len(t.Backups[p]), b)
		}
		if in := t.IncomingOf(p); in != nil && len(in) != b {
			return fmt.Errorf("partition %d has %d incoming slots for %d backups", p, len(in), b)
		}
		if err := t.distinctReplicas(p); err != nil {
			return err
		}
	}
	return nil
}

// distinctReplicas reports a member that t lists twice among partition
// p's replicas.
func (t *Table) distinctReplicas(p int) error {
	// Slot 0 is the owner, 1..b the backups, b+1..2b the incoming ones.
	var seen [1 + 2*MaxBackups]string
	b := len(t.BackupsOf(p))
	copy(seen[1:], t.BackupsOf(p))
	copy(seen[1+b:], t.IncomingOf(p))
	seen[0] = t.Owners[p]
	role := func(k int) string {
		switch {
		case k == 0:
			return "owner"
		case k <= b:
			return fmt.Sprintf("backup %d", k)
		}
		return fmt.Sprintf("incoming backup %d", k-b)
	}
	for k := 1; k <= 2*b; k++ {
		for j := 0; j < k && seen[k] != ""; j++ {
			if seen[j] == seen[k] {
				return fmt.Errorf("partition %d lists member %s twice: as %s and as %s", p, seen[k], role(j), role(k))
			}
		}
	}
	return nil
}

// MaxBackups is the most backup replicas a partition can have.
const MaxBackups = 6

// RebalanceBackups returns the backup replicas for owners over members
// (IDs, oldest first), keeping backups of prev that are still members and
// not the partition's owner, so as few replicas as possible change, and
// filling the missing ones from the members holding the fewest backups. A
// partition gets min(backups, members-1) backups, never on its owner or
// twice on one member. Members holding more than their share give some up.
func RebalanceBackups(owners []string, prev [][]string, members []string, backups int) [][]string {
	b := min(backups, len(members)-1, MaxBackups)
	if b <= 0 {
		return nil
	}
	count := len(owners)
	member := make(map[string]bool, len(members))
	for _, m := range members {
		member[m] = true
	}
	quota := (count*b + len(members) - 1) / len(members)
	load := make(map[string]int, len(members))
	out := make([][]string, count)
	for p := range out {
		out[p] = make([]string, 0, b)
		if p >= len(prev) {
			continue
		}
		for _, id := range prev[p] {
			if len(out[p]) < b && member[id] && id != owners[p] && !slices.Contains(out[p], id) && load[id] < quota {
				out[p] = append(out[p], id)
				load[id]++
			}
		}
	}
	for p := range out {
		for len(out[p]) < b {
			best := ""
			for _, m := range members {
				if m == owners[p] || slices.Contains(out[p], m) {
					continue
				}
				if best == "" || load[m] < load[best] {
					best = m
				}
			}
			out[p] = append(out[p], best)
			load[best]++
		}
	}
	return out
}

// Rebalance returns the owners for count partitions over members (IDs,
// oldest first) starting from prev (nil for none): every member ends with
// floor or ceil of count/len(members) partitions, and as few partitions as
// possible change owner. Partitions of members no longer listed are handed
// out first. The result is deterministic for the same inputs.
func Rebalance(prev []string, members []string, count int) []string {
	owners := make([]string, count)
	if len(members) == 0 {
		return owners
	}
	alive := make(map[string]bool, len(members))
	for _, m := range members {
		alive[m] = true
	}
	held := make(map[string][]int, len(members))
	var free []int
	for p := 0; p < count; p++ {
		o := ""
		if p < len(prev) {
			o = prev[p]
		}
		if alive[o] {
			owners[p] = o
			held[o] = append(held[o], p)
		} else {
			free = append(free, p)
		}
	}
	// Members holding the most keep the extra partition (ceil) so that the
	// fewest partitions move; ties go to the older member.
	order := append([]string(nil), members...)
	sort.SliceStable(order, func(i, j int) bool { return len(held[order[i]]) > len(held[order[j]]) })
	base, extra := count/len(members), count%len(members)
	quota := make(map[string]int, len(members))
	for i, m := range order {
		quota[m] = base
		if i < extra {
			quota[m]++
		}
	}
	// A member over its quota gives up partitions spread evenly over the
	// ones it holds, and free partitions are dealt round-robin, so every
	// member ends with partitions from the whole range rather than one
	// block.
	for _, m := range order {
		h := held[m]
		excess := len(h) - quota[m]
		if excess <= 0 {
			continue
		}
		give := make(map[int]bool, excess)
		for i := 0; i < excess; i++ {
			give[i*len(h)/excess] = true
		}
		kept := h[:0:0]
		for i, p := range h {
			if give[i] {
				owners[p] = ""
				free = append(free, p)
			} else {
				kept = append(kept, p)
			}
		}
		held[m] = kept
	}
	sort.Ints(free)
	for len(free) > 0 {
		for _, m := range members {
			if len(free) > 0 && len(held[m]) < quota[m] {
				owners[free[0]] = m
				held[m] = append(held[m], free[0])
				free = free[1:]
			}
		}
	}
	return owners
}
