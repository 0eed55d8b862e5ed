package partition

import (
	"bytes"
	"testing"

	"github.com/partita-go/partita/spi"
)

// FuzzDecode feeds Decode tables as a peer may send them: it never
// panics, a table it accepts is valid (Validate), and it encodes back to
// bytes it decodes to the same table.
func FuzzDecode(f *testing.F) {
	ms := []string{"m0", "m1", "m2", "m3"}
	owners := Rebalance(nil, ms, 9)
	tab := &Table{Version: 3, Owners: owners, Backups: RebalanceBackups(owners, nil, ms, 2),
		Members: map[string]string{"m0": "a:1", "m1": "b:2", "m2": "c:3", "m3": "d:4"}}
	w := spi.NewWriter(nil)
	tab.Encode(w)
	f.Add(bytes.Clone(w.Bytes()))
	// The member holding no replica of partition 4 takes over its backup 2.
	tab.Incoming = make([][]string, 9)
	for _, m := range ms {
		if tab.ReplicaIndex(4, m) < 0 {
			tab.Incoming[4] = []string{"", m}
		}
	}
	w = spi.NewWriter(nil)
	tab.Encode(w)
	f.Add(bytes.Clone(w.Bytes()))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Decode(spi.NewReader(b), 9)
		if err != nil {
			return
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid table: %v", err)
		}
		w := spi.NewWriter(nil)
		got.Encode(w)
		again, err := Decode(spi.NewReader(w.Bytes()), 9)
		if err != nil {
			t.Fatalf("a decoded table does not decode after encoding: %v", err)
		}
		for p := range got.Owners {
			for i := 0; i <= got.BackupCount(); i++ {
				if got.Replica(p, i) != again.Replica(p, i) {
					t.Fatalf("partition %d replica %d: %q, then %q", p, i, got.Replica(p, i), again.Replica(p, i))
				}
			}
			for _, id := range got.IncomingOf(p) {
				if id != "" && !again.IsIncoming(p, id) {
					t.Fatalf("partition %d: incoming %q lost", p, id)
				}
			}
		}
	})
}
