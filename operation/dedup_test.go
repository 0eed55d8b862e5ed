package operation

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/operation/replica"
	"github.com/partita-go/partita/spi"
)

func TestDedupRecordLookupPruneCarry(t *testing.T) {
	// A window far longer than the test: on a loaded machine under -race
	// the records made "now" must not expire before they are looked up.
	s := New(Config{PartitionCount: 2, Routing: selfRouting{"self"}, DedupWindow: time.Minute})
	now := monoNow()
	old := now - int64(2*time.Minute)
	s.record(0, invKey{Origin: 1, Seq: 1}, []byte{1}, old, nil)
	for i := uint64(2); i <= replica.MaxCarried+10; i++ {
		s.record(0, invKey{Origin: 1, Seq: i}, []byte{byte(i)}, now, nil)
	}
	if _, ok, _ := s.lookup(0, invKey{Origin: 1, Seq: 1}); ok {
		t.Fatal("an entry older than the window was found")
	}
	if b, ok, _ := s.lookup(0, invKey{Origin: 1, Seq: 77}); !ok || b[0] != 77 {
		t.Fatalf("lookup = %v, %v", b, ok)
	}
	if _, ok, _ := s.lookup(0, invKey{Origin: 2, Seq: 77}); ok {
		t.Fatal("another origin's id matched")
	}
	w := spi.NewWriter(nil)
	s.AppendDedup(w, 0)
	if err := s.ReadDedup(spi.NewReader(w.Bytes()), 1); err != nil {
		t.Fatal(err)
	}
	if n := s.replicas[1].Record().Len(); n != replica.MaxCarried {
		t.Fatalf("carried %d records, want the newest %d", n, replica.MaxCarried)
	}
	if _, ok, _ := s.lookup(1, invKey{Origin: 1, Seq: replica.MaxCarried + 10}); !ok {
		t.Fatal("the newest record was not carried")
	}
	if _, ok, _ := s.lookup(1, invKey{Origin: 1, Seq: 5}); ok {
		t.Fatal("an old record beyond the cap was carried")
	}
	s.DropDedup(1)
	if _, ok, _ := s.lookup(1, invKey{Origin: 1, Seq: replica.MaxCarried + 10}); ok {
		t.Fatal("DropDedup kept records")
	}
}

// A carried record travels with its age, not its time (each process has
// its own monotonic clock), and the receiver keeps it for what is left of
// the window.
func TestDedupCarriesAges(t *testing.T) {
	const window, age = 10 * time.Second, 9 * time.Second
	s := New(Config{PartitionCount: 2, Routing: selfRouting{"self"}, DedupWindow: window})
	s.record(0, invKey{Origin: 1, Seq: 1}, []byte{7}, monoNow()-int64(age), nil)
	w := spi.NewWriter(nil)
	s.AppendDedup(w, 0)
	r := spi.NewReader(w.Bytes())
	partial, n, origin, seq, got := r.ReadBool(), r.ReadUvarint(), r.ReadUint64(), r.ReadUvarint(), time.Duration(r.ReadVarint())
	if r.Err() != nil || partial || n != 1 || origin != 1 || seq != 1 || got < age || got > age+time.Second {
		t.Fatalf("carried n=%d id=%d/%d age %v (err %v), want one record aged about %v", n, origin, seq, got, r.Err(), age)
	}
	if err := s.ReadDedup(spi.NewReader(w.Bytes()), 1); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.lookup(1, invKey{Origin: 1, Seq: 1}); !ok {
		t.Fatal("the carried record was not found")
	}
	d := s.replicas[1].Record()
	d.Prune(monoNow()+int64(3*time.Second), s.dedupWindow()) // past what was left of its window and slack
	if d.Len() != 0 {
		t.Fatal("the carried record outlived its window: its age was not kept")
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
			k := invKey{Origin: 5, Seq: 1}
			long1, long2 := bytes.Repeat([]byte{1}, 40), bytes.Repeat([]byte{2}, 40)
			now := monoNow()
			s.record(0, k, long1, now+int64(c.first), new(atomic.Bool))
			if _, ok, _ := s.lookup(0, k); ok != (c.first >= 0) {
				t.Fatalf("first record found = %v", ok)
			}
			busy := new(atomic.Bool)
			busy.Store(true)
			s.record(0, k, long2, now+int64(c.second), busy)
			d := s.replicas[0].Record()
			d.Prune(now+int64(c.first)+s.dedupWindow().Keep+1, s.dedupWindow()) // drops the first only
			if d.Len() != 1 {
				t.Fatalf("log holds %d records, want 1", d.Len())
			}
			resp, ok, isBusy := s.lookup(0, k)
			if !ok || !bytes.Equal(resp, long2) || !isBusy {
				t.Fatalf("lookup = %x, %v, busy %v; want the second run's response, busy", resp, ok, isBusy)
			}
		})
	}
}

// A record past the window but not yet pruned (records are dropped in
// batches) is never an answer.
func TestDedupExpiredButKeptIsNotFound(t *testing.T) {
	s := New(Config{PartitionCount: 1, Routing: selfRouting{"self"}, DedupWindow: time.Second})
	now := monoNow()
	s.record(0, invKey{Origin: 1, Seq: 1}, []byte{1}, now-s.dedupWindow().Keep-int64(5*time.Millisecond), nil)
	s.record(0, invKey{Origin: 1, Seq: 2}, []byte{2}, now, nil)
	if n := s.replicas[0].Record().Len(); n != 2 {
		t.Fatalf("log holds %d records, want the expired one still kept (2)", n)
	}
	if _, ok, _ := s.lookup(0, invKey{Origin: 1, Seq: 1}); ok {
		t.Fatal("an expired record was found")
	}
	if _, ok, _ := s.lookup(0, invKey{Origin: 1, Seq: 2}); !ok {
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
	k := invKey{Origin: 1, Seq: 1}
	long := bytes.Repeat([]byte{7}, 40)
	s.record(0, k, long, now-int64(1030*time.Millisecond), nil)
	busy := new(atomic.Bool)
	busy.Store(true)
	s.record(0, k, long, now, busy)
	s.record(0, invKey{Origin: 1, Seq: 2}, []byte{1}, now+int64(40*time.Millisecond), nil)
	s.replicas[0].Record().Prune(now+int64(100*time.Millisecond), s.dedupWindow())
	resp, ok, isBusy := s.lookup(0, k)
	if !ok || !bytes.Equal(resp, long) || !isBusy {
		t.Fatalf("lookup = %x, found %v, busy %v; want the new record's response and busy flag", resp, ok, isBusy)
	}
}

// A primary whose exactly-once record is partial (installed from a copy
// that carried only the newest replica.MaxCarried records) does not run a
// retry it cannot find: the first attempt may have run on the primary it
// took over from. The caller learns the outcome is unknown. Here the
// first attempt ran and its answer was lost (the caller's connection
// broke), and the record was then replaced by a partial one.
func TestRetryNotFoundInAPartialRecordIsIndeterminate(t *testing.T) {
	pSvc, _, members, release := heldBackupPair(t)
	defer release()
	caller := callerMember(t, "c", members, nil)
	defer caller.Shutdown()

	// A capped copy: more records than a copy carries.
	now := monoNow()
	var src replica.Record
	for i := range replica.MaxCarried + 1 {
		src.Add(invKey{Origin: 9, Seq: uint64(i + 1)}, []byte{1}, now, nil, pSvc.dedupWindow())
	}
	w := spi.NewWriter(nil)
	src.Append(w, now, pSvc.dedupWindow())

	done := invokeBacked(t, caller)
	eventually(t, func() bool { return pSvc.ReplicaVersion(1) != 0 }) // it ran; its backup is held
	installed := make(chan error, 1)
	pSvc.RunOnPartition(1, func() { installed <- pSvc.ReadDedup(spi.NewReader(w.Bytes()), 1) })
	if err := <-installed; err != nil {
		t.Fatal(err)
	}
	caller.MemberLeft("p") // the answer is lost; the caller retries
	err := <-done
	if !errors.Is(err, spi.ErrIndeterminate) {
		t.Fatalf("retry not found in a partial record: %v, want spi.ErrIndeterminate", err)
	}
}
