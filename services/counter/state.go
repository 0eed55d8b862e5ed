package counter

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/partita-go/partita/spi"
)

// A counter is a PN-counter, so that the increments of the two sides of a
// split brain merge without loss (splitbrain.go). Its increments are
// counted per origin: for each origin, P is the sum of the positive
// amounts added under it and N the sum of the magnitudes of the negative
// ones; the value is ΣP − ΣN (kept, so that Inc and Get stay O(1)).
//
// An origin is a random 64-bit number that one member draws for one
// partition when it first increments there as primary (container.origin),
// and draws again after anything that may have replaced its replica of
// the partition (a migration's commit or rollback, a replica sync, a merge,
// a destroy, Reset). Only that member adds under it, each time to the state
// that holds everything it added before under it, and its backups add
// what it added, under the same origin (IncBackupOperation). So two
// copies of a counter that went apart agree on each origin's entry up to
// the point where they parted, and after it at most one of them grew it:
// merging two states by the greater P and the greater N of each origin
// (State.Merge) counts every increment once. The merge is commutative,
// associative and idempotent.
//
// One kind of increment is counted apart: a retry that the primary's
// exactly-once record does not hold (spi.OpContext.Retried: its earlier
// attempt's primary is gone, and across a split it may have run on the
// other side) gets an origin of its own, derived from its invocation
// (retriedOrigin, high bit set; tenure origins have it clear), so that a
// merge can cancel it if the other side ran it too (splitbrain.go). Such
// retries only follow a failover, one per call in flight there: each
// costs its counter one more entry.
//
// Why not one origin per member, as Hazelcast's PN-counter does: a member
// that gets a partition whose every replica went to the other side of a
// split starts it empty, and would count its increments under its own
// entry again from 0; the larger P of the other side, from before the
// split, would hide them. A fresh origin for each tenure costs one entry
// per counter per primary that incremented it since the counter was made
// (24 bytes in memory, 10 to 28 on the wire), no more.
//
// P and N are uint64 and wrap after 2⁶⁴ (a sum of amounts that large
// under one origin merges wrongly); the value wraps as an int64 sum does.

// Entry is what a counter counted under one origin: P the sum of the
// positive amounts, N the sum of the negative amounts' magnitudes.
type Entry struct {
	Origin uint64
	P, N   uint64
}

// State is the replicated state of one counter: its entries in ascending,
// distinct Origin order. The counter's operations carry it between
// members, and the merge policy sees two of them per counter.
type State struct {
	Entries []Entry
}

// Value returns the counter's value, ΣP − ΣN.
func (s State) Value() int64 {
	var v uint64
	for _, e := range s.Entries {
		v += e.P - e.N
	}
	return int64(v)
}

// MergeValue implements mergepolicy.Valuer: higher-value compares two
// counters by their values.
func (s State) MergeValue() int64 { return s.Value() }

// Merge returns the union of s and o: for each origin the greater P and
// the greater N of the two. It shares no memory with either.
func (s State) Merge(o State) State {
	out := make([]Entry, 0, max(len(s.Entries), len(o.Entries)))
	a, b := s.Entries, o.Entries
	for len(a) > 0 && len(b) > 0 {
		switch {
		case a[0].Origin < b[0].Origin:
			out, a = append(out, a[0]), a[1:]
		case a[0].Origin > b[0].Origin:
			out, b = append(out, b[0]), b[1:]
		default:
			out = append(out, Entry{Origin: a[0].Origin, P: max(a[0].P, b[0].P), N: max(a[0].N, b[0].N)})
			a, b = a[1:], b[1:]
		}
	}
	out = append(append(out, a...), b...)
	return State{Entries: out}
}

// Equal reports whether s and o hold the same entries.
func (s State) Equal(o State) bool { return slices.Equal(s.Entries, o.Entries) }

// check reports entries out of order or repeated.
func (s State) check() error {
	for i := 1; i < len(s.Entries); i++ {
		if s.Entries[i-1].Origin >= s.Entries[i].Origin {
			return fmt.Errorf("entries not in ascending origin order (%x after %x)", s.Entries[i].Origin, s.Entries[i-1].Origin)
		}
	}
	return nil
}

// pnCounter is a counter as its container holds it: the entries in no
// order but one, the entry added to last is last (where the primary looks
// first), and the value.
type pnCounter struct {
	value   int64
	entries []Entry
}

// newOrigin draws a tenure's origin: random, never 0, its high bit clear
// (retriedOrigin's is set).
func newOrigin() uint64 {
	for {
		if o := rand.Uint64() >> 1; o != 0 {
			return o
		}
	}
}

// retriedBit marks the origin of a retried increment.
const retriedBit = 1 << 63

// retriedOrigin returns the origin of the one increment that invocation
// id ran as a retry the exactly-once record did not hold
// (spi.OpContext.Retried): derived from id, its high bit set.
func retriedOrigin(id spi.InvocationID) uint64 {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], id.Origin)
	binary.LittleEndian.PutUint64(b[8:], id.Seq)
	return xxhash.Sum64(b[:]) | retriedBit
}

// cancel cancels origin's entry, if s has it: P and N both become the
// greater of the two, so it counts 0, and any copy of it merges into the
// cancelled one (State.Merge takes the greater of each). It returns
// whether s had it.
func (s State) cancel(origin uint64) bool {
	i, ok := slices.BinarySearchFunc(s.Entries, origin, func(e Entry, o uint64) int { return cmp.Compare(e.Origin, o) })
	if ok {
		m := max(s.Entries[i].P, s.Entries[i].N)
		s.Entries[i].P, s.Entries[i].N = m, m
	}
	return ok
}

// has reports whether s has an entry for origin.
func (s State) has(origin uint64) bool {
	_, ok := slices.BinarySearchFunc(s.Entries, origin, func(e Entry, o uint64) int { return cmp.Compare(e.Origin, o) })
	return ok
}

// add adds amount under origin. Adding 0 changes nothing.
func (c *pnCounter) add(origin uint64, amount int64) {
	if amount == 0 {
		return
	}
	e := c.entry(origin)
	if amount > 0 {
		e.P += uint64(amount)
	} else {
		e.N += -uint64(amount) // the magnitude, 2⁶³ for math.MinInt64 too
	}
	c.value += amount
}

// entry returns origin's entry, made last (added if absent).
func (c *pnCounter) entry(origin uint64) *Entry {
	n := len(c.entries)
	if n > 0 && c.entries[n-1].Origin == origin {
		return &c.entries[n-1]
	}
	for i := 0; i < n-1; i++ {
		if c.entries[i].Origin == origin {
			c.entries[i], c.entries[n-1] = c.entries[n-1], c.entries[i]
			return &c.entries[n-1]
		}
	}
	c.entries = append(c.entries, Entry{Origin: origin})
	return &c.entries[n]
}

// state returns a copy of the counter's state, sorted.
func (c *pnCounter) state() State {
	e := slices.Clone(c.entries)
	slices.SortFunc(e, func(a, b Entry) int { return cmp.Compare(a.Origin, b.Origin) })
	return State{Entries: e}
}

// newCounter returns a counter holding a copy of s.
func newCounter(s State) *pnCounter {
	return &pnCounter{value: s.Value(), entries: slices.Clone(s.Entries)}
}

// counter returns the counter name, made empty if absent.
func (c *container) counter(name string) *pnCounter {
	ctr := c.counters[name]
	if ctr == nil {
		if c.counters == nil {
			c.counters = make(map[string]*pnCounter)
		}
		ctr = &pnCounter{}
		c.counters[name] = ctr
	}
	return ctr
}

// states returns a copy of the container's counters.
func (c *container) states() map[string]State {
	out := make(map[string]State, len(c.counters))
	for name, ctr := range c.counters {
		out[name] = ctr.state()
	}
	return out
}

// values returns the container's counters' values.
func (c *container) values() map[string]int64 {
	out := make(map[string]int64, len(c.counters))
	for name, ctr := range c.counters {
		out[name] = ctr.value
	}
	return out
}

// set replaces the counters named in states by copies of them.
func (c *container) set(states map[string]State) {
	for name, st := range states {
		if c.counters == nil {
			c.counters = make(map[string]*pnCounter, len(states))
		}
		c.counters[name] = newCounter(st)
	}
}

// clear drops the container's counters and its origin.
func (c *container) clear() {
	clear(c.counters)
	c.origin = 0
}

// destroy drops one counter. The origin goes too: should the counter be
// made again here, its increments must not be counted under an entry
// that the other side of a split may hold from before the destroy.
func (c *container) destroy(name string) {
	delete(c.counters, name)
	c.origin = 0
}

// The encoding of counters' states (format 2; format 1, before issue 20,
// carried each counter's value alone): the number of counters as an
// unsigned varint, then for each counter, in ascending name order, its
// name (string), its number of entries (unsigned varint) and its entries
// in ascending origin order, each the origin (8 bytes, little-endian) then
// P and N (unsigned varints). The orders make the encoding deterministic.

// stateFormat is the version byte that starts every operation carrying
// states, but the merge operation, which carries more after them
// (mergeFormat).
const (
	stateFormat = 2
	mergeFormat = 3
)

// Smallest encodings: a counter is a name's length byte and an entry
// count byte; an entry is its origin and two one-byte varints.
const (
	minCounterSize = 2
	minEntrySize   = 10
)

func writeStates(w *spi.Writer, states map[string]State) {
	names := make([]string, 0, len(states))
	for name := range states {
		names = append(names, name)
	}
	slices.Sort(names)
	w.WriteUvarint(uint64(len(names)))
	for _, name := range names {
		w.WriteString(name)
		entries := states[name].Entries
		w.WriteUvarint(uint64(len(entries)))
		for _, e := range entries {
			w.WriteUint64(e.Origin)
			w.WriteUvarint(e.P)
			w.WriteUvarint(e.N)
		}
	}
}

// readFormat reads the version byte, which must be want.
func readFormat(r *spi.Reader, what string, want uint8) error {
	v := r.ReadUint8()
	if err := r.Err(); err != nil {
		return err
	}
	if v != want {
		return fmt.Errorf("%w: %s in format %d, this member reads format %d", spi.ErrProtocol, what, v, want)
	}
	return nil
}

// readStates reads what writeStates wrote. It rejects a count that the
// bytes left cannot hold (so an untrusted count never sizes an
// allocation), a name that appears twice, and entries out of order or
// repeated.
func readStates(r *spi.Reader, what string) (map[string]State, error) {
	n := r.ReadUvarint()
	if err := r.Err(); err != nil {
		return nil, err
	}
	if left := r.Remaining(); n > uint64(left/minCounterSize) {
		return nil, fmt.Errorf("%w: %s lists %d counters in %d bytes", spi.ErrProtocol, what, n, left)
	}
	states := make(map[string]State, n)
	for range n {
		name, k := r.ReadString(), r.ReadUvarint()
		if err := r.Err(); err != nil {
			return nil, err
		}
		if _, dup := states[name]; dup {
			return nil, fmt.Errorf("%w: %s lists counter %q twice", spi.ErrProtocol, what, name)
		}
		if left := r.Remaining(); k > uint64(left/minEntrySize) {
			return nil, fmt.Errorf("%w: %s: counter %q lists %d entries in %d bytes", spi.ErrProtocol, what, name, k, left)
		}
		var st State
		if k > 0 {
			st.Entries = make([]Entry, k)
		}
		for i := range st.Entries {
			st.Entries[i] = Entry{Origin: r.ReadUint64(), P: r.ReadUvarint(), N: r.ReadUvarint()}
		}
		if err := r.Err(); err != nil {
			return nil, err
		}
		if err := st.check(); err != nil {
			return nil, fmt.Errorf("%w: %s: counter %q: %v", spi.ErrProtocol, what, name, err)
		}
		states[name] = st
	}
	return states, nil
}
