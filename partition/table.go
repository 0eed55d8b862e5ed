package partition

import (
	"fmt"
	"sort"

	"github.com/partita-go/partita/spi"
)

// Table is one version of the partition table. A Table is immutable once
// published: readers share it without locks, and a change makes a new Table
// with a higher Version.
type Table struct {
	// Version increases with every change; members accept only newer ones.
	Version int64
	// Owners[p] is the ID of the member owning partition p ("" for none).
	Owners []string
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
	w.WriteUvarint(uint64(len(t.Owners)))
	for _, o := range t.Owners {
		if o == "" {
			w.WriteUvarint(0)
			continue
		}
		w.WriteUvarint(uint64(index[o] + 1))
	}
}

// Decode reads a table written by Encode. It rejects tables whose member
// references are out of range or whose size differs from count.
func Decode(r *spi.Reader, count int) (*Table, error) {
	t := &Table{Version: r.ReadVarint()}
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
	t.Owners = make([]string, count)
	for p := range t.Owners {
		i := r.ReadUvarint()
		if r.Err() != nil {
			break
		}
		if i > uint64(len(ids)) {
			return nil, fmt.Errorf("%w: partition %d names member %d of %d", spi.ErrProtocol, p, i, len(ids))
		}
		if i > 0 {
			t.Owners[p] = ids[i-1]
		}
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	return t, nil
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
