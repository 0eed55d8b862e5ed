// Package counter is Partita's reference service: a distributed counter,
// the Go edition of the CounterService of Hazelcast's "User Defined
// Services" guide.
//
// Each counter lives in the partition of its name. The service keeps one
// container per partition, touched only as that partition's executor, so
// no lock guards the values. IncOperation, GetOperation and
// IncBackupOperation run as the executor of their partition (they are
// spi.NonBlockingOperations, so possibly in its place, on the invoking
// caller's goroutine or a connection's reader); CounterMigrationOperation
// and the spi.MigrationAwareService methods (migration.go) run on the
// partition's executor goroutine; DestroyDistributedObject, LocalValues
// and the metrics collector reach a container with RunOnPartition. The
// proxy's methods (Counter.Inc, Get, Destroy) may be called from any
// goroutine and wait for the owner, and for an increment its synchronous
// backups: call them from your own goroutines, never from an operation.
//
// A counter is a PN-counter (state.go), so that after a split brain the
// smaller side's counters merge into the larger side's without losing an
// acknowledged increment of either (splitbrain.go: PrepareMerge,
// CounterMergeOperation and the counter-sum merge policy).
//
// The steps of Hazelcast's guide map to this package as spi's overview
// lists them; docs/guide.md walks through the code.
//
// Enable it in the config file:
//
//	services:
//	  - name: CounterService
//	    type: counter
//	    properties:
//	      log-level: debug  # level of the "Executing <name>.inc()" lines
//
// and use it through a proxy:
//
//	obj, err := engine.Proxies().Get(ctx, counter.ServiceName, "hits")
//	n, err := obj.(*counter.Counter).Inc(ctx, 1)
package counter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/spi"
	"github.com/prometheus/client_golang/prometheus"
)

// ServiceName is the name the counter service must have in the config
// file; proxies invoke it by this name.
const ServiceName = "CounterService"

// TypeName is the counter's type in the config file.
const TypeName = "counter"

func init() {
	config.RegisterService(TypeName, func() spi.Service { return new(Service) })
}

// Operation type ids of the counter service.
const (
	typeInc         uint16 = 1
	typeGet         uint16 = 2
	typeMigration   uint16 = 3 // CounterMigrationOperation, see migration.go
	typeIncBackup   uint16 = 4
	typeMerge       uint16 = 5 // CounterMergeOperation, see splitbrain.go
	typeMergeBackup uint16 = 6
)

// Service is the counter service of one member.
type Service struct {
	engine  spi.NodeEngine
	log     *slog.Logger
	opLevel slog.Level
	// Backups of each increment: synchronous (waited for) and not.
	syncBackups, asyncBackups int
	containers                []container // by partition id
	policy                    spi.MergePolicy
}

// container holds the counters of one partition. Only that partition's
// operations touch it, one at a time.
type container struct {
	counters map[string]*pnCounter
	// origin is what this member's increments as the partition's primary
	// are counted under (state.go), drawn at the first of them; 0 until
	// then, and again whenever the replica's data may have been replaced
	// (migration, replica sync, merge, destroy, Reset).
	origin uint64
}

var (
	_ spi.ManagedService    = (*Service)(nil)
	_ spi.RemoteService     = (*Service)(nil)
	_ spi.OperationProvider = (*Service)(nil)
)

// Init implements spi.ManagedService. The property log-level (info or
// debug, default debug) sets the level of the per-increment log line.
func (s *Service) Init(engine spi.NodeEngine, props spi.Properties) error {
	s.engine = engine
	s.log = engine.Logger().With("service", ServiceName)
	lvl, err := props.OneOf("log-level", "debug", "info", "debug")
	if err != nil {
		return err
	}
	s.opLevel = slog.LevelInfo
	if lvl == "debug" {
		s.opLevel = slog.LevelDebug
	}
	if s.syncBackups, err = props.Int("backup-count", 1); err != nil {
		return err
	}
	if s.asyncBackups, err = props.Int("async-backup-count", 0); err != nil {
		return err
	}
	if s.syncBackups < 0 || s.asyncBackups < 0 || s.syncBackups+s.asyncBackups > 6 {
		where := ""
		if p, ok := props.Lookup("backup-count"); ok && p.Where != "" {
			where = p.Where + ": "
		}
		return fmt.Errorf("%sservice %q: backup-count %d + async-backup-count %d must be 0..6",
			where, ServiceName, s.syncBackups, s.asyncBackups)
	}
	s.containers = make([]container, engine.Partitions().PartitionCount())
	for i := range s.containers {
		s.containers[i].counters = make(map[string]*pnCounter)
	}
	s.policy = engine.MergePolicy(ServiceName)
	return s.registerMetrics(engine)
}

// registerMetrics exports the number of counters this member holds, as
// primary and as backup replica, through the engine's registry.
func (s *Service) registerMetrics(engine spi.NodeEngine) error {
	desc := prometheus.NewDesc("partita_counter_counters",
		"Counters held on this member, by replica kind (primary or backup).", []string{"replica"}, nil)
	return engine.Metrics().Register(collector{s, desc})
}

// collector counts the counters when scraped. The containers belong to
// their partitions' executors, so it asks each partition there, as an
// operation would, and needs no lock on the hot path.
type collector struct {
	s    *Service
	desc *prometheus.Desc
}

func (c collector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	type count struct{ primary, backup int }
	counts := make(chan count, len(s.containers))
	asked := 0
	for p := range s.containers {
		err := s.engine.Operations().RunOnPartition(p, func() {
			var n count
			switch i := s.engine.Partitions().ReplicaIndex(p); {
			case i == 0:
				n.primary = len(s.containers[p].counters)
			case i > 0:
				n.backup = len(s.containers[p].counters)
			}
			counts <- n
		})
		if err == nil {
			asked++
		}
	}
	var total count
	timeout := time.NewTimer(time.Second)
	defer timeout.Stop()
	for range asked {
		select {
		case n := <-counts:
			total.primary += n.primary
			total.backup += n.backup
		case <-timeout.C:
			ch <- prometheus.NewInvalidMetric(c.desc, fmt.Errorf("partition executors did not answer within 1s"))
			return
		}
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(total.primary), "primary")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(total.backup), "backup")
}

// Shutdown implements spi.ManagedService.
func (s *Service) Shutdown(terminate bool) {}

// Reset implements spi.ManagedService: it drops every counter on this
// member, and the origins its increments were counted under (the engine
// calls it with no operation running, before the member rejoins).
func (s *Service) Reset() {
	for i := range s.containers {
		s.containers[i].clear()
	}
}

// CreateDistributedObject implements spi.RemoteService.
func (s *Service) CreateDistributedObject(name string) (spi.DistributedObject, error) {
	return &Counter{name: name, engine: s.engine, partition: s.engine.Partitions().PartitionID(name)}, nil
}

// DestroyDistributedObject implements spi.RemoteService: the value is
// dropped on the partition's executor, after the operations queued
// before, and the engine forgets the invocations recorded so far on the
// partition (some ran on the dropped value: a merge must not take them
// for runs that still count; splitbrain.go).
func (s *Service) DestroyDistributedObject(name string) {
	p := s.engine.Partitions().PartitionID(name)
	if err := s.engine.Operations().RunOnPartition(p, func() {
		s.containers[p].destroy(name)
		s.engine.ForgetRecordedInvocations(p)
	}); err != nil {
		s.log.Warn("cannot drop destroyed counter", "name", name, "error", err)
	}
}

// OperationTypes implements spi.OperationProvider.
func (s *Service) OperationTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: typeInc, New: func() spi.Operation { return new(IncOperation) }},
		{ID: typeGet, New: func() spi.Operation { return new(GetOperation) }},
		{ID: typeMigration, New: func() spi.Operation { return new(CounterMigrationOperation) }},
		{ID: typeIncBackup, New: func() spi.Operation { return new(IncBackupOperation) }},
		{ID: typeMerge, New: func() spi.Operation { return new(CounterMergeOperation) }},
		{ID: typeMergeBackup, New: func() spi.Operation { return new(CounterMergeBackupOperation) }},
	}
}

// LocalValues returns a copy of the counters this member holds, read on
// the partition executors. Tests and metrics use it.
func (s *Service) LocalValues(ctx context.Context) (map[string]int64, error) {
	out := make(map[string]int64)
	done := make(chan map[string]int64, len(s.containers))
	for p := range s.containers {
		if err := s.engine.Operations().RunOnPartition(p, func() { done <- s.containers[p].values() }); err != nil {
			return nil, err
		}
	}
	for range s.containers {
		select {
		case m := <-done:
			for k, v := range m {
				out[k] = v
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return out, nil
}

// Counter is the proxy of one distributed counter.
type Counter struct {
	name      string
	partition int
	engine    spi.NodeEngine
}

var _ spi.DistributedObject = (*Counter)(nil)

// Name implements spi.DistributedObject.
func (c *Counter) Name() string { return c.name }

// ServiceName implements spi.DistributedObject.
func (c *Counter) ServiceName() string { return ServiceName }

// Destroy implements spi.DistributedObject: the counter is removed on
// every member.
func (c *Counter) Destroy(ctx context.Context) error {
	return c.engine.Proxies().Destroy(ctx, ServiceName, c.name)
}

// Inc adds amount to the counter on its partition's owner and returns the
// new value.
func (c *Counter) Inc(ctx context.Context, amount int64) (int64, error) {
	v, err := c.engine.Operations().Invoke(ctx, ServiceName, &IncOperation{Name: c.name, Amount: amount}, c.partition)
	if err != nil {
		return 0, fmt.Errorf("counter %q: inc: %w", c.name, err)
	}
	return v.(int64), nil
}

// Get returns the counter's value.
func (c *Counter) Get(ctx context.Context) (int64, error) {
	v, err := c.engine.Operations().Invoke(ctx, ServiceName, &GetOperation{Name: c.name}, c.partition)
	if err != nil {
		return 0, fmt.Errorf("counter %q: get: %w", c.name, err)
	}
	return v.(int64), nil
}

// IncOperation adds Amount to the counter Name and responds with the new
// value. It is backed up: IncBackupOperation repeats the addition on the
// backup replicas (backup-count of them synchronously, async-backup-count
// more without waiting).
type IncOperation struct {
	Name   string
	Amount int64
	value  int64
	origin uint64 // what Run counted the increment under
	svc    *Service
}

var _ spi.BackupAwareOperation = (*IncOperation)(nil)

// SyncBackupCount implements spi.BackupAwareOperation.
func (op *IncOperation) SyncBackupCount() int { return op.svc.syncBackups }

// AsyncBackupCount implements spi.BackupAwareOperation.
func (op *IncOperation) AsyncBackupCount() int { return op.svc.asyncBackups }

// ShouldBackup implements spi.BackupAwareOperation: adding 0 changes
// nothing.
func (op *IncOperation) ShouldBackup() bool { return op.Amount != 0 }

// BackupOperation implements spi.BackupAwareOperation.
func (op *IncOperation) BackupOperation() spi.Operation {
	return &IncBackupOperation{Name: op.Name, Origin: op.origin, Amount: op.Amount}
}

// NonBlocking implements spi.NonBlockingOperation: Run only updates the
// partition's map (and may log), so the engine may run it on the
// goroutine that has it when the partition's executor is idle.
func (op *IncOperation) NonBlocking() {}

// IncBackupOperation repeats an increment on a backup replica, under the
// origin the primary counted it under, so that the backup's state stays
// the primary's.
type IncBackupOperation struct {
	Name   string
	Origin uint64
	Amount int64
}

var _ spi.BackupOperation = (*IncBackupOperation)(nil)

// Backup implements spi.BackupOperation.
func (op *IncBackupOperation) Backup() {}

// NonBlocking implements spi.NonBlockingOperation: Run only updates the
// partition's map (and may log).
func (op *IncBackupOperation) NonBlocking() {}

// Run implements spi.Operation, on the backup's partition executor.
func (op *IncBackupOperation) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*Service)
	if s.log.Enabled(context.Background(), s.opLevel) {
		s.log.Log(context.Background(), s.opLevel, "Executing backup "+op.Name+".inc() on: "+ctx.Engine.LocalMember().Address,
			"partition", ctx.PartitionID, "replica", ctx.ReplicaIndex)
	}
	s.containers[ctx.PartitionID].counter(op.Name).add(op.Origin, op.Amount)
	return nil
}

// WriteData implements spi.Operation.
func (op *IncBackupOperation) WriteData(w *spi.Writer) {
	w.WriteString(op.Name)
	w.WriteUint64(op.Origin)
	w.WriteVarint(op.Amount)
}

// ReadData implements spi.Operation.
func (op *IncBackupOperation) ReadData(r *spi.Reader) error {
	op.Name, op.Origin, op.Amount = r.ReadString(), r.ReadUint64(), r.ReadVarint()
	return r.Err()
}

// Run implements spi.Operation.
func (op *IncOperation) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*Service)
	op.svc = s
	if s.log.Enabled(context.Background(), s.opLevel) {
		s.log.Log(context.Background(), s.opLevel, "Executing "+op.Name+".inc() on: "+ctx.Engine.LocalMember().Address,
			"partition", ctx.PartitionID)
	}
	c := &s.containers[ctx.PartitionID]
	if op.Amount == 0 { // a read: it makes no counter, as it has no backup
		if ctr := c.counters[op.Name]; ctr != nil {
			op.value = ctr.value
		}
		return nil
	}
	switch {
	case ctx.Retried:
		// A retry whose earlier attempt may have run on the other side of
		// a split: counted apart, so that a merge can cancel it
		// (splitbrain.go).
		op.origin = retriedOrigin(ctx.Invocation)
	default:
		if c.origin == 0 {
			c.origin = newOrigin()
		}
		op.origin = c.origin
	}
	ctr := c.counter(op.Name)
	ctr.add(op.origin, op.Amount)
	op.value = ctr.value
	return nil
}

// Response implements spi.ResponseOperation.
func (op *IncOperation) Response() any { return op.value }

// WriteData implements spi.Operation.
func (op *IncOperation) WriteData(w *spi.Writer) {
	w.WriteString(op.Name)
	w.WriteVarint(op.Amount)
}

// ReadData implements spi.Operation.
func (op *IncOperation) ReadData(r *spi.Reader) error {
	op.Name, op.Amount = r.ReadString(), r.ReadVarint()
	return r.Err()
}

// GetOperation reads the counter Name.
type GetOperation struct {
	Name  string
	value int64
}

// Run implements spi.Operation.
func (op *GetOperation) Run(ctx *spi.OpContext) error {
	if ctr := ctx.Service.(*Service).containers[ctx.PartitionID].counters[op.Name]; ctr != nil {
		op.value = ctr.value
	}
	return nil
}

// Response implements spi.ResponseOperation.
func (op *GetOperation) Response() any { return op.value }

// NonBlocking implements spi.NonBlockingOperation.
func (op *GetOperation) NonBlocking() {}

// WriteData implements spi.Operation.
func (op *GetOperation) WriteData(w *spi.Writer) { w.WriteString(op.Name) }

// ReadData implements spi.Operation.
func (op *GetOperation) ReadData(r *spi.Reader) error {
	op.Name = r.ReadString()
	return r.Err()
}
