package partition

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/partita-go/partita/spi"
)

// The hash must never change: data placement depends on it across
// processes and releases. The raw hashes of "" and "abc" are the XXH64
// reference values (seed 0).
func TestIDKnownVectors(t *testing.T) {
	for _, tc := range []struct {
		key  string
		hash uint64
		want int
	}{
		{"", 0xef46db3751d8e999, 171},
		{"abc", 0x44bc2cf5ad770999, 74},
		{"0counter", 0xbd17173835d5bf84, 230},
		{"1counter", 0x71760247b309c92a, 242},
		{"2counter", 0x909e49c21907fe6f, 247},
		{"3counter", 0xe72d2e38f1ca70e9, 211},
		{"hello", 0x26c7827d889f6da3, 103},
	} {
		if h := xxhash.Sum64String(tc.key); h != tc.hash {
			t.Errorf("xxhash64(%q) = %#x, want %#x", tc.key, h, tc.hash)
		}
		if got := ID(tc.key, DefaultCount); got != tc.want {
			t.Errorf("ID(%q) = %d, want %d", tc.key, got, tc.want)
		}
		if got := IDBytes([]byte(tc.key), DefaultCount); got != tc.want {
			t.Errorf("IDBytes(%q) = %d, want %d", tc.key, got, tc.want)
		}
	}
}

func members(n int) []string {
	m := make([]string, n)
	for i := range m {
		m[i] = fmt.Sprintf("m%d", i)
	}
	return m
}

func checkBalanced(t *testing.T, owners, ms []string, count int) {
	t.Helper()
	counts := map[string]int{}
	for p, o := range owners {
		if o == "" {
			t.Fatalf("partition %d has no owner", p)
		}
		counts[o]++
	}
	lo, hi := count/len(ms), (count+len(ms)-1)/len(ms)
	for _, m := range ms {
		if c := counts[m]; c < lo || c > hi {
			t.Fatalf("member %s owns %d partitions, want %d..%d (counts %v)", m, c, lo, hi, counts)
		}
	}
	if len(counts) != len(ms) {
		t.Fatalf("owners %v include members not in %v", counts, ms)
	}
}

func moved(a, b []string) int {
	n := 0
	for p := range a {
		if a[p] != b[p] {
			n++
		}
	}
	return n
}

func TestRebalanceBalancedAndMinimal(t *testing.T) {
	const count = DefaultCount
	var owners []string
	for n := 1; n <= 9; n++ {
		ms := members(n)
		next := Rebalance(owners, ms, count)
		checkBalanced(t, next, ms, count)
		if owners != nil {
			// Joining one member moves exactly what the new member must own.
			if got, want := moved(owners, next), count/n; got > want+1 {
				t.Errorf("%d -> %d members moved %d partitions, want at most %d", n-1, n, got, want+1)
			}
		}
		if again := Rebalance(next, ms, count); moved(next, again) != 0 {
			t.Errorf("rebalancing a balanced table moved %d partitions", moved(next, again))
		}
		owners = next
	}
	// A member leaves: only its partitions move.
	ms := members(9)
	left := append(append([]string(nil), ms[:4]...), ms[5:]...)
	next := Rebalance(owners, left, count)
	checkBalanced(t, next, left, count)
	lost := 0
	for p := range owners {
		if owners[p] == "m4" {
			lost++
		} else if owners[p] != next[p] {
			t.Errorf("partition %d moved from surviving %s to %s", p, owners[p], next[p])
		}
	}
	if lost == 0 {
		t.Fatal("m4 owned nothing")
	}
}

func TestRebalanceDeterministic(t *testing.T) {
	a := Rebalance(nil, members(5), 100)
	b := Rebalance(nil, members(5), 100)
	if moved(a, b) != 0 {
		t.Fatal("same input gave different tables")
	}
	checkBalanced(t, Rebalance(nil, members(3), 2), members(3)[:2], 2)
}

func TestTableEncodeDecode(t *testing.T) {
	ms := members(3)
	tab := &Table{Term: 3, Version: 42, Owners: Rebalance(nil, ms, 7), Members: map[string]string{"m0": "a:1", "m1": "b:2", "m2": "c:3"}}
	tab.Owners[3] = ""
	w := spi.NewWriter(nil)
	tab.Encode(w)
	got, err := Decode(spi.NewReader(w.Bytes()), 7)
	if err != nil {
		t.Fatal(err)
	}
	if got.Term != 3 || got.Version != 42 || moved(got.Owners, tab.Owners) != 0 || len(got.Members) != 3 || got.Members["m1"] != "b:2" {
		t.Fatalf("decoded %+v, want %+v", got, tab)
	}
	if _, err := Decode(spi.NewReader(w.Bytes()), 8); err == nil {
		t.Fatal("decoding a 7-partition table as 8 partitions succeeded")
	}
	for i := 0; i < len(w.Bytes()); i++ {
		if _, err := Decode(spi.NewReader(w.Bytes()[:i]), 7); err == nil {
			t.Fatalf("decoding a table truncated to %d bytes succeeded", i)
		}
	}
}

// Tables order by term, then version: a table of a newer term is newer
// whatever the versions (a master that was replaced may still make
// tables of higher versions in its old term).
func TestTableNewer(t *testing.T) {
	old := &Table{Term: 1, Version: 90}
	for _, tc := range []struct {
		t     *Table
		newer bool
	}{
		{&Table{Term: 2, Version: 10}, true},
		{&Table{Term: 1, Version: 91}, true},
		{&Table{Term: 1, Version: 90}, false},
		{&Table{Term: 0, Version: 500}, false},
	} {
		if got := tc.t.Newer(old); got != tc.newer {
			t.Errorf("term %d version %d newer than term 1 version 90: %v, want %v", tc.t.Term, tc.t.Version, got, tc.newer)
		}
	}
	if !old.Newer(nil) {
		t.Error("a table is not newer than none")
	}
	if c := old.Clone(); c.Term != 1 || c.Version != 90 {
		t.Errorf("Clone: term %d version %d", c.Term, c.Version)
	}
}

// A joining member takes partitions from the whole range, not one block,
// so that a handful of keys spreads over the members.
func TestRebalanceSpreadsPartitions(t *testing.T) {
	two := Rebalance(Rebalance(nil, members(1), DefaultCount), members(2), DefaultCount)
	for p := 0; p+1 < DefaultCount; p += 2 {
		if two[p] == two[p+1] {
			t.Fatalf("partitions %d and %d both on %s: the newcomer got a block", p, p+1, two[p])
		}
	}
	// The seed's four counters land on both members.
	seen := map[string]bool{}
	for _, k := range []string{"0counter", "1counter", "2counter", "3counter"} {
		seen[two[ID(k, DefaultCount)]] = true
	}
	if len(seen) != 2 {
		t.Fatalf("the four counters are on %v, want both members", seen)
	}
}

func TestRebalanceBackups(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 7} {
		for _, b := range []int{0, 1, 2, 6} {
			ms := members(n)
			owners := Rebalance(nil, ms, DefaultCount)
			backups := RebalanceBackups(owners, nil, ms, b)
			want := min(b, n-1)
			if want == 0 {
				if backups != nil {
					t.Fatalf("n=%d b=%d: backups %v, want none", n, b, backups[0])
				}
				continue
			}
			load := map[string]int{}
			for p := range owners {
				if len(backups[p]) != want {
					t.Fatalf("n=%d b=%d: partition %d has %d backups", n, b, p, len(backups[p]))
				}
				seen := map[string]bool{owners[p]: true}
				for _, id := range backups[p] {
					if seen[id] || id == "" {
						t.Fatalf("n=%d b=%d: partition %d replicas %s %v repeat a member", n, b, p, owners[p], backups[p])
					}
					seen[id] = true
					load[id]++
				}
			}
			lo, hi := DefaultCount*want/n-1, (DefaultCount*want+n-1)/n+1
			for _, m := range ms {
				if load[m] < lo || load[m] > hi {
					t.Fatalf("n=%d b=%d: member %s holds %d backups, want about %d..%d", n, b, m, load[m], lo, hi)
				}
			}
			// Stable: the same inputs keep every backup where it is.
			again := RebalanceBackups(owners, backups, ms, b)
			for p := range again {
				for i := range again[p] {
					if again[p][i] != backups[p][i] {
						t.Fatalf("n=%d b=%d: rebalancing moved backup %d of partition %d", n, b, i+1, p)
					}
				}
			}
		}
	}
}

func TestTableEncodeDecodeBackups(t *testing.T) {
	ms := members(4)
	owners := Rebalance(nil, ms, 9)
	tab := &Table{Version: 3, Owners: owners, Backups: RebalanceBackups(owners, nil, ms, 2),
		Members: map[string]string{"m0": "a:1", "m1": "b:2", "m2": "c:3", "m3": "d:4"}}
	w := spi.NewWriter(nil)
	tab.Encode(w)
	got, err := Decode(spi.NewReader(w.Bytes()), 9)
	if err != nil {
		t.Fatal(err)
	}
	for p := range owners {
		for i := 0; i <= 2; i++ {
			if got.Replica(p, i) != tab.Replica(p, i) {
				t.Fatalf("partition %d replica %d: %q, want %q", p, i, got.Replica(p, i), tab.Replica(p, i))
			}
			if id := tab.Replica(p, i); got.ReplicaIndex(p, id) != i {
				t.Fatalf("ReplicaIndex(%d, %s) = %d, want %d", p, id, got.ReplicaIndex(p, id), i)
			}
		}
	}
	if got.BackupCount() != 2 || got.ReplicaIndex(0, "nobody") != -1 {
		t.Fatal("backup count or missing replica index wrong")
	}
}

func TestTableEncodeDecodeIncoming(t *testing.T) {
	ms := members(4)
	owners := Rebalance(nil, ms, 9)
	tab := &Table{Version: 3, Owners: owners, Backups: RebalanceBackups(owners, nil, ms, 2),
		Members: map[string]string{"m0": "a:1", "m1": "b:2", "m2": "c:3", "m3": "d:4"}}
	// m3 takes over backup 2 of partition 4 from whoever holds it.
	p := 4
	in := ""
	for _, m := range ms {
		if tab.ReplicaIndex(p, m) < 0 {
			in = m
		}
	}
	tab.Incoming = make([][]string, 9)
	tab.Incoming[p] = []string{"", in}
	w := spi.NewWriter(nil)
	tab.Encode(w)
	got, err := Decode(spi.NewReader(w.Bytes()), 9)
	if err != nil {
		t.Fatal(err)
	}
	if !got.IsIncoming(p, in) || got.ReplicaIndex(p, in) != 2 || !got.HasIncoming() {
		t.Fatalf("incoming backup lost: IsIncoming %v, ReplicaIndex %d", got.IsIncoming(p, in), got.ReplicaIndex(p, in))
	}
	if got.Replica(p, 2) != tab.Replica(p, 2) || slices.Contains(got.BackupsOf(p), in) {
		t.Fatalf("an incoming backup is not a replica yet: backups %q", got.BackupsOf(p))
	}
	if c := got.Clone(); !c.IsIncoming(p, in) {
		t.Fatal("Clone dropped the incoming backup")
	}
	// An incoming backup beyond the table's backup count is refused.
	bad := tab.Clone()
	bad.Incoming[p] = []string{"", "", in}
	w = spi.NewWriter(nil)
	bad.Encode(w)
	if _, err := Decode(spi.NewReader(w.Bytes()), 9); err == nil {
		t.Fatal("decoded an incoming backup 3 of a table with 2 backups")
	}
}

// Validate, table by table: a member listed twice among one partition's
// replicas (serving or incoming) is refused, and so is Decode of such a
// table; the layouts the master makes pass.
func TestTableValidate(t *testing.T) {
	for _, tc := range []struct {
		name              string
		owner             string
		backups, incoming []string
		err               string // a substring of the error; "" for valid
	}{
		{"no backups", "a", nil, nil, ""},
		{"two backups", "a", []string{"b", "c"}, nil, ""},
		{"an empty slot", "a", []string{"", "c"}, nil, ""},
		{"moving backup", "a", []string{"b", "c"}, []string{"", "d"}, ""},
		{"two moving backups", "a", []string{"b", "c"}, []string{"d", "e"}, ""},
		{"backup twice", "a", []string{"b", "b"}, nil, "member b twice: as backup 1 and as backup 2"},
		{"owner as backup", "a", []string{"b", "a"}, nil, "member a twice: as owner and as backup 2"},
		// What repair made of a promotion with two backups.
		{"backup twice, one being replaced", "a", []string{"b", "b"}, []string{"", "c"}, "member b twice: as backup 1 and as backup 2"},
		{"serving and incoming", "a", []string{"b", "c"}, []string{"", "b"}, "member b twice: as backup 1 and as incoming backup 2"},
		{"incoming twice", "a", []string{"b", "c"}, []string{"d", "d"}, "member d twice: as incoming backup 1 and as incoming backup 2"},
		{"owner incoming", "a", []string{"b", "c"}, []string{"a", ""}, "member a twice: as owner and as incoming backup 1"},
		{"incoming slots beyond the backups", "a", []string{"b"}, []string{"", "c"}, "2 incoming slots for 1 backups"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := &Table{Version: 1, Owners: []string{"x", tc.owner},
				Members: map[string]string{"a": "a:1", "b": "b:1", "c": "c:1", "d": "d:1", "e": "e:1", "x": "x:1"}}
			if tc.backups != nil {
				other := make([]string, len(tc.backups))
				tab.Backups = [][]string{other, tc.backups}
			}
			if tc.incoming != nil {
				tab.Incoming = [][]string{nil, tc.incoming}
			}
			err := tab.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), "partition 1 ") || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Validate: %v, want an error about partition 1 with %q", err, tc.err)
			}
			w := spi.NewWriter(nil)
			tab.Encode(w)
			_, derr := Decode(spi.NewReader(w.Bytes()), 2)
			if (derr == nil) != (tc.err == "") || derr != nil && !errors.Is(derr, spi.ErrProtocol) {
				t.Fatalf("Decode: %v, want refused (a protocol error) = %v", derr, tc.err != "")
			}
		})
	}
}
