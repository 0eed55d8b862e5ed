package replica

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/partita-go/partita/spi"
)

// Pins: the records of the invocations a replica holds for callers its
// member lost (declared dead), kept past the window, keys only.
//
// A caller on the other side of a split retries an invocation whose answer
// the split cut off; the primary on its side has no record of it, and runs
// it again (a retry the record misses: spi.OpContext.Retried). Each side
// then holds one run of it. When the sides merge, a service that can tell
// a missed retry's effect apart (the counter counts it under an origin of
// its own) cancels it if the other side recorded the same invocation
// (Recorded: its records and its pins): the other side ran it too. A
// split longer than the window is seen as a loss of the callers on the
// other side, which pins their invocations. Records and pins are only as
// good as the data they travel with: they are dropped with it (a reset)
// and replaced with it (a copy from the primary), never merged from
// elsewhere, so each means "this replica's data holds that run".
//
// Pins expire PinKeep after they were made; a replica keeps at most
// MaxPins of them (the newest groups).

// MaxPins bounds the pins one replica keeps (and a migration or a replica
// sync carries): about 2 MiB on the wire.
const MaxPins = 100_000

// pinGroup is the pins made at one time, sorted.
type pinGroup struct {
	at   int64
	keys []Key
}

// pins of a Record: groups oldest first.
type pins struct {
	groups []pinGroup
	n      int
}

func compareKeys(a, b Key) int {
	if c := cmp.Compare(a.Origin, b.Origin); c != 0 {
		return c
	}
	return cmp.Compare(a.Seq, b.Seq)
}

// add adds a group of keys (sorted here), then drops the oldest groups
// past MaxPins.
func (p *pins) add(at int64, keys []Key) {
	if len(keys) == 0 {
		return
	}
	slices.SortFunc(keys, compareKeys)
	p.groups = append(p.groups, pinGroup{at: at, keys: keys})
	p.n += len(keys)
	for p.n > MaxPins && len(p.groups) > 1 {
		p.n -= len(p.groups[0].keys)
		p.groups[0] = pinGroup{}
		p.groups = p.groups[1:]
	}
}

// prune drops the groups older than keep at now.
func (p *pins) prune(now, keep int64) {
	i := 0
	for i < len(p.groups) && p.groups[i].at < now-keep {
		p.n -= len(p.groups[i].keys)
		i++
	}
	if i > 0 {
		clear(p.groups[:i])
		p.groups = p.groups[i:]
	}
	if len(p.groups) == 0 {
		p.groups = nil
	}
}

// Pin pins the records of the invocations of origin (a caller this
// member lost) that the record still finds at now, and returns how many.
// Pins expire win.PinKeep after now.
func (d *Record) Pin(origin uint64, now int64, win Window) int {
	d.pins.prune(now, win.PinKeep)
	var keys []Key
	limit := now - win.Keep
	d.entries(0, func(e *entry) bool {
		if e.key.Origin == origin && e.at >= limit {
			keys = append(keys, e.key)
		}
		return true
	})
	d.pins.add(now, keys)
	return len(keys)
}

// PinKey pins k alone at now (recorded after its caller was lost).
func (d *Record) PinKey(k Key, now int64, win Window) {
	d.pins.prune(now, win.PinKeep)
	d.pins.add(now, []Key{k})
}

// Pinned reports whether k is pinned.
func (d *Record) Pinned(k Key) bool {
	for _, g := range d.pins.groups {
		if _, ok := slices.BinarySearchFunc(g.keys, k, compareKeys); ok {
			return true
		}
	}
	return false
}

// Pins returns the pinned keys that have not expired at now, sorted and
// distinct (a copy).
func (d *Record) Pins(now int64, win Window) []Key { return d.keys(now, win, false) }

// Recorded returns the keys of the records a lookup finds at now (the
// newest MaxCarried of them) and the pins, sorted and distinct (a copy):
// the invocations whose runs the replica holds, as far as it knows them.
func (d *Record) Recorded(now int64, win Window) []Key { return d.keys(now, win, true) }

func (d *Record) keys(now int64, win Window, records bool) []Key {
	d.pins.prune(now, win.PinKeep)
	out := make([]Key, 0, d.pins.n)
	for _, g := range d.pins.groups {
		out = append(out, g.keys...)
	}
	if records {
		limit := now - win.Keep
		d.entries(max(d.n-MaxCarried, 0), func(e *entry) bool {
			if e.at >= limit {
				out = append(out, e.key)
			}
			return true
		})
	}
	slices.SortFunc(out, compareKeys)
	return slices.Compact(out)
}

// PinCount returns how many pins are kept (expired ones included until
// the next prune).
func (d *Record) PinCount() int { return d.pins.n }

// appendPins writes the pins that have not expired, each group with its
// age at now.
func (d *Record) appendPins(w *spi.Writer, now int64, win Window) {
	d.pins.prune(now, win.PinKeep)
	w.WriteUvarint(uint64(len(d.pins.groups)))
	for _, g := range d.pins.groups {
		w.WriteVarint(max(now-g.at, 0))
		w.WriteUvarint(uint64(len(g.keys)))
		for _, k := range g.keys {
			w.WriteUint64(k.Origin)
			w.WriteUvarint(k.Seq)
		}
	}
}

// readPins reads what appendPins wrote, made their age before now, in
// place of the pins held.
func (d *Record) readPins(r *spi.Reader, now int64) error {
	d.pins = pins{}
	groups := r.ReadUvarint()
	if r.Err() == nil && groups > uint64(r.Remaining()/2) {
		return fmt.Errorf("%w: %d pin groups in %d bytes", spi.ErrProtocol, groups, r.Remaining())
	}
	for i := uint64(0); i < groups && r.Err() == nil; i++ {
		age, n := r.ReadVarint(), r.ReadUvarint()
		if r.Err() == nil && n > uint64(r.Remaining()/9) {
			return fmt.Errorf("%w: %d pins in %d bytes", spi.ErrProtocol, n, r.Remaining())
		}
		keys := make([]Key, 0, n)
		for j := uint64(0); j < n && r.Err() == nil; j++ {
			keys = append(keys, Key{Origin: r.ReadUint64(), Seq: r.ReadUvarint()})
		}
		if r.Err() == nil {
			d.pins.add(now-max(age, 0), keys)
		}
	}
	return r.Err()
}
