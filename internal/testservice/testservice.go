// Package testservice is the smallest partitioned service the engine's
// tests need: named int64 registers, each in the partition of its name,
// with a backed-up add, a read, migration support and split-brain merge
// support (each register merged by the service's merge policy). It
// exercises what a product service relies on the engine for (routing,
// backups and their answers, exactly-once retries, migrations, replica
// syncs, failover, split-brain healing) without testing any product's own
// semantics.
//
// Enable it with Use; call it with Add and Get; read a member's copy with
// Local.
package testservice

import (
	"context"
	"fmt"
	"maps"
	"strconv"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/spi"
)

// Name is the service's name in the config; operation kinds start with
// "TestService/", for example "TestService/*testservice.AddOperation".
const Name = "TestService"

func init() {
	config.RegisterService("testservice", func() spi.Service { return new(Service) })
}

// Use makes the test service the member's only service, with backups
// synchronous backups per add (the partition table's backup-count too).
// clustertest.WithConfig(testservice.Use(1)) is the usual cluster.
func Use(backups int) func(int, *config.Config) {
	return func(_ int, cfg *config.Config) {
		cfg.Partitions.BackupCount = backups
		cfg.Services = []config.ServiceConfig{{Name: Name, Type: "testservice", Enabled: true,
			Properties: spi.Properties{}.With("backup-count", strconv.Itoa(backups))}}
	}
}

// Service holds, per partition, the registers of this member's replicas
// of it; only the partition's executor touches them.
type Service struct {
	engine  spi.NodeEngine
	backups int
	parts   []map[string]int64
}

// Init implements spi.ManagedService; the property backup-count (default
// 1) is the number of synchronous backups per add.
func (s *Service) Init(e spi.NodeEngine, props spi.Properties) (err error) {
	s.engine = e
	s.parts = make([]map[string]int64, e.Partitions().PartitionCount())
	for p := range s.parts {
		s.parts[p] = map[string]int64{}
	}
	s.backups, err = props.Int("backup-count", 1)
	return err
}

// Shutdown implements spi.ManagedService.
func (s *Service) Shutdown(bool) {}

// Reset implements spi.ManagedService.
func (s *Service) Reset() {
	for _, m := range s.parts {
		clear(m)
	}
}

// OperationTypes implements spi.OperationProvider.
func (s *Service) OperationTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return new(AddOperation) }},
		{ID: 2, New: func() spi.Operation { return new(addBackup) }},
		{ID: 3, New: func() spi.Operation { return new(getOperation) }},
		{ID: 4, New: func() spi.Operation { return new(snapshot) }},
		{ID: 5, New: func() spi.Operation { return new(mergeOperation) }},
		{ID: 6, New: func() spi.Operation { return new(mergeBackup) }},
	}
}

// Engine is what Add and Get need of a member (a *nodeengine.Node).
type Engine interface {
	Operations() spi.OperationService
	Partitions() spi.PartitionService
}

// Add adds delta to register key through member e and returns its new value.
func Add(ctx context.Context, e Engine, key string, delta int64) (int64, error) {
	v, err := e.Operations().Invoke(ctx, Name, &AddOperation{add: add{key, delta}}, e.Partitions().PartitionID(key))
	if err != nil {
		return 0, err
	}
	return v.(int64), nil
}

// Get reads register key through member e.
func Get(ctx context.Context, e Engine, key string) (int64, error) {
	v, err := e.Operations().Invoke(ctx, Name, &getOperation{Key: key}, e.Partitions().PartitionID(key))
	if err != nil {
		return 0, err
	}
	return v.(int64), nil
}

// Local returns a copy of the registers of every replica that member n
// (a *nodeengine.Node) holds, read on its partition executors.
func Local(ctx context.Context, n interface {
	Service(string) (spi.Service, bool)
}) (map[string]int64, error) {
	sv, _ := n.Service(Name)
	s := sv.(*Service)
	copies := make(chan map[string]int64, len(s.parts))
	for p := range s.parts {
		if err := s.engine.Operations().RunOnPartition(p, func() { copies <- maps.Clone(s.parts[p]) }); err != nil {
			return nil, err
		}
	}
	out := map[string]int64{}
	for range s.parts {
		select {
		case m := <-copies:
			maps.Copy(out, m)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return out, nil
}

// AddOperation adds Delta to register Key; its backups repeat the addition.
// Like a product's write it is non-blocking, so it takes the engine's
// fast path too.
type AddOperation struct {
	add
	value   int64
	backups int
}

// Run implements spi.Operation.
func (op *AddOperation) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*Service)
	op.backups = s.backups
	op.value = s.parts[ctx.PartitionID][op.Key] + op.Delta
	s.parts[ctx.PartitionID][op.Key] = op.value
	return nil
}

func (op *AddOperation) Response() any                  { return op.value }
func (op *AddOperation) SyncBackupCount() int           { return op.backups }
func (op *AddOperation) AsyncBackupCount() int          { return 0 }
func (op *AddOperation) ShouldBackup() bool             { return op.Delta != 0 }
func (op *AddOperation) BackupOperation() spi.Operation { return &addBackup{op.add} }

// addBackup repeats an add on a backup replica.
type addBackup struct{ add }

func (op *addBackup) Run(ctx *spi.OpContext) error {
	ctx.Service.(*Service).parts[ctx.PartitionID][op.Key] += op.Delta
	return nil
}
func (op *addBackup) Backup() {}

// add is the payload of an add and its backups.
type add struct {
	Key   string
	Delta int64
}

func (a *add) NonBlocking()            {}
func (a *add) WriteData(w *spi.Writer) { w.WriteString(a.Key); w.WriteVarint(a.Delta) }
func (a *add) ReadData(r *spi.Reader) error {
	a.Key, a.Delta = r.ReadString(), r.ReadVarint()
	return r.Err()
}

// getOperation reads register Key.
type getOperation struct {
	Key   string
	value int64
}

func (op *getOperation) Run(ctx *spi.OpContext) error {
	op.value = ctx.Service.(*Service).parts[ctx.PartitionID][op.Key]
	return nil
}
func (op *getOperation) Response() any                { return op.value }
func (op *getOperation) NonBlocking()                 {}
func (op *getOperation) WriteData(w *spi.Writer)      { w.WriteString(op.Key) }
func (op *getOperation) ReadData(r *spi.Reader) error { op.Key = r.ReadString(); return r.Err() }

// snapshot carries a partition's registers to a migration's destination
// or a replica being synced, where Run sets them.
type snapshot struct{ Values map[string]int64 }

func (op *snapshot) Run(ctx *spi.OpContext) error {
	maps.Copy(ctx.Service.(*Service).parts[ctx.PartitionID], op.Values)
	return nil
}
func (op *snapshot) WriteData(w *spi.Writer) {
	w.WriteUvarint(uint64(len(op.Values)))
	for k, v := range op.Values { // order does not matter to the tests
		w.WriteString(k)
		w.WriteVarint(v)
	}
}
func (op *snapshot) ReadData(r *spi.Reader) error {
	n := r.ReadUvarint()
	op.Values = map[string]int64{}
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		op.Values[r.ReadString()] = r.ReadVarint()
	}
	return r.Err()
}

// PrepareReplicationOperation implements spi.MigrationAwareService: a copy
// of the partition's registers, nil when it has none.
func (s *Service) PrepareReplicationOperation(e spi.PartitionReplicationEvent) spi.Operation {
	if len(s.parts[e.PartitionID]) == 0 {
		return nil
	}
	return &snapshot{Values: maps.Clone(s.parts[e.PartitionID])}
}

// BeforeMigration implements spi.MigrationAwareService.
func (s *Service) BeforeMigration(spi.PartitionMigrationEvent) {}

// CommitMigration implements spi.MigrationAwareService: a source that
// keeps no replica drops the partition.
func (s *Service) CommitMigration(e spi.PartitionMigrationEvent) {
	if e.Endpoint == spi.MigrationSource && e.NewReplicaIndex == -1 {
		clear(s.parts[e.PartitionID])
	}
}

// RollbackMigration implements spi.MigrationAwareService: a destination
// that held no replica drops what it received.
func (s *Service) RollbackMigration(e spi.PartitionMigrationEvent) {
	if e.Endpoint == spi.MigrationDestination && e.CurrentReplicaIndex == -1 {
		clear(s.parts[e.PartitionID])
	}
}

// ClearPartitionReplica implements spi.MigrationAwareService.
func (s *Service) ClearPartitionReplica(p int) { clear(s.parts[p]) }

var _ spi.SplitBrainHandlerService = (*Service)(nil)

// PrepareMerge implements spi.SplitBrainHandlerService: a copy of the
// partition's registers, merged on the larger cluster by the service's
// merge policy (put-if-absent unless the config names another).
func (s *Service) PrepareMerge(p int) []spi.Operation {
	if len(s.parts[p]) == 0 {
		return nil
	}
	return []spi.Operation{&mergeOperation{Values: maps.Clone(s.parts[p])}}
}

// mergeOperation merges the merging side's registers of one partition
// into the partition's owner, register by register, with the service's
// merge policy; its backup sets what it changed.
type mergeOperation struct {
	Values map[string]int64

	backups int
	set     map[string]int64
	removed []string
}

func (op *mergeOperation) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*Service)
	op.backups = s.backups
	policy := s.engine.MergePolicy(Name)
	regs := s.parts[ctx.PartitionID]
	op.set, op.removed = map[string]int64{}, nil
	for k, v := range op.Values {
		existing, exists := regs[k]
		var cur any
		if exists {
			cur = existing
		}
		got, keep := policy.Merge(v, cur, exists)
		if !keep {
			if exists {
				delete(regs, k)
				op.removed = append(op.removed, k)
			}
			continue
		}
		nv, ok := got.(int64)
		if !ok {
			return fmt.Errorf("register %q: merge policy %s returned %T, want int64", k, policy.Name(), got)
		}
		if !exists || nv != existing {
			regs[k] = nv
			op.set[k] = nv
		}
	}
	return nil
}

func (op *mergeOperation) SyncBackupCount() int  { return op.backups }
func (op *mergeOperation) AsyncBackupCount() int { return 0 }
func (op *mergeOperation) ShouldBackup() bool    { return len(op.set)+len(op.removed) > 0 }
func (op *mergeOperation) BackupOperation() spi.Operation {
	return &mergeBackup{Set: op.set, Removed: op.removed}
}
func (op *mergeOperation) WriteData(w *spi.Writer) { writeValues(w, op.Values) }
func (op *mergeOperation) ReadData(r *spi.Reader) error {
	op.Values = readValues(r)
	return r.Err()
}

// mergeBackup sets on a backup replica what a mergeOperation changed on
// the primary.
type mergeBackup struct {
	Set     map[string]int64
	Removed []string
}

func (op *mergeBackup) Run(ctx *spi.OpContext) error {
	regs := ctx.Service.(*Service).parts[ctx.PartitionID]
	maps.Copy(regs, op.Set)
	for _, k := range op.Removed {
		delete(regs, k)
	}
	return nil
}
func (op *mergeBackup) Backup() {}
func (op *mergeBackup) WriteData(w *spi.Writer) {
	writeValues(w, op.Set)
	w.WriteUvarint(uint64(len(op.Removed)))
	for _, k := range op.Removed {
		w.WriteString(k)
	}
}
func (op *mergeBackup) ReadData(r *spi.Reader) error {
	op.Set = readValues(r)
	n := r.ReadUvarint()
	op.Removed = nil
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		op.Removed = append(op.Removed, r.ReadString())
	}
	return r.Err()
}

func writeValues(w *spi.Writer, vals map[string]int64) {
	w.WriteUvarint(uint64(len(vals)))
	for k, v := range vals {
		w.WriteString(k)
		w.WriteVarint(v)
	}
}

func readValues(r *spi.Reader) map[string]int64 {
	n := r.ReadUvarint()
	vals := map[string]int64{}
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		vals[r.ReadString()] = r.ReadVarint()
	}
	return vals
}
