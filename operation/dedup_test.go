package operation

import (
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

func TestDedupRecordLookupPruneCarry(t *testing.T) {
	s := New(Config{PartitionCount: 2, Routing: selfRouting{"self"}, DedupWindow: time.Second})
	now := time.Now().UnixNano()
	old := now - int64(2*time.Second)
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
	if n := len(s.dedup[1].entries); n != maxCarried {
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
