package replica

import (
	"bytes"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

// testWindow: ten seconds, as the default dedup window.
var testWindow = Window{Keep: int64(10*time.Second + 10*time.Second/8), Slack: int64(10*time.Second) / 16}

// The chunked log behaves like a plain list of (key, time, response)
// pruned by age (in batches): records across chunk boundaries, long
// responses kept aside, busy flags, and the record count the metric
// reports.
func TestDedupLogMatchesModel(t *testing.T) {
	const window = 1000
	win := Window{Keep: window + window/8, Slack: window / 16}
	var d Record
	count := 0 // what the operation service's metric adds up
	type rec struct {
		key  Key
		at   int64
		resp []byte
		busy *atomic.Bool
	}
	var model []rec
	keep := win.Keep // the window and the retries' slack
	rng := rand.New(rand.NewPCG(1, 2))
	now := int64(1 << 40)
	for i := range 20000 {
		now += int64(rng.IntN(3)) // many records share a time
		k := Key{Origin: 7, Seq: uint64(i + 1)}
		resp := make([]byte, rng.IntN(40)) // some beyond the inline size
		for j := range resp {
			resp[j] = byte(i + j)
		}
		var busy *atomic.Bool
		if rng.IntN(10) == 0 {
			busy = new(atomic.Bool)
			busy.Store(rng.IntN(2) == 0)
		}
		added, pruned := d.Add(k, resp, now, busy, win)
		count += added - pruned
		model = append(model, rec{k, now, resp, busy})
		// The log keeps every record of the window and drops expired
		// ones in batches: the oldest kept is at most a sixteenth of the
		// window past it.
		n := count
		if n > len(model) || n < 1 {
			t.Fatalf("after %d records: count %d, model holds %d", i+1, n, len(model))
		}
		for _, r := range model[:len(model)-n] {
			if r.at >= now-keep {
				t.Fatalf("after %d records: record %v (at %d) of the window dropped at %d", i+1, r.key, r.at, now)
			}
		}
		model = model[len(model)-n:]
		if model[0].at < now-keep-window/16 {
			t.Fatalf("after %d records: record at %d kept at %d, beyond the window and its slack", i+1, model[0].at, now)
		}
		if i%97 == 0 && len(model) > 0 {
			if d.Len() != len(model) {
				t.Fatalf("log holds %d, model %d", d.Len(), len(model))
			}
			j := rng.IntN(len(model))
			e := d.entry(j)
			if e.key != model[j].key || e.at != model[j].at || !bytes.Equal(d.response(e), model[j].resp) {
				t.Fatalf("entry %d = %+v (%x), model %+v", j, e.key, d.response(e), model[j])
			}
			if e.busy != (model[j].busy != nil) || (e.busy && d.flag(e) != model[j].busy && d.flag(e) != nil) {
				t.Fatalf("entry %d busy %v, model %v", j, e.busy, model[j].busy != nil)
			}
		}
	}
	// Busy flags still set survive the sweeps; overflow responses and
	// flags of pruned entries are gone.
	busyRecords := 0
	for j, r := range model {
		if r.busy != nil {
			busyRecords++
		}
		if r.busy != nil && r.busy.Load() && d.flag(d.entry(j)) != r.busy {
			t.Fatalf("busy flag of %v dropped while set", r.key)
		}
	}
	if flags := len(d.flags) - d.flagHead; len(d.big) > len(model) || flags > busyRecords {
		t.Fatalf("side data: %d long responses and %d flags for %d live records (%d busy)", len(d.big), flags, len(model), busyRecords)
	}
	if count -= d.Drop(); count != 0 {
		t.Fatalf("count %d after Drop", count)
	}
}

// A quiet partition's log starts small: one record does not cost a
// largest chunk (a member holds hundreds of logs).
func TestDedupLogStartsSmall(t *testing.T) {
	logs := make([]Record, 4096)
	for p := range logs {
		logs[p].Add(Key{Origin: 1, Seq: uint64(p + 1)}, []byte{1}, 1, nil, testWindow)
	}
	for p := range logs {
		if d := &logs[p]; len(d.chunks) != 1 || cap(d.chunks[0]) != firstChunk || d.spare != nil {
			t.Fatalf("partition %d: %d chunks, first of capacity %d", p, len(d.chunks), cap(d.chunks[0]))
		}
	}
}

// A busy flag that stays set does not keep the runs recorded after it
// alive once their flags clear, and a lone flag at a time costs no
// allocation.
func TestDedupFlagsBehindAStuckOne(t *testing.T) {
	var d Record
	now := int64(1 << 40)
	stuck := new(atomic.Bool)
	stuck.Store(true)
	d.Add(Key{Origin: 1, Seq: 1}, []byte{1}, now, stuck, testWindow)
	for i := range 10000 {
		b := new(atomic.Bool)
		b.Store(true)
		d.Add(Key{Origin: 1, Seq: uint64(i + 2)}, []byte{1}, now, b, testWindow)
		b.Store(false) // acknowledged
	}
	held := 0
	for _, f := range d.flags[d.flagHead:] {
		if f != nil {
			held++
		}
	}
	if held > 200 {
		t.Fatalf("%d flags kept behind the stuck one", held)
	}
	if _, _, busy := d.Lookup(Key{Origin: 1, Seq: 1}, now-testWindow.Keep); !busy {
		t.Fatal("the stuck run's flag was lost")
	}
	if _, ok, busy := d.Lookup(Key{Origin: 1, Seq: 500}, now-testWindow.Keep); !ok || busy {
		t.Fatalf("an acknowledged run: found %v, busy %v", ok, busy)
	}
	stuck.Store(false)
	seq := uint64(20000)
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		b := new(atomic.Bool) // the run's, allocated by the caller
		b.Store(true)
		d.Add(Key{Origin: 1, Seq: seq}, []byte{1}, now, b, testWindow)
		b.Store(false)
	})
	if allocs > 1.01 { // the flag itself
		t.Fatalf("%.2f allocations per busy record", allocs)
	}
}

// A replica installed from a copy that carried only the newest
// MaxCarried records is promoted with a partial record: until the records
// left out would have expired, a retry it does not find may have run
// (Complete is false). One installed from a whole record is complete.
func TestPromotedWithAndWithoutACompleteRecord(t *testing.T) {
	now := int64(1 << 40)
	for _, tc := range []struct {
		name     string
		records  int
		complete bool
	}{{"whole record", 10, true}, {"capped record", MaxCarried + 10, false}} {
		t.Run(tc.name, func(t *testing.T) {
			var src Record
			for i := range tc.records {
				src.Add(Key{Origin: 1, Seq: uint64(i + 1)}, []byte{1}, now-int64(tc.records-i), nil, testWindow)
			}
			w := spi.NewWriter(nil)
			src.Append(w, now, testWindow)
			var s State[int]
			if _, _, err := s.Record().Read(spi.NewReader(w.Bytes()), now, testWindow); err != nil {
				t.Fatal(err)
			}
			s.Promote()
			if got := s.Record().Complete(now); got != tc.complete {
				t.Fatalf("promoted with a %s: Complete = %v", tc.name, got)
			}
			if _, found, _ := s.Record().Lookup(Key{Origin: 1, Seq: uint64(tc.records)}, now-testWindow.Keep); !found {
				t.Fatal("the newest record was not carried")
			}
			// Once the left-out records would have expired, it is whole.
			if !s.Record().Complete(now + testWindow.Keep) {
				t.Fatal("still partial a window later")
			}
			// A copy of a partial record is partial too.
			w = spi.NewWriter(nil)
			s.Record().Append(w, now, testWindow)
			var again Record
			if _, _, err := again.Read(spi.NewReader(w.Bytes()), now, testWindow); err != nil {
				t.Fatal(err)
			}
			if again.Complete(now) != tc.complete {
				t.Fatalf("a copy of it: Complete = %v", again.Complete(now))
			}
		})
	}
}

// Unconfirm marks a run as not acknowledged: Lookup finds it with an
// empty response (short and long responses alike), a copy of the record
// carries the mark, and an id not recorded is not found.
func TestUnconfirmIsFoundAndCarried(t *testing.T) {
	var d Record
	now := int64(time.Hour)
	short, long := Key{Origin: 1, Seq: 1}, Key{Origin: 1, Seq: 2}
	d.Add(short, []byte{1, 2}, now, nil, testWindow)
	d.Add(long, bytes.Repeat([]byte{7}, 3*inlineResponse), now, nil, testWindow)
	d.Add(Key{Origin: 1, Seq: 3}, []byte{3}, now, nil, testWindow)
	for _, k := range []Key{short, long} {
		if !d.Unconfirm(k) {
			t.Fatalf("Unconfirm(%v) found nothing", k)
		}
	}
	if d.Unconfirm(Key{Origin: 2, Seq: 1}) {
		t.Fatal("Unconfirm found an id never recorded")
	}
	w := spi.NewWriter(nil)
	d.Append(w, now, testWindow)
	var copied Record
	if _, _, err := copied.Read(spi.NewReader(w.Bytes()), now, testWindow); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*Record{"record": &d, "copy": &copied} {
		for _, k := range []Key{short, long} {
			if resp, found, _ := r.Lookup(k, now-testWindow.Keep); !found || len(resp) != 0 {
				t.Errorf("%s: %v found %v with response %v; want found, empty", name, k, found, resp)
			}
		}
		if resp, found, _ := r.Lookup(Key{Origin: 1, Seq: 3}, now-testWindow.Keep); !found || !bytes.Equal(resp, []byte{3}) {
			t.Errorf("%s: an acknowledged run: found %v, response %v", name, found, resp)
		}
	}
}
