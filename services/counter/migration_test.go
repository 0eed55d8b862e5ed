package counter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	stdmaps "maps" // the package has its own maps function
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/partita-go/partita/spi"
)

const testPartitions = 8

// newTestService returns a Service with empty containers and no engine,
// enough for the migration methods, which touch only the containers and
// the logger.
func newTestService(log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{log: log, containers: make([]container, testPartitions), engine: &pinEngine{}}
	for i := range s.containers {
		s.containers[i].counters = make(map[string]*pnCounter)
	}
	return s
}

func encode(op spi.Operation) []byte {
	w := spi.NewWriter(nil)
	op.WriteData(w)
	return bytes.Clone(w.Bytes())
}

func decode(t *testing.T, b []byte) *CounterMigrationOperation {
	t.Helper()
	op := new(CounterMigrationOperation)
	r := spi.NewReader(b)
	if err := op.ReadData(r); err != nil {
		t.Fatalf("ReadData(%x): %v", b, err)
	}
	if r.Remaining() != 0 {
		t.Fatalf("ReadData(%x) left %d bytes", b, r.Remaining())
	}
	return op
}

// stateOf returns a state of value v under one origin.
func stateOf(origin uint64, v int64) State {
	var c pnCounter
	c.add(origin, v)
	return c.state()
}

// put sets counter name to value v, counted under one test origin.
func (c *container) put(name string, v int64) { c.set(map[string]State{name: stateOf(7, v)}) }

// putAll puts each value of m.
func (c *container) putAll(m map[string]int64) {
	for name, v := range m {
		c.put(name, v)
	}
}

func equalStates(a, b map[string]State) bool {
	return stdmaps.EqualFunc(a, b, State.Equal)
}

var sampleStates = map[string]State{
	"hits":    {Entries: []Entry{{Origin: 1, P: 42}}},
	"":        {Entries: []Entry{{Origin: 1, N: 1}, {Origin: math.MaxUint64, P: 0, N: 0}}},
	"misses":  stateOf(3, math.MinInt64),
	"bytes":   stateOf(1<<63, math.MaxInt64),
	"zero":    {},
	"émoji-☃": {Entries: []Entry{{Origin: 5, P: 9, N: 2}, {Origin: 6, P: math.MaxUint64, N: math.MaxUint64}}},
	"a":       stateOf(0xdeadbeef, 1<<40),
}

func TestCounterMigrationOperationRoundTrip(t *testing.T) {
	b := encode(&CounterMigrationOperation{Counters: sampleStates})
	got := decode(t, b)
	if !equalStates(got.Counters, sampleStates) {
		t.Fatalf("round trip = %v, want %v", got.Counters, sampleStates)
	}
	// Re-encoding the decoded value gives the same bytes.
	if b2 := encode(got); !bytes.Equal(b, b2) {
		t.Fatalf("re-encoding differs:\n%x\n%x", b, b2)
	}
}

func TestCounterMigrationOperationDeterministic(t *testing.T) {
	// Maps with the same contents built in opposite orders, encoded many
	// times: Go randomises map iteration, so an unsorted encoder would
	// differ sooner or later.
	names := make([]string, 0, 50)
	for i := range 50 {
		names = append(names, fmt.Sprintf("c%02d", i))
	}
	fwd, rev := make(map[string]State), make(map[string]State)
	for i, n := range names {
		fwd[n] = stateOf(uint64(i+1), int64(i))
	}
	for i := len(names) - 1; i >= 0; i-- {
		rev[names[i]] = stateOf(uint64(i+1), int64(i))
	}
	want := encode(&CounterMigrationOperation{Counters: fwd})
	for i := range 20 {
		for _, m := range []map[string]State{fwd, rev} {
			if got := encode(&CounterMigrationOperation{Counters: m}); !bytes.Equal(got, want) {
				t.Fatalf("encoding %d differs:\n%x\nwant\n%x", i, got, want)
			}
		}
	}

	// The exact layout: format, count, then per counter in name order its
	// name, entry count and entries (origin little-endian, P, N).
	got := encode(&CounterMigrationOperation{Counters: map[string]State{
		"b": {Entries: []Entry{{Origin: 1, P: 1, N: 3}, {Origin: 2, P: 300}}},
		"a": {},
	}})
	exp := []byte{2, 2, 1, 'a', 0, 1, 'b', 2,
		1, 0, 0, 0, 0, 0, 0, 0, 1, 3,
		2, 0, 0, 0, 0, 0, 0, 0, 0xac, 0x02, 0}
	if !bytes.Equal(got, exp) {
		t.Fatalf("encoding = %x, want %x", got, exp)
	}
}

func TestCounterMigrationOperationEmpty(t *testing.T) {
	for _, op := range []*CounterMigrationOperation{{}, {Counters: map[string]State{}}} {
		b := encode(op)
		if !bytes.Equal(b, []byte{2, 0}) {
			t.Fatalf("empty encoding = %x, want 0200", b)
		}
		if got := decode(t, b); len(got.Counters) != 0 {
			t.Fatalf("empty round trip = %v", got.Counters)
		}
	}
}

func TestCounterMigrationOperationTruncated(t *testing.T) {
	b := encode(&CounterMigrationOperation{Counters: sampleStates})
	for i := range len(b) {
		op := new(CounterMigrationOperation)
		if err := op.ReadData(spi.NewReader(b[:i])); err == nil {
			t.Fatalf("ReadData of the first %d of %d bytes succeeded: %v", i, len(b), op.Counters)
		} else if !errors.Is(err, spi.ErrProtocol) {
			t.Fatalf("ReadData of %d bytes: %v, want ErrProtocol", i, err)
		}
	}
}

// Format 1, the values alone with no format byte, and any other format
// are refused, not misread.
func TestCounterMigrationOperationOtherFormat(t *testing.T) {
	for _, b := range [][]byte{
		{1, 1, 'a', 2}, // format 1: one counter a=1
		{3, 0},         // a later format
		{0},            // format 1: no counter
	} {
		if err := new(CounterMigrationOperation).ReadData(spi.NewReader(b)); !errors.Is(err, spi.ErrProtocol) {
			t.Fatalf("ReadData(%x): err = %v, want ErrProtocol", b, err)
		}
	}
}

func TestCounterMigrationOperationHugeCount(t *testing.T) {
	for _, n := range []uint64{math.MaxUint64, 1 << 62, math.MaxInt64, 1 << 31, 3} {
		b := binary.AppendUvarint([]byte{2}, n)
		b = append(b, 1, 'x', 0, 1) // room for 2 counters at most
		op := new(CounterMigrationOperation)
		err := op.ReadData(spi.NewReader(b))
		if !errors.Is(err, spi.ErrProtocol) {
			t.Fatalf("count %d in %d bytes: err = %v, want ErrProtocol", n, len(b), err)
		}
	}
	// A varint that overflows 64 bits.
	bad := append([]byte{2}, bytes.Repeat([]byte{0xff}, 11)...)
	if err := new(CounterMigrationOperation).ReadData(spi.NewReader(bad)); !errors.Is(err, spi.ErrProtocol) {
		t.Fatalf("overlong count: err = %v, want ErrProtocol", err)
	}
}

func TestCounterMigrationOperationDuplicateName(t *testing.T) {
	b := []byte{2, 2, 1, 'a', 0, 1, 'a', 0}
	if err := new(CounterMigrationOperation).ReadData(spi.NewReader(b)); !errors.Is(err, spi.ErrProtocol) {
		t.Fatalf("duplicate name: err = %v, want ErrProtocol", err)
	}
}

// Entries must come in ascending origin order, each origin once; a count
// of entries the bytes cannot hold is refused before any allocation.
func TestCounterMigrationOperationBadEntries(t *testing.T) {
	entry := func(origin byte) []byte { return []byte{origin, 0, 0, 0, 0, 0, 0, 0, 1, 0} }
	for name, b := range map[string][]byte{
		"repeated origin": slices.Concat([]byte{2, 1, 1, 'a', 2}, entry(1), entry(1)),
		"descending":      slices.Concat([]byte{2, 1, 1, 'a', 2}, entry(2), entry(1)),
		"huge count":      slices.Concat([]byte{2, 1, 1, 'a'}, binary.AppendUvarint(nil, 1<<40), entry(1)),
		"two, room for 1": slices.Concat([]byte{2, 1, 1, 'a', 2}, entry(1)),
	} {
		if err := new(CounterMigrationOperation).ReadData(spi.NewReader(b)); !errors.Is(err, spi.ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", name, err)
		}
	}
}

func TestOperationTypesIncludeMigration(t *testing.T) {
	seen := make(map[uint16]bool)
	found := false
	for _, ot := range new(Service).OperationTypes() {
		if seen[ot.ID] {
			t.Fatalf("operation type id %d registered twice", ot.ID)
		}
		seen[ot.ID] = true
		if ot.ID == 3 {
			if _, ok := ot.New().(*CounterMigrationOperation); !ok {
				t.Fatalf("type 3 makes %T, want *CounterMigrationOperation", ot.New())
			}
			found = true
		}
	}
	if !found {
		t.Fatal("CounterMigrationOperation is not registered as type 3")
	}
}

// logLines returns the lines of buf that contain msg.
func logLines(buf *bytes.Buffer, msg string) []string {
	var out []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, msg) {
			out = append(out, l)
		}
	}
	return out
}

func debugLogger(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const migPartition = 5

func migrationEvents() (src, dst spi.PartitionMigrationEvent) {
	src = spi.PartitionMigrationEvent{
		PartitionID: migPartition, Endpoint: spi.MigrationSource,
		CurrentReplicaIndex: 0, NewReplicaIndex: -1, Source: "m1", Destination: "m2",
	}
	dst = spi.PartitionMigrationEvent{
		PartitionID: migPartition, Endpoint: spi.MigrationDestination,
		CurrentReplicaIndex: -1, NewReplicaIndex: 0, Source: "m1", Destination: "m2",
	}
	return src, dst
}

// replicate runs the source half of a migration up to the transfer and the
// destination half up to the run of the operation, through the wire
// encoding.
func replicate(t *testing.T, src, dst *Service, srcEv, dstEv spi.PartitionMigrationEvent) {
	t.Helper()
	src.BeforeMigration(srcEv)
	dst.BeforeMigration(dstEv)
	op := src.PrepareReplicationOperation(spi.PartitionReplicationEvent{
		PartitionID: migPartition, ReplicaIndex: 0, Destination: "m2",
	})
	if op == nil {
		t.Fatal("PrepareReplicationOperation returned nil for a partition with counters")
	}
	if _, ok := op.(*CounterMigrationOperation); !ok {
		t.Fatalf("PrepareReplicationOperation returned %T", op)
	}
	got := decode(t, encode(op))
	if err := got.Run(&spi.OpContext{PartitionID: migPartition, Service: dst}); err != nil {
		t.Fatalf("Run on the destination: %v", err)
	}
}

func TestMigrationCommit(t *testing.T) {
	var srcLog, dstLog bytes.Buffer
	src, dst := newTestService(debugLogger(&srcLog)), newTestService(debugLogger(&dstLog))
	want := map[string]int64{"a": 1, "b": -2, "c": 300}
	src.containers[migPartition].putAll(want)
	src.containers[2].put("other", 9) // another partition, not migrating
	dst.containers[migPartition].put("a", 99)

	srcEv, dstEv := migrationEvents()
	replicate(t, src, dst, srcEv, dstEv)
	src.CommitMigration(srcEv)
	dst.CommitMigration(dstEv)

	if n := len(src.containers[migPartition].counters); n != 0 {
		t.Fatalf("source still holds %v after commit", src.containers[migPartition].values())
	}
	if v := src.containers[2].values()["other"]; v != 9 {
		t.Fatalf("source lost partition 2's counter: %d", v)
	}
	if got := dst.containers[migPartition].values(); !stdmaps.Equal(got, want) {
		t.Fatalf("destination holds %v, want %v", got, want)
	}
	for i, c := range dst.containers {
		if i != migPartition && len(c.counters) != 0 {
			t.Fatalf("destination partition %d holds %v", i, c.values())
		}
	}

	// One debug line per commit, with partition, endpoint and count.
	for _, tc := range []struct {
		buf      *bytes.Buffer
		endpoint string
	}{{&srcLog, "source"}, {&dstLog, "destination"}} {
		lines := logLines(tc.buf, "migration committed")
		if len(lines) != 1 {
			t.Fatalf("%s logged %d commit lines: %q", tc.endpoint, len(lines), tc.buf.String())
		}
		for _, s := range []string{"partition=5", "endpoint=" + tc.endpoint, "counters=3"} {
			if !strings.Contains(lines[0], s) {
				t.Fatalf("%s commit line %q lacks %q", tc.endpoint, lines[0], s)
			}
		}
		if n := strings.Count(strings.TrimSpace(tc.buf.String()), "\n") + 1; n != 1 {
			t.Fatalf("%s logged %d lines, want 1: %q", tc.endpoint, n, tc.buf.String())
		}
	}
}

// A source that stays a replica of the partition keeps its counters.
func TestMigrationCommitSourceKeepsReplica(t *testing.T) {
	src := newTestService(nil)
	src.containers[migPartition].put("a", 1)
	ev, _ := migrationEvents()
	ev.NewReplicaIndex = 1
	src.CommitMigration(ev)
	if v, ok := src.containers[migPartition].values()["a"]; !ok || v != 1 {
		t.Fatalf("source with new replica index 1 lost its counter (%d, %v)", v, ok)
	}
}

func TestMigrationRollback(t *testing.T) {
	var dstLog bytes.Buffer
	src, dst := newTestService(nil), newTestService(debugLogger(&dstLog))
	want := map[string]int64{"a": 1, "b": -2}
	src.containers[migPartition].putAll(want)

	srcEv, dstEv := migrationEvents()
	replicate(t, src, dst, srcEv, dstEv)
	if got := dst.containers[migPartition].values(); !stdmaps.Equal(got, want) {
		t.Fatalf("destination received %v, want %v", got, want)
	}
	src.RollbackMigration(srcEv)
	dst.RollbackMigration(dstEv)

	if got := src.containers[migPartition].values(); !stdmaps.Equal(got, want) {
		t.Fatalf("source holds %v after rollback, want %v", got, want)
	}
	if got := dst.containers[migPartition].values(); len(got) != 0 {
		t.Fatalf("destination kept %v after rollback", got)
	}
	lines := logLines(&dstLog, "migration rolled back")
	if len(lines) != 1 || !strings.Contains(lines[0], "endpoint=destination") ||
		!strings.Contains(lines[0], "partition=5") || !strings.Contains(lines[0], "counters=2") {
		t.Fatalf("rollback log = %q", dstLog.String())
	}
}

// A destination that already held a replica keeps its data on rollback.
func TestMigrationRollbackDestinationWithReplica(t *testing.T) {
	dst := newTestService(nil)
	dst.containers[migPartition].put("a", 1)
	_, ev := migrationEvents()
	ev.CurrentReplicaIndex = 1
	dst.RollbackMigration(ev)
	if len(dst.containers[migPartition].counters) != 1 {
		t.Fatal("destination that held replica 1 lost its counters on rollback")
	}
}

func TestPrepareReplicationOperationEmpty(t *testing.T) {
	s := newTestService(nil)
	s.containers[1].put("elsewhere", 1)
	if op := s.PrepareReplicationOperation(spi.PartitionReplicationEvent{PartitionID: migPartition}); op != nil {
		t.Fatalf("empty partition: got %#v, want nil", op)
	}
}

// The operation holds a copy: when the destination is local the same value
// runs there, and when it is remote it is encoded later, so it must not see
// the source's container change.
func TestPrepareReplicationOperationCopies(t *testing.T) {
	src, dst := newTestService(nil), newTestService(nil)
	src.containers[migPartition].put("a", 1)
	op := src.PrepareReplicationOperation(spi.PartitionReplicationEvent{PartitionID: migPartition})
	src.containers[migPartition].counter("a").add(7, 1) // the same entry, in place
	src.containers[migPartition].counter("a").add(8, 1) // another entry
	src.containers[migPartition].put("b", 3)
	if got := op.(*CounterMigrationOperation).Counters; !equalStates(got, map[string]State{"a": stateOf(7, 1)}) {
		t.Fatalf("operation sees the source's later changes: %v", got)
	}
	// Run without encoding (local destination), then change and clear
	// the source.
	if err := op.Run(&spi.OpContext{PartitionID: migPartition, Service: dst}); err != nil {
		t.Fatal(err)
	}
	src.containers[migPartition].counter("a").add(7, 1)
	src.ClearPartitionReplica(migPartition)
	if got := dst.containers[migPartition].states(); !equalStates(got, map[string]State{"a": stateOf(7, 1)}) {
		t.Fatalf("destination holds %v", got)
	}
	// And the destination's increments do not reach the operation.
	dst.containers[migPartition].counter("a").add(7, 5)
	if got := op.(*CounterMigrationOperation).Counters["a"].Value(); got != 1 {
		t.Fatalf("the destination's increment reached the operation: %d", got)
	}
}

func TestClearPartitionReplica(t *testing.T) {
	s := newTestService(nil)
	s.containers[migPartition].put("a", 1)
	s.containers[3].put("b", 2)
	s.ClearPartitionReplica(migPartition)
	if len(s.containers[migPartition].counters) != 0 {
		t.Fatal("partition not cleared")
	}
	if s.containers[3].values()["b"] != 2 {
		t.Fatal("another partition was cleared")
	}
}

func FuzzCounterMigrationRead(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{2, 0})
	f.Add([]byte{0})                       // format 1
	f.Add([]byte{2, 1, 'a', 2, 1, 'b', 3}) // format 1
	f.Add([]byte{2, 2, 1, 'a', 0, 1, 'b', 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 3})
	f.Add([]byte{2, 2, 1, 'a', 0, 1, 'a', 0})
	f.Add([]byte{2, 1, 1, 'a', 2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0})
	f.Add(encode(&CounterMigrationOperation{Counters: sampleStates}))
	f.Add(binary.AppendUvarint([]byte{2}, math.MaxUint64))
	f.Add(append(binary.AppendUvarint([]byte{2}, 1<<40), 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		op := new(CounterMigrationOperation)
		r := spi.NewReader(b)
		if err := op.ReadData(r); err != nil {
			return
		}
		// What decodes re-encodes to a value that decodes alike.
		again := new(CounterMigrationOperation)
		if err := again.ReadData(spi.NewReader(encode(op))); err != nil {
			t.Fatalf("re-encoded %v does not decode: %v", op.Counters, err)
		}
		if !equalStates(op.Counters, again.Counters) {
			t.Fatalf("re-decoded %v, want %v", again.Counters, op.Counters)
		}
	})
}
