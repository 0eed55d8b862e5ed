package clustertest_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/spi"
)

// The checker must catch the bugs Jepsen finds. Each test below runs a
// service with one bug planted on purpose under the faults that expose
// it, seed after seed, and passes once Check flags a history; it fails if
// no seed within its budget is flagged.

// plantedName is the planted service's name; its operation kinds start
// with "Planted/".
const plantedName = "Planted"

// The planted bugs (the service's "bug" property).
const (
	// Adds are not backed up, so the engine's exactly-once record does
	// not cover them: an add whose answer is lost is run again by the
	// retry.
	bugDoubleApply = "double-apply"
	// Adds are backed up asynchronously, and a member that holds a
	// backup replica answers a read from it.
	bugStaleRead = "stale-read"
	// Adds are acknowledged before their backup exists (asynchronous
	// backups): a primary that dies takes them with it.
	bugAckBeforeBackup = "ack-before-backup"
	// No bug: adds have one synchronous backup, reads go to the primary.
	// The control: the checker must pass it under the same faults.
	bugNone = "none"
)

func init() {
	config.RegisterService("planted", func() spi.Service { return new(planted) })
}

// usePlanted makes the planted service, with bug, the members' only
// service. Anti-entropy is off, as its copies would repair lagging
// backups and hide the bugs that need them.
func usePlanted(bug string) clustertest.Option {
	return clustertest.WithConfig(func(_ int, cfg *config.Config) {
		cfg.Partitions.BackupCount = 1
		cfg.Partitions.AntiEntropyInterval = time.Hour
		cfg.Services = []config.ServiceConfig{{Name: plantedName, Type: "planted", Enabled: true,
			Properties: spi.Properties{}.With("bug", bug)}}
	})
}

// planted is a register service like internal/testservice, with a bug.
type planted struct {
	engine spi.NodeEngine
	bug    string
	parts  []map[string]int64 // by partition; only its executor touches one
}

func (s *planted) Init(e spi.NodeEngine, props spi.Properties) (err error) {
	s.engine = e
	s.parts = make([]map[string]int64, e.Partitions().PartitionCount())
	for p := range s.parts {
		s.parts[p] = map[string]int64{}
	}
	s.bug, err = props.OneOf("bug", bugDoubleApply, bugDoubleApply, bugStaleRead, bugAckBeforeBackup, bugNone)
	return err
}

func (s *planted) Shutdown(bool) {}

func (s *planted) Reset() {
	for _, m := range s.parts {
		clear(m)
	}
}

func (s *planted) OperationTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return new(plantedAdd) }},
		{ID: 2, New: func() spi.Operation { return new(plantedBackedAdd) }},
		{ID: 3, New: func() spi.Operation { return new(plantedAddBackup) }},
		{ID: 4, New: func() spi.Operation { return new(plantedGet) }},
		{ID: 5, New: func() spi.Operation { return new(plantedSnapshot) }},
	}
}

// plantedAdd adds Delta to register Key and answers the new value.
type plantedAdd struct {
	Key   string
	Delta int64
	value int64
}

func (op *plantedAdd) Run(ctx *spi.OpContext) error {
	m := ctx.Service.(*planted).parts[ctx.PartitionID]
	m[op.Key] += op.Delta
	op.value = m[op.Key]
	return nil
}
func (op *plantedAdd) Response() any           { return op.value }
func (op *plantedAdd) NonBlocking()            {}
func (op *plantedAdd) WriteData(w *spi.Writer) { w.WriteString(op.Key); w.WriteVarint(op.Delta) }
func (op *plantedAdd) ReadData(r *spi.Reader) error {
	op.Key, op.Delta = r.ReadString(), r.ReadVarint()
	return r.Err()
}

// plantedBackedAdd is plantedAdd with one backup: synchronous without a
// bug, else asynchronous.
type plantedBackedAdd struct {
	plantedAdd
	sync bool
}

func (op *plantedBackedAdd) Run(ctx *spi.OpContext) error {
	op.sync = ctx.Service.(*planted).bug == bugNone
	return op.plantedAdd.Run(ctx)
}
func (op *plantedBackedAdd) SyncBackupCount() int  { return btoi(op.sync) }
func (op *plantedBackedAdd) AsyncBackupCount() int { return 1 - btoi(op.sync) }
func (op *plantedBackedAdd) ShouldBackup() bool    { return true }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
func (op *plantedBackedAdd) BackupOperation() spi.Operation {
	return &plantedAddBackup{Key: op.Key, Delta: op.Delta}
}

// plantedAddBackup repeats an add on a backup replica.
type plantedAddBackup struct {
	Key   string
	Delta int64
}

func (op *plantedAddBackup) Run(ctx *spi.OpContext) error {
	ctx.Service.(*planted).parts[ctx.PartitionID][op.Key] += op.Delta
	return nil
}
func (op *plantedAddBackup) Backup()                 {}
func (op *plantedAddBackup) NonBlocking()            {}
func (op *plantedAddBackup) WriteData(w *spi.Writer) { w.WriteString(op.Key); w.WriteVarint(op.Delta) }
func (op *plantedAddBackup) ReadData(r *spi.Reader) error {
	op.Key, op.Delta = r.ReadString(), r.ReadVarint()
	return r.Err()
}

// plantedGet reads register Key.
type plantedGet struct {
	Key   string
	value int64
}

func (op *plantedGet) Run(ctx *spi.OpContext) error {
	op.value = ctx.Service.(*planted).parts[ctx.PartitionID][op.Key]
	return nil
}
func (op *plantedGet) Response() any                { return op.value }
func (op *plantedGet) NonBlocking()                 {}
func (op *plantedGet) WriteData(w *spi.Writer)      { w.WriteString(op.Key) }
func (op *plantedGet) ReadData(r *spi.Reader) error { op.Key = r.ReadString(); return r.Err() }

// plantedSnapshot carries a partition's registers to a migration's
// destination or a replica being synced.
type plantedSnapshot struct{ Values map[string]int64 }

func (op *plantedSnapshot) Run(ctx *spi.OpContext) error {
	maps.Copy(ctx.Service.(*planted).parts[ctx.PartitionID], op.Values)
	return nil
}
func (op *plantedSnapshot) WriteData(w *spi.Writer) {
	w.WriteUvarint(uint64(len(op.Values)))
	for k, v := range op.Values {
		w.WriteString(k)
		w.WriteVarint(v)
	}
}
func (op *plantedSnapshot) ReadData(r *spi.Reader) error {
	n := r.ReadUvarint()
	op.Values = map[string]int64{}
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		op.Values[r.ReadString()] = r.ReadVarint()
	}
	return r.Err()
}

func (s *planted) PrepareReplicationOperation(e spi.PartitionReplicationEvent) spi.Operation {
	if len(s.parts[e.PartitionID]) == 0 {
		return nil
	}
	return &plantedSnapshot{Values: maps.Clone(s.parts[e.PartitionID])}
}
func (s *planted) BeforeMigration(spi.PartitionMigrationEvent) {}
func (s *planted) CommitMigration(e spi.PartitionMigrationEvent) {
	if e.Endpoint == spi.MigrationSource && e.NewReplicaIndex == -1 {
		clear(s.parts[e.PartitionID])
	}
}
func (s *planted) RollbackMigration(e spi.PartitionMigrationEvent) {
	if e.Endpoint == spi.MigrationDestination && e.CurrentReplicaIndex == -1 {
		clear(s.parts[e.PartitionID])
	}
}
func (s *planted) ClearPartitionReplica(p int) { clear(s.parts[p]) }

// plantedInc adds delta to register key through member n.
func plantedInc(ctx context.Context, n *nodeengine.Node, key string, delta int64) (int64, error) {
	s := plantedOf(n)
	var op spi.Operation = &plantedBackedAdd{plantedAdd: plantedAdd{Key: key, Delta: delta}}
	if s.bug == bugDoubleApply {
		op = &plantedAdd{Key: key, Delta: delta}
	}
	v, err := n.Operations().Invoke(ctx, plantedName, op, n.Partitions().PartitionID(key))
	if err != nil {
		return 0, err
	}
	return v.(int64), nil
}

// plantedRead reads register key through member n.
func plantedRead(ctx context.Context, n *nodeengine.Node, key string) (int64, error) {
	s := plantedOf(n)
	p := n.Partitions().PartitionID(key)
	if s.bug == bugStaleRead && n.Partitions().ReplicaIndex(p) > 0 {
		got := make(chan int64, 1)
		if err := n.Operations().RunOnPartition(p, func() { got <- s.parts[p][key] }); err != nil {
			return 0, err
		}
		select {
		case v := <-got:
			return v, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	v, err := n.Operations().Invoke(ctx, plantedName, &plantedGet{Key: key}, p)
	if err != nil {
		return 0, err
	}
	return v.(int64), nil
}

func plantedOf(n *nodeengine.Node) *planted {
	s, _ := n.Service(plantedName)
	return s.(*planted)
}

// plantedLoad increments and reads keys through the members pick returns,
// from clients goroutines, recording every call in rec, until stop is
// closed. Each client draws from its own generator, seeded by seed.
func plantedLoad(rec *clustertest.Recorder, seed uint64, clients int, keys []string,
	pick func(*rand.Rand) *nodeengine.Node, stop <-chan struct{}) (wait func()) {
	var wg sync.WaitGroup
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				key, n := keys[r.IntN(len(keys))], pick(r)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if r.IntN(2) == 0 {
					clustertest.Record(rec, g, clustertest.CounterInc{Name: key, Delta: 1},
						func() (int64, error) { return plantedInc(ctx, n, key, 1) })
				} else {
					clustertest.Record(rec, g, clustertest.CounterGet{Name: key},
						func() (int64, error) { return plantedRead(ctx, n, key) })
				}
				cancel()
			}
		}()
	}
	return wg.Wait
}

// hunt runs round with seeds 1, 2, ... until Check flags the history a
// round recorded, failing t if none is flagged within budget.
func hunt(t *testing.T, budget time.Duration, round func(seed uint64, rec *clustertest.Recorder)) {
	t.Helper()
	deadline := time.Now().Add(budget)
	for seed := uint64(1); time.Now().Before(deadline); seed++ {
		rec := clustertest.NewRecorder()
		round(seed, rec)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := clustertest.Check(ctx, clustertest.CounterModel, rec.Operations())
		cancel()
		var bad *clustertest.NotLinearizableError
		if errors.As(err, &bad) {
			t.Logf("seed %d: %d calls (%d failed): flagged: %v", seed, rec.Len(), rec.Failed(), err)
			return
		}
		t.Logf("seed %d: %d calls (%d failed): %v", seed, rec.Len(), rec.Failed(), err)
	}
	t.Fatalf("no history flagged within %v", budget)
}

func anyMember(c *clustertest.Cluster) func(*rand.Rand) *nodeengine.Node {
	return func(r *rand.Rand) *nodeengine.Node {
		ms := c.Members()
		return ms[r.IntN(len(ms))]
	}
}

func roundKeys(seed uint64, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("s%d-k%d", seed, i)
	}
	return keys
}

// (a) A retried add applied twice: answers to adds are dropped now and
// then, and the engine's retry runs the add again.
func TestPlantedDoubleApplyIsFlagged(t *testing.T) {
	c := clustertest.New(t, 3, usePlanted(bugDoubleApply))
	hunt(t, 20*time.Second, lostAnswers(c))
}

// lostAnswers is a round that drops answers to adds now and then.
func lostAnswers(c *clustertest.Cluster) func(seed uint64, rec *clustertest.Recorder) {
	return func(seed uint64, rec *clustertest.Recorder) {
		stop := make(chan struct{})
		wait := plantedLoad(rec, seed, 4, roundKeys(seed, 3), anyMember(c), stop)
		r := rand.New(rand.NewPCG(seed, 0xfa))
		for range 5 {
			remove := c.AddFault(&clustertest.Fault{Kind: plantedName + "/", Responses: true, Drop: true})
			time.Sleep(time.Duration(1+r.IntN(5)) * time.Millisecond) // spacing faults, not synchronisation
			remove()
			time.Sleep(time.Duration(10+r.IntN(40)) * time.Millisecond)
		}
		close(stop)
		wait()
	}
}

// (b) A read answered from a stale replica: backups lag behind (they are
// delayed), and a member holding a backup answers reads from it.
func TestPlantedStaleReadIsFlagged(t *testing.T) {
	c := clustertest.New(t, 3, usePlanted(bugStaleRead))
	hunt(t, 20*time.Second, laggingBackups(c))
}

// laggingBackups is a round of load with delayed backups.
func laggingBackups(c *clustertest.Cluster) func(seed uint64, rec *clustertest.Recorder) {
	return func(seed uint64, rec *clustertest.Recorder) {
		r := rand.New(rand.NewPCG(seed, 0x5e))
		remove := c.AddFault(&clustertest.Fault{Kind: "backup/", Delay: time.Duration(5+r.IntN(30)) * time.Millisecond})
		defer remove()
		stop := make(chan struct{})
		wait := plantedLoad(rec, seed, 4, roundKeys(seed, 3), anyMember(c), stop)
		time.Sleep(300 * time.Millisecond) // the round's length
		close(stop)
		wait()
	}
}

// (c) An add acknowledged before its backup exists, lost when its primary
// is killed: the backups of the victim are held, the victim is killed
// under load, and the promoted backups never saw its adds.
func TestPlantedAckBeforeBackupIsFlagged(t *testing.T) {
	c := clustertest.New(t, 3, usePlanted(bugAckBeforeBackup))
	hunt(t, 40*time.Second, killWithBackupsHeld(c))
}

// killWithBackupsHeld is a round that holds the backups of a member and
// kills it under load, then adds a member.
func killWithBackupsHeld(c *clustertest.Cluster) func(seed uint64, rec *clustertest.Recorder) {
	return func(seed uint64, rec *clustertest.Recorder) {
		r := rand.New(rand.NewPCG(seed, 0xac))
		victim := 1 + r.IntN(2) // not the master, so that the table moves on at once
		keys := []string{c.KeyOwnedBy(victim, fmt.Sprintf("s%d-a", seed)), c.KeyOwnedBy(victim, fmt.Sprintf("s%d-b", seed))}
		hold := make(chan struct{})
		defer close(hold)
		defer c.AddFault(&clustertest.Fault{From: c.Member(victim).ID(), Kind: "backup/", Hold: hold})()
		others := c.Members()
		others = append(others[:victim:victim], others[victim+1:]...)
		stop := make(chan struct{})
		wait := plantedLoad(rec, seed, 3, keys, func(r *rand.Rand) *nodeengine.Node { return others[r.IntN(len(others))] }, stop)
		time.Sleep(time.Duration(100+r.IntN(200)) * time.Millisecond) // load before the kill
		c.Kill(victim)
		close(stop)
		wait()
		// Read every key once the failover is done, through a survivor.
		for _, k := range keys {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			clustertest.Record(rec, 99, clustertest.CounterGet{Name: k}, func() (int64, error) { return plantedRead(ctx, others[0], k) })
			cancel()
		}
		c.AddMember()
		c.WaitStable()
	}
}

// The control: the same rounds against the service without its bug pass
// the check, so that the tests above flag the bugs, not the harness.
func TestPlantedControlIsLinearizable(t *testing.T) {
	c := clustertest.New(t, 3, usePlanted(bugNone))
	for i, round := range []func(uint64, *clustertest.Recorder){lostAnswers(c), laggingBackups(c), killWithBackupsHeld(c)} {
		// Seeds apart, so that no round uses the keys of another.
		rec := clustertest.NewRecorder()
		round(uint64(100+i), rec)
		if err := clustertest.CheckLinearizable(t, clustertest.CounterModel, rec.Operations()); err != nil {
			t.Errorf("round %d: %v", i, err)
		}
	}
}
