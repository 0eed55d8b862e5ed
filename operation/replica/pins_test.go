package replica

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

// pinWindow: the default dedup window, pins kept an hour.
var pinWindow = Window{Keep: testWindow.Keep, Slack: testWindow.Slack, PinKeep: int64(time.Hour)}

// Pinning a lost caller's invocations keeps those the record still finds,
// and only those; they outlive the window's pruning, expire after
// PinKeep, travel with a copy of the record (which replaces the pins held)
// and go with Drop.
func TestPinsOfALostCaller(t *testing.T) {
	const lost, other = 7, 9
	now := int64(1 << 40)
	var d Record
	d.Add(Key{Origin: lost, Seq: 1}, []byte{1}, now-pinWindow.Keep-1, nil, pinWindow) // expired
	for i := range 5 {
		d.Add(Key{Origin: lost, Seq: uint64(10 + i)}, []byte{1}, now-int64(i), nil, pinWindow)
		d.Add(Key{Origin: other, Seq: uint64(10 + i)}, []byte{1}, now-int64(i), nil, pinWindow)
	}
	if n := d.Pin(lost, now, pinWindow); n != 5 {
		t.Fatalf("Pin = %d, want the 5 live records of the lost caller", n)
	}
	d.PinKey(Key{Origin: lost, Seq: 99}, now+1, pinWindow) // recorded after the loss
	want := []Key{{Origin: lost, Seq: 10}, {Origin: lost, Seq: 11}, {Origin: lost, Seq: 12}, {Origin: lost, Seq: 13}, {Origin: lost, Seq: 14}, {Origin: lost, Seq: 99}}
	if got := d.Pins(now+1, pinWindow); !slices.Equal(got, want) {
		t.Fatalf("Pins = %v, want %v", got, want)
	}
	if d.Pinned(Key{Origin: other, Seq: 10}) || d.Pinned(Key{Origin: lost, Seq: 1}) {
		t.Fatal("pinned an invocation of another caller, or an expired one")
	}
	// Recorded: the records a lookup finds and the pins, once each.
	recorded := d.Recorded(now+1, pinWindow)
	if len(recorded) != 11 || !slices.IsSortedFunc(recorded, compareKeys) ||
		!slices.Contains(recorded, Key{Origin: other, Seq: 14}) || !slices.Contains(recorded, Key{Origin: lost, Seq: 99}) ||
		slices.Contains(recorded, Key{Origin: lost, Seq: 1}) {
		t.Fatalf("Recorded = %v", recorded)
	}
	// The records expire with the window; the pins stay.
	later := now + 2*pinWindow.Keep
	d.Prune(later, pinWindow)
	if d.Len() != 0 || !d.Pinned(Key{Origin: lost, Seq: 12}) {
		t.Fatalf("after the window: %d records, pinned %v", d.Len(), d.Pinned(Key{Origin: lost, Seq: 12}))
	}
	if got := d.Recorded(later, pinWindow); !slices.Equal(got, want) {
		t.Fatalf("after the window: Recorded = %v, want the pins %v", got, want)
	}
	// A copy carries them, with their age; reading one replaces the pins.
	w := spi.NewWriter(nil)
	d.Append(w, later, pinWindow)
	var c Record
	c.PinKey(Key{Origin: 3, Seq: 3}, later, pinWindow)
	if _, _, err := c.Read(spi.NewReader(w.Bytes()), later+5, pinWindow); err != nil {
		t.Fatal(err)
	}
	if got := c.Pins(later+5, pinWindow); !slices.Equal(got, want) {
		t.Fatalf("the copy's pins = %v, want %v", got, want)
	}
	// They expire PinKeep after they were made, in the copy as well (its
	// clock read them 5 later).
	if got := c.Pins(now+5+pinWindow.PinKeep, pinWindow); len(got) == 0 {
		t.Fatal("the copy's pins expired early")
	}
	if got := c.Pins(now+7+pinWindow.PinKeep, pinWindow); len(got) != 0 {
		t.Fatalf("pins an hour later: %v", got)
	}
	d.Drop()
	if d.PinCount() != 0 || d.Pinned(Key{Origin: lost, Seq: 12}) {
		t.Fatal("Drop kept the pins")
	}
}

// A replica keeps at most MaxPins pins: the oldest groups go first.
func TestPinsAreBounded(t *testing.T) {
	var d Record
	now := int64(1 << 40)
	keys := func(origin uint64, n int) []Key {
		out := make([]Key, n)
		for i := range out {
			out[i] = Key{Origin: origin, Seq: uint64(i + 1)}
		}
		return out
	}
	d.pins.add(now, keys(1, MaxPins/2))
	d.pins.add(now+1, keys(2, MaxPins/2))
	d.pins.add(now+2, keys(3, 10))
	if d.PinCount() > MaxPins || d.Pinned(Key{Origin: 1, Seq: 1}) || !d.Pinned(Key{Origin: 3, Seq: 10}) || !d.Pinned(Key{Origin: 2, Seq: 1}) {
		t.Fatalf("%d pins; oldest group kept %v", d.PinCount(), d.Pinned(Key{Origin: 1, Seq: 1}))
	}
	// One group larger than the bound keeps its newest keys.
	var e Record
	e.pins.add(now, keys(4, MaxPins+10))
	if e.PinCount() != MaxPins || e.Pinned(Key{Origin: 4, Seq: 10}) || !e.Pinned(Key{Origin: 4, Seq: MaxPins + 10}) {
		t.Fatalf("an oversized group: %d pins", e.PinCount())
	}
	// Keys pinned one by one within a second share a group.
	var f Record
	for i := range 1000 {
		f.PinKey(Key{Origin: 5, Seq: uint64(i + 1)}, now+int64(i)*int64(time.Millisecond)/2, pinWindow)
	}
	if len(f.pins.groups) != 1 || f.PinCount() != 1000 {
		t.Fatalf("1000 keys pinned one by one in 0.5 s: %d groups, %d pins", len(f.pins.groups), f.PinCount())
	}
}

// A copy whose pin counts its bytes cannot hold is refused as a protocol
// error, sizing nothing by the count.
func TestPinsOfABadCopy(t *testing.T) {
	for name, body := range map[string]func(w *spi.Writer){
		"groups": func(w *spi.Writer) { w.WriteUvarint(1 << 40) },
		"keys":   func(w *spi.Writer) { w.WriteUvarint(1); w.WriteVarint(0); w.WriteUvarint(1 << 40) },
	} {
		w := spi.NewWriter(nil)
		w.WriteBool(false)
		w.WriteUvarint(0) // no records
		w.WriteVarint(-1) // never forgot
		body(w)
		var d Record
		if _, _, err := d.Read(spi.NewReader(w.Bytes()), 1<<40, pinWindow); !errors.Is(err, spi.ErrProtocol) {
			t.Fatalf("%s: %v, want a protocol error", name, err)
		}
	}
}

// After Forget (data that earlier runs changed was dropped), the record
// lists and pins only the runs recorded since; it still answers retries
// of the earlier ones. A copy carries the point it forgot at.
func TestForgetRecordedInvocations(t *testing.T) {
	now := int64(1 << 40)
	var d Record
	before, after := Key{Origin: 7, Seq: 1}, Key{Origin: 7, Seq: 2}
	d.Add(before, []byte{1}, now, nil, pinWindow)
	d.Pin(7, now+1, pinWindow)
	d.Forget(now + 2)
	d.Add(after, []byte{1}, now+3, nil, pinWindow)
	if got := d.Recorded(now+4, pinWindow); !slices.Equal(got, []Key{after}) {
		t.Fatalf("Recorded after Forget = %v, want only %v", got, after)
	}
	if _, found, _ := d.Lookup(before, now-pinWindow.Keep); !found {
		t.Fatal("Forget dropped a record a retry needs")
	}
	if n := d.Pin(7, now+5, pinWindow); n != 1 || d.Pinned(before) {
		t.Fatalf("Pin after Forget pinned %d, the forgotten run %v", n, d.Pinned(before))
	}
	w := spi.NewWriter(nil)
	d.Append(w, now+6, pinWindow)
	var c Record
	if _, _, err := c.Read(spi.NewReader(w.Bytes()), now+6, pinWindow); err != nil {
		t.Fatal(err)
	}
	if got := c.Recorded(now+6, pinWindow); !slices.Equal(got, []Key{after}) {
		t.Fatalf("a copy lists %v, want only %v", got, after)
	}
	d.Drop()
	d.Add(before, []byte{1}, now+7, nil, pinWindow)
	if got := d.Recorded(now+8, pinWindow); !slices.Equal(got, []Key{before}) {
		t.Fatalf("after Drop: %v", got)
	}
}
