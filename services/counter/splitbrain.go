package counter

import (
	"fmt"
	"slices"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/spi"
)

// Split-brain healing (issue 20). When two clusters of one name meet, each
// member of the smaller one hands PrepareMerge's operations, one per
// partition it owns, to the engine, which runs them on the partitions'
// owners in the larger cluster once it joined. Each applies the service's
// merge policy counter by counter. The counter's own policy, counter-sum
// (the default), merges the two states of a counter (state.go) so that
// every increment acknowledged on either side is counted once; the
// standard policies may be chosen instead in the config (`merge-policy:`),
// and then decide between the two states as a whole.
//
// An increment in flight when the split began may run on both sides: its
// answer is cut off on one side, its caller on the other side retries it
// there, and that side's primary, which has no exactly-once record of it,
// runs it again (spi.OpContext.Retried). Such a retried run is counted
// under an origin of its own (retriedOrigin), and the side that ran the
// first attempt still knows the invocation (its exactly-once record, or
// what it kept of it when it lost the caller:
// spi.NodeEngine.RecordedInvocations). counter-sum cancels a retried
// run's entry when the other side holds a run of the same invocation, so
// the increment counts once (CounterMergeOperation.Run).
var (
	_ spi.SplitBrainHandlerService = (*Service)(nil)
	_ spi.MergePolicyDefault       = (*Service)(nil)
)

// CounterSumName is the name of the counter's own merge policy.
const CounterSumName = "counter-sum"

func init() {
	config.RegisterMergePolicy(CounterSumName, func() spi.MergePolicy { return CounterSum{} })
}

// CounterSum is the counter's lossless merge policy: a counter both sides
// hold becomes the merge of the two states (State.Merge: for each origin
// the greater P and the greater N), so the increments that either side
// acknowledged since they parted all count, and those from before, which
// both hold, count once. A counter only the merging side holds is taken
// as it is. Given values that are not counter States it behaves as
// put-if-absent.
type CounterSum struct{}

var _ spi.MergePolicy = CounterSum{}

// Name implements spi.MergePolicy.
func (CounterSum) Name() string { return CounterSumName }

// Merge implements spi.MergePolicy.
func (CounterSum) Merge(merging, existing any, exists bool) (any, bool) {
	if !exists {
		return merging, true
	}
	m, ok1 := merging.(State)
	e, ok2 := existing.(State)
	if !ok1 || !ok2 {
		return existing, true
	}
	return e.Merge(m), true
}

// DefaultMergePolicy implements spi.MergePolicyDefault: counter-sum.
func (s *Service) DefaultMergePolicy() string { return CounterSumName }

// PrepareMerge implements spi.SplitBrainHandlerService. It runs as the
// partition's executor on a member of the merging side, before Reset, and
// returns one CounterMergeOperation with a copy of the state of every
// counter of the partition and the invocations whose runs they hold
// (spi.NodeEngine.RecordedInvocations), or none when the partition holds
// no counter.
func (s *Service) PrepareMerge(partitionID int) []spi.Operation {
	c := &s.containers[partitionID]
	if len(c.counters) == 0 {
		return nil
	}
	return []spi.Operation{&CounterMergeOperation{Counters: c.states(), Invocations: s.engine.RecordedInvocations(partitionID)}}
}

// mergePolicy returns the service's merge policy: the engine's for the
// service, counter-sum when there is none (a service not made by a Node).
func (s *Service) mergePolicy() spi.MergePolicy {
	if s.policy != nil {
		return s.policy
	}
	return CounterSum{}
}

// CounterMergeOperation carries the counters of one partition of the
// merging side into the larger cluster. It runs on the partition's owner
// there and decides each counter with the service's merge policy, given
// the merging State, the existing one (a copy) and whether the counter
// exists. It is backed up: CounterMergeBackupOperation sets the counters
// it changed on the backup replicas. The merge is idempotent for
// counter-sum, so a retry changes nothing more; the engine runs it once
// anyway.
//
// Encoding: the format byte (3), the states as state.go describes, then
// the number of recorded invocations (unsigned varint) and each one's
// origin (8 bytes, little-endian) and sequence number (unsigned varint).
type CounterMergeOperation struct {
	// Counters are the merging side's states by name.
	Counters map[string]State
	// Invocations are the ones whose runs the merging side's states hold,
	// as far as it knows them (spi.NodeEngine.RecordedInvocations).
	Invocations []spi.InvocationID

	svc     *Service
	set     map[string]State // what Run changed
	removed []string         // what Run dropped (a policy's keep false)
}

var _ spi.BackupAwareOperation = (*CounterMergeOperation)(nil)

// Run implements spi.Operation. It decides every counter before changing
// any: a policy that returns something other than a valid State (a
// service-defined one) fails the operation and leaves the partition as it
// was. The replica's data changed, so its origin goes (state.go).
func (op *CounterMergeOperation) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*Service)
	op.svc = s
	policy := s.mergePolicy()
	c := &s.containers[ctx.PartitionID]
	op.set, op.removed = make(map[string]State), nil
	names := make([]string, 0, len(op.Counters))
	for name := range op.Counters {
		names = append(names, name)
	}
	slices.Sort(names)
	_, sum := policy.(CounterSum)
	var doubles *doubleRuns
	if sum {
		doubles = newDoubleRuns(ctx.Engine.RecordedInvocations(ctx.PartitionID), op.Invocations)
	}
	cancelled := 0
	for _, name := range names {
		var existing State
		ctr, exists := c.counters[name]
		if exists {
			existing = ctr.state()
		}
		v, keep := policy.Merge(op.Counters[name], existing, exists)
		if sum && keep {
			var n int
			v, n = doubles.cancel(v, op.Counters[name], existing)
			cancelled += n
		}
		if !keep {
			if exists {
				op.removed = append(op.removed, name)
			}
			continue
		}
		st, ok := v.(State)
		if !ok {
			return fmt.Errorf("counter %q: merge policy %s returned %T, want counter.State", name, policy.Name(), v)
		}
		if err := st.check(); err != nil {
			return fmt.Errorf("counter %q: merge policy %s: %v", name, policy.Name(), err)
		}
		if !exists || !st.Equal(existing) {
			op.set[name] = st
		}
	}
	c.set(op.set)
	for _, name := range op.removed {
		delete(c.counters, name)
	}
	c.origin = 0
	if cancelled > 0 {
		s.log.Info("merge: increments retried across the split counted once", "partition", ctx.PartitionID, "cancelled", cancelled)
	}
	// A caller whose answer the split cut off may retry after the merge:
	// its invocation ran on the merging side, whose state this merge
	// took, so it must not run again here.
	ctx.Engine.AdoptInvocations(ctx.PartitionID, op.Invocations)
	return nil
}

// doubleRuns finds the retried runs (retriedOrigin) that the other side
// of a merge ran as well: a retried run on the merging side whose
// invocation the larger side recorded, or one on the larger side whose
// invocation the merging side did.
type doubleRuns struct {
	here, merging map[uint64]bool // retried origins of each side's recorded invocations
}

func newDoubleRuns(here, merging []spi.InvocationID) *doubleRuns {
	origins := func(ids []spi.InvocationID) map[uint64]bool {
		m := make(map[uint64]bool, len(ids))
		for _, id := range ids {
			m[retriedOrigin(id)] = true
		}
		return m
	}
	return &doubleRuns{here: origins(here), merging: origins(merging)}
}

// cancel returns merged (the policy's outcome for one counter) with the
// entries of the retried runs that the other side ran too cancelled, and
// how many. A retried run that both sides hold counts once already (the
// same origin, the same amount), and one that only its own side
// recorded ran there alone: both are left as they are.
//
// The recorded invocations are a partition's, not a counter's: a destroy
// has the engine forget those recorded so far
// (NodeEngine.ForgetRecordedInvocations), as the runs they name may be
// gone with the counter; cancelling against a destroyed first run would
// lose the acknowledged retry.
func (d *doubleRuns) cancel(merged any, merging, existing State) (any, int) {
	st, ok := merged.(State)
	if !ok || len(d.here)+len(d.merging) == 0 {
		return merged, 0
	}
	n := 0
	for _, e := range st.Entries {
		o := e.Origin
		if o&retriedBit == 0 {
			continue
		}
		inM, inE := merging.has(o), existing.has(o)
		if (inM && !inE && d.here[o]) || (inE && !inM && d.merging[o]) {
			if n == 0 {
				st = State{Entries: slices.Clone(st.Entries)} // merged may be the operation's own
			}
			st.cancel(o)
			n++
		}
	}
	return st, n
}

// SyncBackupCount implements spi.BackupAwareOperation.
func (op *CounterMergeOperation) SyncBackupCount() int { return op.svc.syncBackups }

// AsyncBackupCount implements spi.BackupAwareOperation.
func (op *CounterMergeOperation) AsyncBackupCount() int { return op.svc.asyncBackups }

// ShouldBackup implements spi.BackupAwareOperation: when Run changed a
// counter, or adopted invocations (the backups adopt them too).
func (op *CounterMergeOperation) ShouldBackup() bool {
	return len(op.set)+len(op.removed)+len(op.Invocations) > 0
}

// BackupOperation implements spi.BackupAwareOperation.
func (op *CounterMergeOperation) BackupOperation() spi.Operation {
	return &CounterMergeBackupOperation{Counters: op.set, Removed: op.removed, Invocations: op.Invocations}
}

// WriteData implements spi.Operation.
func (op *CounterMergeOperation) WriteData(w *spi.Writer) {
	w.WriteUint8(mergeFormat)
	writeStates(w, op.Counters)
	writeInvocations(w, op.Invocations)
}

// writeInvocations writes ids: their number (unsigned varint), then each
// one's origin (8 bytes, little-endian) and sequence number (unsigned
// varint).
func writeInvocations(w *spi.Writer, ids []spi.InvocationID) {
	w.WriteUvarint(uint64(len(ids)))
	for _, id := range ids {
		w.WriteUint64(id.Origin)
		w.WriteUvarint(id.Seq)
	}
}

// readInvocations reads what writeInvocations wrote, refusing a count the
// bytes left cannot hold.
func readInvocations(r *spi.Reader, what string) ([]spi.InvocationID, error) {
	n := r.ReadUvarint()
	if err := r.Err(); err != nil {
		return nil, err
	}
	if left := r.Remaining(); n > uint64(left/9) {
		return nil, fmt.Errorf("%w: %s lists %d recorded invocations in %d bytes", spi.ErrProtocol, what, n, left)
	}
	ids := make([]spi.InvocationID, 0, n)
	for range n {
		ids = append(ids, spi.InvocationID{Origin: r.ReadUint64(), Seq: r.ReadUvarint()})
	}
	return ids, r.Err()
}

// ReadData implements spi.Operation, with CounterMigrationOperation's
// checks.
func (op *CounterMergeOperation) ReadData(r *spi.Reader) (err error) {
	const what = "counter merge"
	if err := readFormat(r, what, mergeFormat); err != nil {
		return err
	}
	if op.Counters, err = readStates(r, what); err != nil {
		return err
	}
	op.Invocations, err = readInvocations(r, what)
	return err
}

// CounterMergeBackupOperation sets on a backup replica the counters that a
// CounterMergeOperation changed on the primary, and drops those it
// dropped, so that the backup's states stay the primary's.
//
// It also records, as the primary did, the invocations whose runs the
// merge carried over (spi.NodeEngine.AdoptInvocations), so that a retry
// that reaches this replica once promoted does not run again.
//
// Encoding: the format byte (2), the states as state.go describes, the
// number of dropped counters (unsigned varint) and their names, then the
// invocations as CounterMergeOperation encodes them.
type CounterMergeBackupOperation struct {
	Counters    map[string]State
	Removed     []string
	Invocations []spi.InvocationID
}

var _ spi.BackupOperation = (*CounterMergeBackupOperation)(nil)

// Backup implements spi.BackupOperation.
func (op *CounterMergeBackupOperation) Backup() {}

// Run implements spi.Operation, on the backup's partition executor.
func (op *CounterMergeBackupOperation) Run(ctx *spi.OpContext) error {
	c := &ctx.Service.(*Service).containers[ctx.PartitionID]
	c.set(op.Counters)
	for _, name := range op.Removed {
		delete(c.counters, name)
	}
	c.origin = 0
	ctx.Engine.AdoptInvocations(ctx.PartitionID, op.Invocations)
	return nil
}

// WriteData implements spi.Operation.
func (op *CounterMergeBackupOperation) WriteData(w *spi.Writer) {
	w.WriteUint8(stateFormat)
	writeStates(w, op.Counters)
	w.WriteUvarint(uint64(len(op.Removed)))
	for _, name := range op.Removed {
		w.WriteString(name)
	}
	writeInvocations(w, op.Invocations)
}

// ReadData implements spi.Operation.
func (op *CounterMergeBackupOperation) ReadData(r *spi.Reader) (err error) {
	const what = "counter merge backup"
	if err := readFormat(r, what, stateFormat); err != nil {
		return err
	}
	if op.Counters, err = readStates(r, what); err != nil {
		return err
	}
	n := r.ReadUvarint()
	if err := r.Err(); err != nil {
		return err
	}
	if left := r.Remaining(); n > uint64(left) {
		return fmt.Errorf("%w: %s lists %d dropped counters in %d bytes", spi.ErrProtocol, what, n, left)
	}
	op.Removed = make([]string, 0, n)
	for range n {
		op.Removed = append(op.Removed, r.ReadString())
	}
	op.Invocations, err = readInvocations(r, what)
	return err
}
