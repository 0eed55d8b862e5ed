package operation

import (
	"bytes"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

func TestDedupRecordLookupPruneCarry(t *testing.T) {
	// A window far longer than the test: on a loaded machine under -race
	// the records made "now" must not expire before they are looked up.
	s := New(Config{PartitionCount: 2, Routing: selfRouting{"self"}, DedupWindow: time.Minute})
	now := monoNow()
	old := now - int64(2*time.Minute)
	s.record(0, invKey{1, 1}, []byte{1}, old, nil)
	for i := uint64(2); i <= maxCarried+10; i++ {
		s.record(0, invKey{1, i}, []byte{byte(i)}, now, nil)
	}
	if _, ok, _ := s.lookup(0, invKey{1, 1}); ok {
		t.Fatal("an entry older than the window was found")
	}
	if b, ok, _ := s.lookup(0, invKey{1, 77}); !ok || b[0] != 77 {
		t.Fatalf("lookup = %v, %v", b, ok)
	}
	if _, ok, _ := s.lookup(0, invKey{2, 77}); ok {
		t.Fatal("another origin's id matched")
	}
	w := spi.NewWriter(nil)
	s.AppendDedup(w, 0)
	if err := s.ReadDedup(spi.NewReader(w.Bytes()), 1); err != nil {
		t.Fatal(err)
	}
	if n := s.dedup[1].len(); n != maxCarried {
		t.Fatalf("carried %d records, want the newest %d", n, maxCarried)
	}
	if _, ok, _ := s.lookup(1, invKey{1, maxCarried + 10}); !ok {
		t.Fatal("the newest record was not carried")
	}
	if _, ok, _ := s.lookup(1, invKey{1, 5}); ok {
		t.Fatal("an old record beyond the cap was carried")
	}
	s.DropDedup(1)
	if _, ok, _ := s.lookup(1, invKey{1, maxCarried + 10}); ok {
		t.Fatal("DropDedup kept records")
	}
}

// A carried record travels with its age, not its time (each process has
// its own monotonic clock), and the receiver keeps it for what is left of
// the window.
func TestDedupCarriesAges(t *testing.T) {
	const window, age = 10 * time.Second, 9 * time.Second
	s := New(Config{PartitionCount: 2, Routing: selfRouting{"self"}, DedupWindow: window})
	s.record(0, invKey{1, 1}, []byte{7}, monoNow()-int64(age), nil)
	w := spi.NewWriter(nil)
	s.AppendDedup(w, 0)
	r := spi.NewReader(w.Bytes())
	n, origin, seq, got := r.ReadUvarint(), r.ReadUint64(), r.ReadUvarint(), time.Duration(r.ReadVarint())
	if r.Err() != nil || n != 1 || origin != 1 || seq != 1 || got < age || got > age+time.Second {
		t.Fatalf("carried n=%d id=%d/%d age %v (err %v), want one record aged about %v", n, origin, seq, got, r.Err(), age)
	}
	if err := s.ReadDedup(spi.NewReader(w.Bytes()), 1); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.lookup(1, invKey{1, 1}); !ok {
		t.Fatal("the carried record was not found")
	}
	d := &s.dedup[1]
	s.prune(1, d, monoNow()+int64(3*time.Second)) // past what was left of its window and slack
	if d.len() != 0 {
		t.Fatal("the carried record outlived its window: its age was not kept")
	}
}

// The chunked log behaves like a plain list of (key, time, response)
// pruned by age (in batches): records across chunk boundaries, long
// responses kept aside, busy flags, and the record count the metric
// reports.
func TestDedupLogMatchesModel(t *testing.T) {
	const window = 1000
	s := New(Config{PartitionCount: 1, PartitionThreads: 1, Routing: selfRouting{"self"}, DedupWindow: window})
	type rec struct {
		key  invKey
		at   int64
		resp []byte
		busy *atomic.Bool
	}
	var model []rec
	keep := s.dedupKeep() // the window and the retries' slack
	rng := rand.New(rand.NewPCG(1, 2))
	now := int64(1 << 40)
	for i := range 20000 {
		now += int64(rng.IntN(3)) // many records share a time
		k := invKey{7, uint64(i + 1)}
		resp := make([]byte, rng.IntN(40)) // some beyond the inline size
		for j := range resp {
			resp[j] = byte(i + j)
		}
		var busy *atomic.Bool
		if rng.IntN(10) == 0 {
			busy = new(atomic.Bool)
			busy.Store(rng.IntN(2) == 0)
		}
		s.record(0, k, resp, now, busy)
		model = append(model, rec{k, now, resp, busy})
		// The log keeps every record of the window and drops expired
		// ones in batches: the oldest kept is at most a sixteenth of the
		// window past it.
		n := int(s.records[0].n.Load())
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
			// lookup reads the clock: check the log directly instead.
			d := &s.dedup[0]
			if d.len() != len(model) {
				t.Fatalf("log holds %d, model %d", d.len(), len(model))
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
	d := &s.dedup[0]
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
	s.DropDedup(0)
	if got := s.records[0].n.Load(); got != 0 {
		t.Fatalf("count %d after DropDedup", got)
	}
}

// An invocation recorded again keeps its own long response and busy flag
// when its first record is pruned: whether the first had expired (it ran
// again past the window) or was still kept (a lookup that stopped early at
// an entry stamped before a clock step back missed it).
func TestDedupReRecordedKeyKeepsItsSideData(t *testing.T) {
	const window = time.Second
	for _, c := range []struct {
		name          string
		first, second time.Duration // from now
	}{
		{"first expired", -2 * window, 0},
		{"first still kept", 0, window / 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New(Config{PartitionCount: 1, PartitionThreads: 1, Routing: selfRouting{"self"}, DedupWindow: window})
			k := invKey{5, 1}
			long1, long2 := bytes.Repeat([]byte{1}, 40), bytes.Repeat([]byte{2}, 40)
			now := monoNow()
			s.record(0, k, long1, now+int64(c.first), new(atomic.Bool))
			if _, ok, _ := s.lookup(0, k); ok != (c.first >= 0) {
				t.Fatalf("first record found = %v", ok)
			}
			busy := new(atomic.Bool)
			busy.Store(true)
			s.record(0, k, long2, now+int64(c.second), busy)
			d := &s.dedup[0]
			s.prune(0, d, now+int64(c.first)+s.dedupKeep()+1) // drops the first only
			if d.len() != 1 {
				t.Fatalf("log holds %d records, want 1", d.len())
			}
			resp, ok, isBusy := s.lookup(0, k)
			if !ok || !bytes.Equal(resp, long2) || !isBusy {
				t.Fatalf("lookup = %x, %v, busy %v; want the second run's response, busy", resp, ok, isBusy)
			}
		})
	}
}

// A quiet partition's log starts small: one record does not cost a
// largest chunk (a member holds hundreds of logs).
func TestDedupLogStartsSmall(t *testing.T) {
	s := New(Config{PartitionCount: 4096, PartitionThreads: 1, Routing: selfRouting{"self"}})
	for p := range 4096 {
		s.record(p, invKey{1, uint64(p + 1)}, []byte{1}, monoNow(), nil)
	}
	for p := range 4096 {
		if d := &s.dedup[p]; len(d.chunks) != 1 || cap(d.chunks[0]) != dedupFirstChunk || d.spare != nil {
			t.Fatalf("partition %d: %d chunks, first of capacity %d", p, len(d.chunks), cap(d.chunks[0]))
		}
	}
}

// A record past the window but not yet pruned (records are dropped in
// batches) is never an answer.
func TestDedupExpiredButKeptIsNotFound(t *testing.T) {
	s := New(Config{PartitionCount: 1, Routing: selfRouting{"self"}, DedupWindow: time.Second})
	now := monoNow()
	s.record(0, invKey{1, 1}, []byte{1}, now-s.dedupKeep()-int64(5*time.Millisecond), nil)
	s.record(0, invKey{1, 2}, []byte{2}, now, nil)
	if n := s.dedup[0].len(); n != 2 {
		t.Fatalf("log holds %d records, want the expired one still kept (2)", n)
	}
	if _, ok, _ := s.lookup(0, invKey{1, 1}); ok {
		t.Fatal("an expired record was found")
	}
	if _, ok, _ := s.lookup(0, invKey{1, 2}); !ok {
		t.Fatal("a live record was not found")
	}
}

// An expired record of an id that is recorded again (an invocation run
// again after the window) is dropped before the new record's side data
// goes in, even though pruning is batched: its later pruning must not take
// the new record's long response or busy flag with it.
func TestDedupExpiredTwinKeepsNewSideData(t *testing.T) {
	s := New(Config{PartitionCount: 1, Routing: selfRouting{"self"}, DedupWindow: time.Second})
	now := monoNow()
	k := invKey{1, 1}
	long := bytes.Repeat([]byte{7}, 40)
	s.record(0, k, long, now-int64(1030*time.Millisecond), nil)
	busy := new(atomic.Bool)
	busy.Store(true)
	s.record(0, k, long, now, busy)
	s.record(0, invKey{1, 2}, []byte{1}, now+int64(40*time.Millisecond), nil)
	s.prune(0, &s.dedup[0], now+int64(100*time.Millisecond))
	resp, ok, isBusy := s.lookup(0, k)
	if !ok || !bytes.Equal(resp, long) || !isBusy {
		t.Fatalf("lookup = %x, found %v, busy %v; want the new record's response and busy flag", resp, ok, isBusy)
	}
}

// A busy flag that stays set does not keep the runs recorded after it
// alive once their flags clear, and a lone flag at a time costs no
// allocation.
func TestDedupFlagsBehindAStuckOne(t *testing.T) {
	s := New(Config{PartitionCount: 1, PartitionThreads: 1, Routing: selfRouting{"self"}})
	now := monoNow()
	stuck := new(atomic.Bool)
	stuck.Store(true)
	s.record(0, invKey{1, 1}, []byte{1}, now, stuck)
	for i := range 10000 {
		b := new(atomic.Bool)
		b.Store(true)
		s.record(0, invKey{1, uint64(i + 2)}, []byte{1}, now, b)
		b.Store(false) // acknowledged
	}
	d := &s.dedup[0]
	held := 0
	for _, f := range d.flags[d.flagHead:] {
		if f != nil {
			held++
		}
	}
	if held > 200 {
		t.Fatalf("%d flags kept behind the stuck one", held)
	}
	if _, _, busy := s.lookup(0, invKey{1, 1}); !busy {
		t.Fatal("the stuck run's flag was lost")
	}
	if _, ok, busy := s.lookup(0, invKey{1, 500}); !ok || busy {
		t.Fatalf("an acknowledged run: found %v, busy %v", ok, busy)
	}
	stuck.Store(false)
	seq := uint64(20000)
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		b := new(atomic.Bool) // the run's, allocated by the caller
		b.Store(true)
		s.record(0, invKey{1, seq}, []byte{1}, now, b)
		b.Store(false)
	})
	if allocs > 1.01 { // the flag itself
		t.Fatalf("%.2f allocations per busy record", allocs)
	}
}
