package nodeengine_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/spi"
)

// ledger is a test service that records every migration hook call and
// keeps one value per partition, so migrations carry data.
type ledger struct {
	engine spi.NodeEngine
	data   []map[string]int64

	mu      sync.Mutex
	entries []ledgerEntry
}

type ledgerEntry struct {
	kind string // before, commit, rollback
	ev   spi.PartitionMigrationEvent
}

func (l *ledger) Init(e spi.NodeEngine, _ spi.Properties) error {
	l.engine = e
	l.data = make([]map[string]int64, e.Partitions().PartitionCount())
	for i := range l.data {
		l.data[i] = map[string]int64{}
	}
	return nil
}
func (l *ledger) Shutdown(bool) {}
func (l *ledger) Reset()        {}
func (l *ledger) OperationTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return new(ledgerPut) }},
		{ID: 2, New: func() spi.Operation { return new(ledgerCopy) }},
	}
}
func (l *ledger) record(kind string, e spi.PartitionMigrationEvent) {
	l.mu.Lock()
	l.entries = append(l.entries, ledgerEntry{kind, e})
	l.mu.Unlock()
}
func (l *ledger) BeforeMigration(e spi.PartitionMigrationEvent) { l.record("before", e) }
func (l *ledger) CommitMigration(e spi.PartitionMigrationEvent) {
	l.record("commit", e)
	if e.Endpoint == spi.MigrationSource {
		clear(l.data[e.PartitionID])
	}
}
func (l *ledger) RollbackMigration(e spi.PartitionMigrationEvent) {
	l.record("rollback", e)
	if e.Endpoint == spi.MigrationDestination {
		clear(l.data[e.PartitionID])
	}
}
func (l *ledger) ClearPartitionReplica(p int) { clear(l.data[p]) }
func (l *ledger) PrepareReplicationOperation(e spi.PartitionReplicationEvent) spi.Operation {
	if len(l.data[e.PartitionID]) == 0 {
		return nil
	}
	op := &ledgerCopy{Values: map[string]int64{}}
	for k, v := range l.data[e.PartitionID] {
		op.Values[k] = v
	}
	return op
}

func (l *ledger) log() []ledgerEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ledgerEntry(nil), l.entries...)
}

type ledgerPut struct{ Key string }

func (o *ledgerPut) Run(ctx *spi.OpContext) error {
	ctx.Service.(*ledger).data[ctx.PartitionID][o.Key]++
	return nil
}
func (o *ledgerPut) WriteData(w *spi.Writer)      { w.WriteString(o.Key) }
func (o *ledgerPut) ReadData(r *spi.Reader) error { o.Key = r.ReadString(); return r.Err() }

type ledgerCopy struct{ Values map[string]int64 }

func (o *ledgerCopy) Run(ctx *spi.OpContext) error {
	for k, v := range o.Values {
		ctx.Service.(*ledger).data[ctx.PartitionID][k] = v
	}
	return nil
}
func (o *ledgerCopy) WriteData(w *spi.Writer) {
	w.WriteUvarint(uint64(len(o.Values)))
	for k, v := range o.Values {
		w.WriteString(k)
		w.WriteVarint(v)
	}
}
func (o *ledgerCopy) ReadData(r *spi.Reader) error {
	n := r.ReadUvarint()
	o.Values = map[string]int64{}
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		o.Values[r.ReadString()] = r.ReadVarint()
	}
	return r.Err()
}

func init() { config.RegisterService("ledger", func() spi.Service { return new(ledger) }) }

func withLedger(i int, c *config.Config) {
	c.Services = append(c.Services, config.ServiceConfig{Name: "Ledger", Type: "ledger", Enabled: true})
}

func ledgerOf(n *nodeengine.Node) *ledger {
	s, _ := n.Service("Ledger")
	return s.(*ledger)
}

// checkLedgers asserts the migration hook contract on every member given:
// each BeforeMigration is followed by exactly one Commit or Rollback of the
// same event, and a migration's two endpoints agree on its outcome. A
// destination refuses some attempts before its BeforeMigration (another
// migration in flight, a master it does not follow yet: a member that has
// just joined has no member list for a moment), so the source may show
// attempts the destination does not: those must be rollbacks.
func checkLedgers(t *testing.T, members []*nodeengine.Node) (migrations int) {
	t.Helper()
	type move struct {
		p        int
		src, dst string
	}
	outcomes := map[move]map[spi.MigrationEndpoint][]string{} // in each endpoint's order
	for _, n := range members {
		open := map[int]spi.PartitionMigrationEvent{} // partition -> event awaiting its end
		for _, e := range ledgerOf(n).log() {
			switch e.kind {
			case "before":
				if prev, ok := open[e.ev.PartitionID]; ok {
					t.Fatalf("member %s: BeforeMigration %+v while %+v is not finished", n.Address(), e.ev, prev)
				}
				open[e.ev.PartitionID] = e.ev
			default:
				prev, ok := open[e.ev.PartitionID]
				if !ok || prev != e.ev {
					t.Fatalf("member %s: %s %+v without a matching BeforeMigration (open: %+v)", n.Address(), e.kind, e.ev, prev)
				}
				delete(open, e.ev.PartitionID)
				m := move{e.ev.PartitionID, e.ev.Source, e.ev.Destination}
				if outcomes[m] == nil {
					outcomes[m] = map[spi.MigrationEndpoint][]string{}
				}
				outcomes[m][e.ev.Endpoint] = append(outcomes[m][e.ev.Endpoint], e.kind)
				// The source was the primary and becomes nothing or a
				// backup; the destination was nothing or a backup and
				// becomes the primary.
				mine, other := e.ev.CurrentReplicaIndex, e.ev.NewReplicaIndex
				if e.ev.Endpoint == spi.MigrationDestination {
					mine, other = other, mine
				}
				if mine != 0 || other == 0 || other < -1 {
					t.Fatalf("member %s: %s event %+v has replica indexes %d -> %d", n.Address(), e.ev.Endpoint, e.ev, e.ev.CurrentReplicaIndex, e.ev.NewReplicaIndex)
				}
			}
		}
		if len(open) != 0 {
			t.Fatalf("member %s: %d BeforeMigration calls never finished: %+v", n.Address(), len(open), open)
		}
	}
	for m, o := range outcomes {
		src, dst := o[spi.MigrationSource], o[spi.MigrationDestination]
		migrations += max(len(src), len(dst))
		if len(src) == 0 || len(dst) == 0 {
			continue
		}
		// Match each destination outcome with the source's next attempt,
		// skipping the source's attempts the destination refused.
		i := 0
		for _, d := range dst {
			for i < len(src) && src[i] != d && src[i] == "rollback" {
				i++
			}
			if i == len(src) || src[i] != d {
				t.Fatalf("migration %+v: source outcomes %q, destination outcomes %q", m, src, dst)
			}
			i++
		}
		for ; i < len(src); i++ {
			if src[i] != "rollback" {
				t.Fatalf("migration %+v: source outcomes %q, destination outcomes %q", m, src, dst)
			}
		}
	}
	return migrations
}

func fillLedger(t *testing.T, n *nodeengine.Node, keys int) {
	t.Helper()
	ctx := ctxT(t)
	for k := 0; k < keys; k++ {
		key := fmt.Sprintf("k%d", k)
		if _, err := n.Operations().Invoke(ctx, "Ledger", &ledgerPut{Key: key}, n.Partitions().PartitionID(key)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMigrationHookLedger(t *testing.T) {
	c := clustertest.New(t, 2, clustertest.WithConfig(withLedger))
	fillLedger(t, c.Member(0), 2000)
	all := c.Members()
	all = append(all, c.AddMember())
	c.WaitStable()
	all = append(all, c.AddMembers(2)...)
	c.WaitStable()
	c.Shutdown(1)
	c.WaitStable()
	n := checkLedgers(t, all)
	if n < 100 {
		t.Fatalf("only %d migrations recorded", n)
	}
	t.Logf("%d migrations, every hook paired on both endpoints", n)
}

// The destination dies while the master holds its replication data: the
// migrations roll back, are planned again without it, and the registers
// stay exact.
func TestKillDestinationMidMigration(t *testing.T) {
	c := newCluster(t, 2, 1, withLedger)
	fillLedger(t, c.Member(0), 1000)
	ctx := ctxT(t)
	counters := make([]register, 50)
	for i := range counters {
		counters[i] = reg(c, i%2, fmt.Sprintf("c%d", i))
	}
	var acked [50]int64
	inc := func(rounds int) {
		for r := 0; r < rounds; r++ {
			for i, ctr := range counters {
				if _, err := ctr.Inc(ctx, 1); err != nil {
					t.Fatal(err)
				}
				acked[i]++
			}
		}
	}
	inc(3)

	hold := &clustertest.Fault{Kind: "migration.apply", Hold: make(chan struct{})}
	remove := c.AddFault(hold)
	c.AddMember()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if hold.Hits() == 0 {
			return fmt.Errorf("no migration reached the destination yet")
		}
		return nil
	})
	// Increments keep working while partitions wait for the destination.
	incDone := make(chan struct{})
	go func() { defer close(incDone); inc(2) }()
	c.Kill(2)
	close(hold.Hold)
	remove()
	<-incDone
	c.WaitStable()
	inc(1)
	for i, ctr := range counters {
		if v, err := ctr.Get(ctx); err != nil || v != acked[i] {
			t.Fatalf("counter c%d = %d (%v), acknowledged %d", i, v, err, acked[i])
		}
	}
	if rb := c.Member(0).Inspect().MigrationStats().RolledBack; rb == 0 {
		t.Fatal("no migration was rolled back")
	}
	checkLedgers(t, c.Members())
	// Each survivor owns half, holds only data it owns, and all 1000 keys
	// survived.
	tab := c.Member(0).Inspect().Table()
	keys := 0
	for _, m := range c.Members() {
		if k := tab.Counts()[m.ID()]; k < 135 || k > 136 {
			t.Fatalf("member %s owns %d partitions", m.Address(), k)
		}
		for p, n := range ledgerHeld(t, m) {
			switch tab.ReplicaIndex(p, m.ID()) {
			case -1:
				t.Fatalf("member %s holds %d keys of partition %d, replicas %s %v", m.Address(), n, p, tab.Owner(p), tab.BackupsOf(p))
			case 0:
				keys += n
			}
		}
	}
	if keys != 1000 {
		t.Fatalf("the survivors hold %d ledger keys, want 1000", keys)
	}
}

// ledgerHeld returns how many keys member n's ledger holds per partition,
// read on the partition executors.
func ledgerHeld(t *testing.T, n *nodeengine.Node) map[int]int {
	t.Helper()
	l := ledgerOf(n)
	counts := make([]int, len(l.data))
	var wg sync.WaitGroup
	for p := range l.data {
		wg.Add(1)
		if err := n.Operations().RunOnPartition(p, func() { counts[p] = len(l.data[p]); wg.Done() }); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	out := map[int]int{}
	for p, k := range counts {
		if k > 0 {
			out[p] = k
		}
	}
	return out
}

// Two members shut down gracefully at once: the one left alone stops
// handing its partitions over (nobody is there to take them) instead of
// waiting for the shutdown deadline.
func TestSimultaneousGracefulShutdown(t *testing.T) {
	var logs clustertest.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nodes, err := nodeengine.StartLocal(ctx, 2, func(i int, cfg *config.Config) {
		cfg.UseFastFailureDetection()
		cfg.Migration.ShutdownTimeout = 40 * time.Second
	}, nodeengine.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	clustertest.WaitStable(t, 60*time.Second, nodes...)
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() { n.Shutdown(ctx) })
	}
	wg.Wait()
	if strings.Contains(logs.String(), "graceful shutdown deadline passed") {
		t.Fatalf("a member waited for the shutdown deadline:\n%s", logs.String())
	}
}
