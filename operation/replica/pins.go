package replica

import (
	"cmp"
	"fmt"
	"slices"
	"time"

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
//
// A service that drops data earlier runs changed (a destroyed object) has
// the record forget them as evidence (Forget): its pins go, and only runs
// made since are pinned or listed (Recorded); the records themselves stay
// for exactly-once.

// MaxPins bounds the pins one replica keeps (and a migration or a replica
// sync carries): about 2 MiB on the wire.
const MaxPins = 100_000

// pinGroup is the pins made at one time (the ones pinned one by one
// within a second of it join it), in no order.
type pinGroup struct {
	at   int64
	keys []Key
}

// joinSpan is how long after a group was made a pin made one by one
// joins it rather than start a group of its own.
const joinSpan = int64(time.Second)

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

// add adds a group of keys (at most the last MaxPins), then drops the
// oldest groups past MaxPins.
func (p *pins) add(at int64, keys []Key) {
	if len(keys) == 0 {
		return
	}
	keys = keys[max(len(keys)-MaxPins, 0):]
	p.groups = append(p.groups, pinGroup{at: at, keys: keys})
	p.n += len(keys)
	p.bound()
}

// addKey adds one key: to the newest group if it is younger than
// joinSpan, else in a group of its own.
func (p *pins) addKey(at int64, k Key) {
	if last := len(p.groups) - 1; last >= 0 && at-p.groups[last].at < joinSpan {
		p.groups[last].keys = append(p.groups[last].keys, k)
		p.n++
		p.bound()
		return
	}
	p.add(at, []Key{k})
}

// bound drops the oldest groups while there are more than MaxPins pins
// (the newest group stays whole: add and addKey keep it within MaxPins,
// or it is the only one).
func (p *pins) bound() {
	for p.n > MaxPins && len(p.groups) > 1 {
		p.n -= len(p.groups[0].keys)
		p.groups[0] = pinGroup{}
		p.groups = p.groups[1:]
	}
	if g := &p.groups[len(p.groups)-1]; p.n > MaxPins {
		drop := p.n - MaxPins
		g.keys = g.keys[drop:]
		p.n -= drop
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
// member lost) that the record still finds at now (the newest MaxPins),
// and returns how many. Pins expire win.PinKeep after now.
func (d *Record) Pin(origin uint64, now int64, win Window) int {
	d.pins.prune(now, win.PinKeep)
	var keys []Key
	limit := max(now-win.Keep, d.from)
	d.entries(0, func(e *entry) bool {
		if e.key.Origin == origin && e.at >= limit {
			keys = append(keys, e.key)
		}
		return true
	})
	d.pins.add(now, keys)
	return min(len(keys), MaxPins)
}

// PinKey pins k at now (recorded after its caller was lost).
func (d *Record) PinKey(k Key, now int64, win Window) {
	d.pins.prune(now, win.PinKeep)
	d.pins.addKey(now, k)
}

// Pinned reports whether k is pinned (a scan: for tests and checks).
func (d *Record) Pinned(k Key) bool {
	for _, g := range d.pins.groups {
		if slices.Contains(g.keys, k) {
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
		limit := max(now-win.Keep, d.from)
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

// Forget drops the pins and lists, from now on, only the runs recorded
// at or after now (Pin and Recorded skip older records).
func (d *Record) Forget(now int64) {
	d.pins = pins{}
	d.from = now
}

// PinCount returns how many pins are kept (expired ones included until
// the next prune).
func (d *Record) PinCount() int { return d.pins.n }

// appendPins writes the age of the last Forget at now (-1: none), then
// the pins that have not expired, each group with its age at now.
func (d *Record) appendPins(w *spi.Writer, now int64, win Window) {
	d.pins.prune(now, win.PinKeep)
	from := int64(-1)
	if d.from != 0 {
		from = max(now-d.from, 0)
	}
	w.WriteVarint(from)
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
	d.pins, d.from = pins{}, 0
	if age := r.ReadVarint(); r.Err() == nil && age >= 0 {
		d.from = now - age
	}
	groups := r.ReadUvarint()
	if r.Err() == nil && groups > uint64(r.Remaining()/2) {
		return fmt.Errorf("%w: %d pin groups in %d bytes", spi.ErrProtocol, groups, r.Remaining())
	}
	for i := uint64(0); i < groups && r.Err() == nil; i++ {
		age, n := r.ReadVarint(), r.ReadUvarint()
		if r.Err() == nil && (n > uint64(r.Remaining()/9) || n > MaxPins) {
			return fmt.Errorf("%w: a group of %d pins in %d bytes (at most %d)", spi.ErrProtocol, n, r.Remaining(), MaxPins)
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
