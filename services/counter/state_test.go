package counter

import (
	"cmp"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/partita-go/partita/spi"
	"github.com/partita-go/partita/spi/mergepolicy"
)

// randomState returns a state over a few origins, so that two states
// often share some.
func randomState(r *rand.Rand) State {
	var c pnCounter
	for range r.IntN(8) {
		amount := r.Int64N(1000) - 500
		if r.IntN(20) == 0 {
			amount = math.MinInt64 + r.Int64N(3)
		}
		c.add(uint64(r.IntN(6)+1), amount)
	}
	return c.state()
}

func TestStateMergeLaws(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		a, b, c := randomState(r), randomState(r), randomState(r)
		ab := a.Merge(b)
		if err := ab.check(); err != nil {
			t.Fatalf("%v merged with %v: %v", a, b, err)
		}
		if !ab.Equal(b.Merge(a)) {
			t.Fatalf("not commutative: %v, %v", a, b)
		}
		if !ab.Merge(c).Equal(a.Merge(b.Merge(c))) {
			t.Fatalf("not associative: %v, %v, %v", a, b, c)
		}
		if !a.Merge(a).Equal(a) {
			t.Fatalf("not idempotent: %v", a)
		}
		// A state merged with one it grew into is the grown one.
		grown := newCounter(a)
		grown.add(uint64(r.IntN(8)+1), r.Int64N(100))
		if !a.Merge(grown.state()).Equal(grown.state()) {
			t.Fatalf("merging %v with its later %v", a, grown.state())
		}
	}
}

// The cached value is ΣP − ΣN whatever the order of the additions, and
// the entry added to last is looked up first.
func TestPNCounterValue(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		var c pnCounter
		var sum int64
		for range r.IntN(50) {
			origin, amount := uint64(r.IntN(5)+1), r.Int64N(1<<40)-(1<<39)
			c.add(origin, amount)
			sum += amount
			if c.entries[len(c.entries)-1].Origin != origin && amount != 0 {
				t.Fatalf("origin %x is not last after an addition: %v", origin, c.entries)
			}
		}
		if c.value != sum || c.state().Value() != sum {
			t.Fatalf("value %d, state's %d, want %d", c.value, c.state().Value(), sum)
		}
	}
	var c pnCounter
	c.add(1, 0)
	if len(c.entries) != 0 {
		t.Fatalf("adding 0 made an entry: %v", c.entries)
	}
	c.add(1, math.MinInt64)
	c.add(1, math.MaxInt64)
	if c.value != -1 || c.entries[0] != (Entry{Origin: 1, P: math.MaxInt64, N: 1 << 63}) {
		t.Fatalf("extremes: value %d, entries %v", c.value, c.entries)
	}
}

// pinEngine is the engine as far as a counter's merge sees it: the
// recorded invocations of its replicas (none unless a test records some).
type pinEngine struct {
	spi.NodeEngine
	pins map[int][]spi.InvocationID
}

func (e *pinEngine) RecordedInvocations(partition int) []spi.InvocationID { return e.pins[partition] }
func (e *pinEngine) ForgetRecordedInvocations(partition int)              { delete(e.pins, partition) }

// AdoptInvocations records ids as the engine's record would: they are
// recorded invocations from now on.
func (e *pinEngine) AdoptInvocations(partition int, ids []spi.InvocationID) {
	for _, id := range ids {
		if !slices.Contains(e.pins[partition], id) {
			if e.pins == nil {
				e.pins = map[int][]spi.InvocationID{}
			}
			e.pins[partition] = append(e.pins[partition], id)
		}
	}
	slices.SortFunc(e.pins[partition], func(a, b spi.InvocationID) int {
		return cmp.Or(cmp.Compare(a.Origin, b.Origin), cmp.Compare(a.Seq, b.Seq))
	})
}

// side is one member's replica of the partition p, driven through the
// counter's operations as the engine would.
type side struct {
	t *testing.T
	s *Service
}

const p = 3

func newSide(t *testing.T) side { return side{t, newTestService(nil)} }

func (sd side) engine() *pinEngine { return sd.s.engine.(*pinEngine) }

func (sd side) inc(name string, amount int64) int64 {
	sd.t.Helper()
	return sd.run(&spi.OpContext{}, name, amount)
}

// run runs an increment with ctx (its partition, service and engine set
// here).
func (sd side) run(ctx *spi.OpContext, name string, amount int64) int64 {
	sd.t.Helper()
	op := &IncOperation{Name: name, Amount: amount}
	ctx.PartitionID, ctx.Service, ctx.Engine = p, sd.s, sd.s.engine
	if err := op.Run(ctx); err != nil {
		sd.t.Fatal(err)
	}
	return op.Response().(int64)
}

// destroy destroys counter name on this side, as DestroyDistributedObject
// does on the partition's executor.
func (sd side) destroy(name string) {
	sd.s.containers[p].destroy(name)
	sd.engine().ForgetRecordedInvocations(p)
}

// pin records that id ran here (the side's record, or a pin of it).
func (sd side) pin(id spi.InvocationID) {
	e := sd.engine()
	if e.pins == nil {
		e.pins = make(map[int][]spi.InvocationID)
	}
	e.pins[p] = append(e.pins[p], id)
}

func (sd side) get(name string) int64 {
	op := &GetOperation{Name: name}
	op.Run(&spi.OpContext{PartitionID: p, Service: sd.s})
	return op.Response().(int64)
}

// copyTo gives dst a full copy of sd's replica, as a backup or a
// migration's destination gets it; promote then makes it the primary.
func (sd side) copyTo(dst side) {
	sd.t.Helper()
	dst.s.ClearPartitionReplica(p)
	op := sd.s.PrepareReplicationOperation(spi.PartitionReplicationEvent{PartitionID: p, ReplicaIndex: 1})
	if op == nil {
		return
	}
	if err := decode(sd.t, encode(op)).Run(&spi.OpContext{PartitionID: p, Service: dst.s, ReplicaIndex: 1}); err != nil {
		sd.t.Fatal(err)
	}
}

func (sd side) promote() {
	sd.s.CommitMigration(spi.PartitionMigrationEvent{PartitionID: p, Endpoint: spi.MigrationDestination,
		CurrentReplicaIndex: 1, NewReplicaIndex: 0})
}

// split returns the two sides of a split: counter c at 10 on a, copied to
// b, which is promoted; a stays the primary of the smaller side, b is the
// larger side's.
func split(t *testing.T) (a, b side) {
	a, b = newSide(t), newSide(t)
	a.inc("c", 10)
	a.copyTo(b)
	b.promote()
	return a, b
}

// mergeInto runs sd's PrepareMerge on dst as the engine would (encoded),
// and the backup of each operation on dst's backup replica, if given;
// then sd resets, as the merging member does.
func (sd side) mergeInto(dst side, backup *side) {
	sd.t.Helper()
	for _, op := range sd.s.PrepareMerge(p) {
		w := spi.NewWriter(nil)
		op.WriteData(w)
		got := new(CounterMergeOperation)
		if err := got.ReadData(spi.NewReader(w.Bytes())); err != nil {
			sd.t.Fatal(err)
		}
		if err := got.Run(&spi.OpContext{PartitionID: p, Service: dst.s, Engine: dst.s.engine}); err != nil {
			sd.t.Fatal(err)
		}
		if backup != nil && got.ShouldBackup() {
			b := got.BackupOperation()
			w := spi.NewWriter(nil)
			b.WriteData(w)
			bb := new(CounterMergeBackupOperation)
			if err := bb.ReadData(spi.NewReader(w.Bytes())); err != nil {
				sd.t.Fatal(err)
			}
			if err := bb.Run(&spi.OpContext{PartitionID: p, Service: backup.s, Engine: backup.s.engine, ReplicaIndex: 1}); err != nil {
				sd.t.Fatal(err)
			}
		}
	}
	sd.s.Reset()
}

func (sd side) want(name string, v int64) {
	sd.t.Helper()
	if got := sd.get(name); got != v {
		sd.t.Fatalf("%s = %d, want %d", name, got, v)
	}
}

// The example: 10 before the split, +5 on the larger side and +2
// on the smaller, 17 after the merge; and the backup of the larger side's
// primary holds what it holds.
func TestMergeLossless(t *testing.T) {
	a, b := split(t) // b was a's backup when the split came
	backup := newSide(t)
	if a.inc("c", 2) != 12 || b.inc("c", 5) != 15 {
		t.Fatal("the sides do not count apart")
	}
	b.copyTo(backup)
	a.mergeInto(b, &backup)
	b.want("c", 17)
	backup.want("c", 17)
	if !equalStates(b.s.containers[p].states(), backup.s.containers[p].states()) {
		t.Fatalf("backup %v, primary %v", backup.s.containers[p].states(), b.s.containers[p].states())
	}
	a.want("c", 0) // reset
	// Merging again (a retry, or the other way) changes nothing.
	b.copyTo(a)
	a.mergeInto(b, nil)
	b.want("c", 17)
	// Increments after the merge count on.
	b.want("c", 17)
	if b.inc("c", 1) != 18 {
		t.Fatal("increment after the merge")
	}
}

// The same partition split twice: every increment of both sides of both
// splits counts once.
func TestMergeTwoSuccessiveSplits(t *testing.T) {
	a, b := split(t)
	a.inc("c", 2)
	b.inc("c", 5)
	a.mergeInto(b, nil) // 17 on b; a rejoins empty
	b.copyTo(a)         // a becomes b's backup
	// Second split: b stays primary on the smaller side, a is promoted.
	a.promote()
	b.inc("c", 3)
	a.inc("c", 4)
	a.inc("c", -1)
	b.mergeInto(a, nil)
	a.want("c", 23)
	// A third split the other way round, after a third member took a copy.
	c := newSide(t)
	a.copyTo(c)
	c.promote()
	a.inc("c", 100)
	c.inc("c", 1000)
	c.mergeInto(a, nil)
	a.want("c", 1123)
}

// An increment in flight when the split came runs on one side, and its
// retry, which that side's record does not hold, runs on the other
// (Retried): after the merge it counts once when the side that ran it
// first still records it, whichever side merges; a
// retried run that nothing else ran, or that both sides ran as retries,
// counts once as it is; a first run whose counter its side destroyed
// since does not cancel the retry; the backup holds what the primary
// holds.
func TestMergeCountsARetriedIncrementOnce(t *testing.T) {
	id := spi.InvocationID{Origin: 77, Seq: 5}
	retried := func() *spi.OpContext { return &spi.OpContext{Invocation: id, Retried: true} }
	first := func() *spi.OpContext { return &spi.OpContext{Invocation: id} }
	for _, tc := range []struct {
		name string
		// run the invocation on the smaller side (a) and the larger (b)
		run  func(a, b side)
		want int64
	}{
		{"first on the smaller side, retried on the larger", func(a, b side) {
			a.run(first(), "c", 1)
			a.pin(id)
			b.run(retried(), "c", 1)
		}, 11},
		{"first on the larger side, retried on the smaller", func(a, b side) {
			b.run(first(), "c", 1)
			b.pin(id)
			a.run(retried(), "c", 1)
		}, 11},
		{"retried on the smaller side, run nowhere else", func(a, b side) {
			a.run(retried(), "c", 1)
		}, 11},
		{"retried on the larger side, recorded there only", func(a, b side) {
			b.run(retried(), "c", 1)
			b.pin(id)
		}, 11},
		{"retried on both sides", func(a, b side) {
			a.run(retried(), "c", 1)
			a.pin(id)
			b.run(retried(), "c", 1)
			b.pin(id)
		}, 11},
		{"first on the larger side, destroyed there, retried on the smaller", func(a, b side) {
			b.run(first(), "c", 1)
			b.pin(id)
			b.destroy("c") // made again by the +1000 below
			a.run(retried(), "c", 1)
		}, 11},
		{"first on the smaller side, destroyed there, retried on the larger", func(a, b side) {
			a.run(first(), "c", 1)
			a.pin(id)
			a.destroy("c") // made again by the +100 below
			b.run(retried(), "c", 1)
		}, 11},
		{"a negative one, first on the larger side", func(a, b side) {
			b.run(first(), "c", -4)
			b.pin(id)
			a.run(retried(), "c", -4)
		}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := split(t)
			backup := newSide(t)
			tc.run(a, b)
			a.inc("c", 100) // and other increments on both sides
			b.inc("c", 1000)
			b.copyTo(backup)
			a.mergeInto(b, &backup)
			b.want("c", tc.want+1100)
			backup.want("c", tc.want+1100)
			// A second merge of the same states (a retry) changes nothing.
			c := newSide(t)
			b.copyTo(c)
			c.mergeInto(b, nil)
			b.want("c", tc.want+1100)
		})
	}
}

// A counter that only the smaller side has comes over as it is; the
// larger side's other counters are untouched.
func TestMergeCounterOnlyOnSmallerSide(t *testing.T) {
	a, b := newSide(t), newSide(t)
	a.inc("common", 1)
	a.copyTo(b)
	b.promote()
	a.inc("new", 2)
	a.inc("new", 2)
	b.inc("large-only", 7)
	a.mergeInto(b, nil)
	b.want("new", 4)
	b.want("common", 1)
	b.want("large-only", 7)
}

// A destroy is not merged: a counter destroyed on one side is absent
// there, so the other side's counter, increments from before the split
// included, comes back (or stays); made again after the destroy, both
// sides' increments since count.
func TestMergeDestroyedOnOneSide(t *testing.T) {
	t.Run("on the larger side", func(t *testing.T) {
		a, b := split(t)
		b.inc("c", 5)
		b.s.containers[p].destroy("c")
		a.inc("c", 2)
		a.mergeInto(b, nil)
		b.want("c", 12) // the smaller side's counter, as it is
	})
	t.Run("on the smaller side", func(t *testing.T) {
		a, b := split(t)
		b.inc("c", 5)
		a.s.containers[p].destroy("c")
		a.mergeInto(b, nil)
		b.want("c", 15) // nothing to merge
	})
	t.Run("on the smaller side, then made again", func(t *testing.T) {
		a, b := split(t)
		b.inc("c", 5)
		a.s.containers[p].destroy("c")
		a.inc("c", 2) // a fresh origin: not hidden by the 10 under the old one
		a.mergeInto(b, nil)
		b.want("c", 17)
	})
}

// A member of the smaller side that gets a partition whose replicas all
// stayed on the larger side starts it empty; its increments there count
// under a fresh origin, not under the one it used before as that
// partition's primary, which the larger side holds with a greater P.
func TestMergeSmallerSideStartedEmpty(t *testing.T) {
	a, b := newSide(t), newSide(t)
	a.inc("c", 10) // a was the primary...
	a.copyTo(b)
	b.promote() // ...then the partition moved to b
	a.s.CommitMigration(spi.PartitionMigrationEvent{PartitionID: p, Endpoint: spi.MigrationSource,
		CurrentReplicaIndex: 0, NewReplicaIndex: -1})
	// Split: a alone has no replica and starts the partition empty.
	a.want("c", 0)
	a.inc("c", 2)
	b.inc("c", 5)
	a.mergeInto(b, nil)
	b.want("c", 17)
}

// failingPolicy returns what the counter cannot hold.
type failingPolicy struct{}

func (failingPolicy) Name() string                       { return "failing" }
func (failingPolicy) Merge(_, _ any, _ bool) (any, bool) { return int64(1), true }

// dropPolicy drops every counter.
type dropPolicy struct{}

func (dropPolicy) Name() string                       { return "drop" }
func (dropPolicy) Merge(_, _ any, _ bool) (any, bool) { return nil, false }

// The standard policies decide between the two states as a whole.
func TestMergeStandardPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy              spi.MergePolicy
		both, small, larger int64 // "c" is 15 on the larger side, 12 on the smaller
		hasSmall            bool
	}{
		{CounterSum{}, 17, 3, 7, true},
		{mergepolicy.PutIfAbsent{}, 15, 3, 7, true},
		{mergepolicy.PassThrough{}, 12, 3, 7, true},
		{mergepolicy.Discard{}, 15, 0, 7, false},
		{mergepolicy.HigherValue{}, 15, 3, 7, true},
	} {
		t.Run(tc.policy.Name(), func(t *testing.T) {
			a, b := split(t)
			backup := newSide(t)
			b.s.policy = tc.policy
			a.inc("c", 2)
			a.inc("small-only", 3)
			b.inc("c", 5)
			b.inc("large-only", 7)
			b.copyTo(backup)
			a.mergeInto(b, &backup)
			b.want("c", tc.both)
			b.want("small-only", tc.small)
			b.want("large-only", tc.larger)
			if _, ok := b.s.containers[p].counters["small-only"]; ok != tc.hasSmall {
				t.Fatalf("small-only present: %v, want %v", ok, tc.hasSmall)
			}
			if !equalStates(b.s.containers[p].states(), backup.s.containers[p].states()) {
				t.Fatalf("backup %v, primary %v", backup.s.containers[p].states(), b.s.containers[p].states())
			}
		})
	}
	// higher-value takes the smaller side's counter when it is higher.
	a, b := newSide(t), newSide(t)
	b.s.policy = mergepolicy.HigherValue{}
	a.inc("c", 9)
	b.inc("c", 4)
	a.mergeInto(b, nil)
	b.want("c", 9)
}

// A policy's keep false drops the counter on the primary and its backup;
// a policy that returns no State fails the operation, changing nothing.
func TestMergeServicePolicies(t *testing.T) {
	a, b, backup := newSide(t), newSide(t), newSide(t)
	b.s.policy = dropPolicy{}
	a.inc("c", 1)
	b.inc("c", 2)
	b.copyTo(backup)
	a.mergeInto(b, &backup)
	if len(b.s.containers[p].counters) != 0 || len(backup.s.containers[p].counters) != 0 {
		t.Fatalf("dropped counter kept: primary %v, backup %v", b.s.containers[p].values(), backup.s.containers[p].values())
	}

	a, b = newSide(t), newSide(t)
	b.s.policy = failingPolicy{}
	a.inc("c", 1)
	a.inc("d", 1)
	b.inc("c", 2)
	op := a.s.PrepareMerge(p)[0]
	err := op.Run(&spi.OpContext{PartitionID: p, Service: b.s})
	if err == nil || b.get("c") != 2 || len(b.s.containers[p].counters) != 1 {
		t.Fatalf("failing policy: err %v, larger side now %v", err, b.s.containers[p].values())
	}
}

func TestPrepareMergeEmpty(t *testing.T) {
	s := newTestService(nil)
	s.containers[p+1].put("elsewhere", 1)
	if ops := s.PrepareMerge(p); len(ops) != 0 {
		t.Fatalf("empty partition: %v", ops)
	}
	if ops := s.PrepareMerge(p + 1); len(ops) != 1 {
		t.Fatalf("partition with a counter: %d operations, want 1", len(ops))
	}
}

// Reset drops every counter and origin.
func TestReset(t *testing.T) {
	sd := newSide(t)
	sd.inc("c", 1)
	sd.s.containers[p+1].put("d", 2)
	sd.s.Reset()
	for i, c := range sd.s.containers {
		if len(c.counters) != 0 || c.origin != 0 {
			t.Fatalf("partition %d after Reset: %v, origin %x", i, c.values(), c.origin)
		}
	}
}

// The operations that carry states refuse what they cannot read.
func TestMergeOperationsEncoding(t *testing.T) {
	orphans := []spi.InvocationID{{Origin: 1, Seq: 2}, {Origin: math.MaxUint64, Seq: math.MaxUint64}}
	op := &CounterMergeOperation{Counters: sampleStates, Invocations: orphans}
	b := encode(op)
	got := new(CounterMergeOperation)
	if err := got.ReadData(spi.NewReader(b)); err != nil || !equalStates(got.Counters, sampleStates) || !slices.Equal(got.Invocations, orphans) {
		t.Fatalf("merge round trip: %v, %v, %v", err, got.Counters, got.Invocations)
	}
	for i := range len(b) {
		if err := new(CounterMergeOperation).ReadData(spi.NewReader(b[:i])); !errors.Is(err, spi.ErrProtocol) {
			t.Fatalf("merge, first %d of %d bytes: %v", i, len(b), err)
		}
	}
	// An invocation count the bytes left cannot hold sizes nothing.
	huge := binary.AppendUvarint(encode(&CounterMergeOperation{})[:2], 1<<60)
	if err := new(CounterMergeOperation).ReadData(spi.NewReader(huge)); !errors.Is(err, spi.ErrProtocol) {
		t.Fatalf("huge invocation count: %v", err)
	}
	bop := &CounterMergeBackupOperation{Counters: sampleStates, Removed: []string{"x", ""}, Invocations: orphans}
	b = encode(bop)
	gotb := new(CounterMergeBackupOperation)
	if err := gotb.ReadData(spi.NewReader(b)); err != nil || !equalStates(gotb.Counters, sampleStates) ||
		len(gotb.Removed) != 2 || gotb.Removed[0] != "x" || !slices.Equal(gotb.Invocations, orphans) {
		t.Fatalf("merge backup round trip: %v, %v", err, gotb)
	}
	for i := range len(b) {
		if err := new(CounterMergeBackupOperation).ReadData(spi.NewReader(b[:i])); !errors.Is(err, spi.ErrProtocol) {
			t.Fatalf("merge backup, first %d of %d bytes: %v", i, len(b), err)
		}
	}
	inc := &IncBackupOperation{Name: "n", Origin: math.MaxUint64, Amount: -3}
	goti := new(IncBackupOperation)
	if err := goti.ReadData(spi.NewReader(encode(inc))); err != nil || *goti != *inc {
		t.Fatalf("inc backup round trip: %v, %+v", err, goti)
	}
}
