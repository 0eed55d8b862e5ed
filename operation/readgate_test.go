package operation

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
	dto "github.com/prometheus/client_model/go"
)

// cells is a test service: one int64 per partition, touched by the
// partition's operations only.
type cells struct {
	v     [7]int64
	where atomic.Value // where the last read ran: "executor", "reader" or "caller"
}

// cellIncOp adds Amount to its partition's cell and answers the sum; it
// has one synchronous backup (Async: asynchronous instead).
type cellIncOp struct {
	Amount int64
	Async  bool
	sum    int64
}

func (o *cellIncOp) Run(ctx *spi.OpContext) error {
	c := ctx.Service.(*cells)
	c.v[ctx.PartitionID] += o.Amount
	o.sum = c.v[ctx.PartitionID]
	return nil
}
func (o *cellIncOp) Response() any { return o.sum }
func (o *cellIncOp) WriteData(w *spi.Writer) {
	w.WriteVarint(o.Amount)
	w.WriteBool(o.Async)
}
func (o *cellIncOp) ReadData(r *spi.Reader) error {
	o.Amount, o.Async = r.ReadVarint(), r.ReadBool()
	return r.Err()
}
func (o *cellIncOp) SyncBackupCount() int {
	if o.Async {
		return 0
	}
	return 1
}
func (o *cellIncOp) AsyncBackupCount() int {
	if o.Async {
		return 1
	}
	return 0
}
func (o *cellIncOp) ShouldBackup() bool             { return true }
func (o *cellIncOp) BackupOperation() spi.Operation { return &cellIncBackupOp{Amount: o.Amount} }

type cellIncBackupOp struct{ Amount int64 }

func (o *cellIncBackupOp) Backup() {}
func (o *cellIncBackupOp) Run(ctx *spi.OpContext) error {
	ctx.Service.(*cells).v[ctx.PartitionID] += o.Amount
	return nil
}
func (o *cellIncBackupOp) WriteData(w *spi.Writer)      { w.WriteVarint(o.Amount) }
func (o *cellIncBackupOp) ReadData(r *spi.Reader) error { o.Amount = r.ReadVarint(); return r.Err() }

// cellGetOp reads its partition's cell and notes where it ran; it runs on
// the executor's goroutine.
type cellGetOp struct{ v int64 }

func (o *cellGetOp) Run(ctx *spi.OpContext) error {
	c := ctx.Service.(*cells)
	o.v = c.v[ctx.PartitionID]
	buf := make([]byte, 64<<10)
	switch stack := string(buf[:runtime.Stack(buf, false)]); {
	case strings.Contains(stack, "(*executor).loop"):
		c.where.Store("executor")
	case strings.Contains(stack, "(*Conn).readLoop"):
		c.where.Store("reader")
	default:
		c.where.Store("caller")
	}
	return nil
}
func (o *cellGetOp) Response() any                { return o.v }
func (o *cellGetOp) WriteData(*spi.Writer)        {}
func (o *cellGetOp) ReadData(r *spi.Reader) error { return r.Err() }

// cellQuickGetOp is cellGetOp, run in place when its executor is idle.
type cellQuickGetOp struct{ cellGetOp }

func (*cellQuickGetOp) NonBlocking() {}

func cellTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return new(cellIncOp) }},
		{ID: 2, New: func() spi.Operation { return new(cellIncBackupOp) }},
		{ID: 3, New: func() spi.Operation { return new(cellGetOp) }},
		{ID: 4, New: func() spi.Operation { return new(cellQuickGetOp) }},
	}
}

// gateCluster is three members over pipes (see threeRouting): p owns
// every partition, b holds the backup replica, c calls from outside.
// Backups from p of partition heldPartition are held while hold is set.
type gateCluster struct {
	p, b, c    *Service
	pc, bc, cc *cells
	hold       atomic.Pointer[chan struct{}]
	holds      atomic.Int32 // backups held so far
}

const heldPartition = 1

func newGateCluster(t *testing.T) *gateCluster {
	k := &gateCluster{pc: &cells{}, bc: &cells{}, cc: &cells{}}
	member := func(address string) *Service {
		switch address {
		case "p:1":
			return k.p
		case "b:1":
			return k.b
		}
		return k.c
	}
	start := func(id string, svc *cells, hook func(Message) Verdict) *Service {
		s := New(Config{ClusterName: "dev", LocalID: id, LocalAddress: id + ":1", PartitionCount: 7, PartitionThreads: 1,
			Routing: threeRouting{id}, RetryPause: time.Millisecond, Hook: hook, InvocationTimeout: 10 * time.Second,
			Dial: func(ctx context.Context, address string) (net.Conn, error) {
				a, b := net.Pipe()
				member(address).HandleConn(b)
				return a, nil
			}})
		if err := s.Register("cells", svc, cellTypes()); err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(s.Shutdown)
		return s
	}
	k.b = start("b", k.bc, nil)
	k.p = start("p", k.pc, func(m Message) Verdict {
		if m.Frame == transport.KindBackup && m.Partition == heldPartition {
			if h := k.hold.Load(); h != nil {
				k.holds.Add(1)
				return Verdict{Hold: *h}
			}
		}
		return Verdict{}
	})
	k.c = start("c", k.cc, nil)
	return k
}

// holdBackups holds p's backups of heldPartition until the returned
// function is called.
func (k *gateCluster) holdBackups(t *testing.T) (release func()) {
	h := make(chan struct{})
	k.hold.Store(&h)
	release = sync.OnceFunc(func() {
		k.hold.Store(nil)
		close(h)
	})
	t.Cleanup(release)
	return release
}

func answersHeld(s *Service) float64 {
	var m dto.Metric
	s.m.answersHeld.Write(&m)
	return m.GetCounter().GetValue()
}

type result struct {
	v   any
	err error
}

func (k *gateCluster) invokeAsync(from *Service, op spi.Operation, p int) <-chan result {
	ch := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		v, err := from.Invoke(ctx, "cells", op, p)
		ch <- result{v, err}
	}()
	return ch
}

func (k *gateCluster) invoke(t *testing.T, from *Service, op spi.Operation, p int) any {
	t.Helper()
	r := <-k.invokeAsync(from, op, p)
	if r.err != nil {
		t.Fatalf("%T on partition %d: %v", op, p, r.err)
	}
	return r.v
}

// heldWrite adds 5 to heldPartition's cell, then 2 with its backup held,
// and returns once the primary ran the second increment (its answer is
// still due).
func (k *gateCluster) heldWrite(t *testing.T) (inc <-chan result, release func()) {
	t.Helper()
	if v := k.invoke(t, k.c, &cellIncOp{Amount: 5}, heldPartition); v != int64(5) {
		t.Fatalf("first increment = %v, want 5", v)
	}
	release = k.holdBackups(t)
	inc = k.invokeAsync(k.c, &cellIncOp{Amount: 2}, heldPartition)
	eventually(t, func() bool { return k.holds.Load() == 1 })
	return inc, release
}

func notYet(t *testing.T, what string, ch <-chan result) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s answered (%v, %v) while the synchronous backup of an earlier write was held", what, r.v, r.err)
	default:
	}
}

func want(t *testing.T, what string, ch <-chan result, v int64) {
	t.Helper()
	if r := <-ch; r.err != nil || r.v != v {
		t.Fatalf("%s = %v, %v; want %d", what, r.v, r.err, v)
	}
}

// A read that runs after a write whose synchronous backup is not yet
// acknowledged is answered only once it is, with the value including the
// write: the write could still be lost with the primary, and the read
// would then have seen a value that a later write returns again. Reads
// of other partitions, on the same executor, are not held. The same
// whether the read runs on the executor or in its place (the local
// caller's goroutine, the reader of a remote caller's connection).
func TestReadWaitsForEarlierSyncBackups(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remote bool
		op     func() spi.Operation
		where  string
	}{
		{"local, on the executor", false, func() spi.Operation { return new(cellGetOp) }, "executor"},
		{"local, in the caller's place", false, func() spi.Operation { return new(cellQuickGetOp) }, "caller"},
		{"remote, on the executor", true, func() spi.Operation { return new(cellGetOp) }, "executor"},
		{"remote, in the reader's place", true, func() spi.Operation { return new(cellQuickGetOp) }, "reader"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newGateCluster(t)
			from := k.p
			if tc.remote {
				from = k.c
			}
			inc, release := k.heldWrite(t)
			read := k.invokeAsync(from, tc.op(), heldPartition)
			// It ran, and its answer waits (or, unheld, came).
			eventually(t, func() bool { return answersHeld(k.p) == 1 || len(read) > 0 })
			notYet(t, "the read", read)
			if w := k.pc.where.Load(); w != tc.where {
				t.Fatalf("the read ran on the %v's goroutine, want the %s's", w, tc.where)
			}
			// Another partition of the same executor answers at once.
			if v := k.invoke(t, from, tc.op(), heldPartition+1); v != int64(0) {
				t.Fatalf("read of another partition = %v, want 0", v)
			}
			notYet(t, "the read", read)
			notYet(t, "the held write", inc)
			release()
			want(t, "the read", read, 7)
			want(t, "the held write", inc, 7)
			// Nothing is held any more.
			if v := k.invoke(t, from, tc.op(), heldPartition); v != int64(7) {
				t.Fatalf("read after the release = %v, want 7", v)
			}
			if n := answersHeld(k.p); n != 1 {
				t.Fatalf("%v answers held, want 1", n)
			}
		})
	}
}

// A write after a held write is not answered before it either: its own
// synchronous backup is applied after the held one (replicas apply them
// in version order), and one whose backups are only asynchronous waits
// as a read does.
func TestWriteAfterAHeldWriteWaits(t *testing.T) {
	k := newGateCluster(t)
	inc, release := k.heldWrite(t)
	syncInc := k.invokeAsync(k.c, &cellIncOp{Amount: 10}, heldPartition)
	asyncInc := k.invokeAsync(k.p, &cellIncOp{Amount: 100, Async: true}, heldPartition)
	eventually(t, func() bool { return answersHeld(k.p) == 1 && k.holds.Load() == 3 })
	notYet(t, "the write with a synchronous backup", syncInc)
	notYet(t, "the write with an asynchronous backup", asyncInc)
	notYet(t, "the held write", inc)
	release()
	want(t, "the held write", inc, 7)
	r1, r2 := <-syncInc, <-asyncInc
	if r1.err != nil || r2.err != nil {
		t.Fatalf("writes after the held one: %v, %v", r1.err, r2.err)
	}
	// Either order: they ran concurrently.
	if a, b := r1.v.(int64), r2.v.(int64); !(a == 17 && b == 117 || a == 117 && b == 107) {
		t.Fatalf("writes after the held one returned %d and %d", a, b)
	}
	eventually(t, func() bool { return k.b.ReplicaVersion(heldPartition) == 4 }) // the asynchronous one too
	if v := k.invoke(t, k.p, new(cellGetOp), heldPartition); v != int64(117) {
		t.Fatalf("read after the writes = %v, want 117", v)
	}
}

// A write whose synchronous backup is not acknowledged (here its replica
// follows a newer primary and refuses it: the write is not in the history
// that survives) fails the answers held behind it, as its own caller
// learns that its outcome is unknown: they saw it, and delivered they
// would show a write that may be lost (CI, the split nemesis, seed 10: a
// member that gave its data up for a merge released a read that saw its
// unacknowledged increment, whose retry then counted it again before the
// merge cancelled one).
func TestHeldAnswersFailWhenTheWriteIsNotAcknowledged(t *testing.T) {
	k := newGateCluster(t)
	inc, release := k.heldWrite(t)
	local := k.invokeAsync(k.p, new(cellQuickGetOp), heldPartition)
	remote := k.invokeAsync(k.c, new(cellGetOp), heldPartition)
	eventually(t, func() bool { return answersHeld(k.p) == 2 })
	const promoted = 1<<32 + 9 // a version in a promoted primary's epoch
	setVersion(t, k.b, heldPartition, promoted)
	release()
	if r := <-inc; !errors.Is(r.err, spi.ErrIndeterminate) {
		t.Fatalf("the write = %v, %v; want its outcome unknown", r.v, r.err)
	}
	for what, ch := range map[string]<-chan result{"the local read": local, "the remote read": remote} {
		if r := <-ch; !errors.Is(r.err, spi.ErrIndeterminate) || r.v != nil {
			t.Fatalf("%s = %v, %v; want no value, its outcome unknown", what, r.v, r.err)
		}
	}
	// Only the answers held then fail: once the primary follows the new
	// epoch, a read held behind an acknowledged write is answered.
	setVersion(t, k.p, heldPartition, promoted)
	release = k.holdBackups(t)
	inc = k.invokeAsync(k.c, &cellIncOp{Amount: 2}, heldPartition)
	eventually(t, func() bool { return k.holds.Load() == 2 })
	read := k.invokeAsync(k.c, new(cellGetOp), heldPartition)
	eventually(t, func() bool { return answersHeld(k.p) == 3 })
	release()
	want(t, "the write after", inc, 9)
	want(t, "the read held behind it", read, 9)
}

// setVersion sets s's replica version of partition p, on p's executor.
func setVersion(t *testing.T, s *Service, p int, v int64) {
	t.Helper()
	done := make(chan struct{})
	if err := s.RunOnPartition(p, func() {
		s.SetReplicaVersion(p, v)
		close(done)
	}); err != nil {
		t.Fatal(err)
	}
	<-done
}

// A primary whose replica of the partition is dropped fails the answers
// it holds with a retryable error: the caller retries (and is held again
// here, where the partition still is).
func TestDroppedReplicaFailsHeldAnswers(t *testing.T) {
	k := newGateCluster(t)
	inc, release := k.heldWrite(t)
	local := k.invokeAsync(k.p, new(cellQuickGetOp), heldPartition)
	remote := k.invokeAsync(k.c, new(cellGetOp), heldPartition)
	eventually(t, func() bool { return answersHeld(k.p) == 2 })
	if err := k.p.RunOnPartition(heldPartition, func() { k.p.ResetReplica(heldPartition) }); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return answersHeld(k.p) == 4 }) // both retried, and held again
	notYet(t, "the local read", local)
	notYet(t, "the remote read", remote)
	release()
	want(t, "the local read", local, 7)
	want(t, "the remote read", remote, 7)
	want(t, "the held write", inc, 7)
}

// Shutdown with answers held: the local caller gets ErrShutdown, the
// remote one no value (its connection breaks); nothing waits for ever,
// and no goroutine is left (TestMain's goleak). Shutdown drops the held
// backup with the connections, without waiting for its release (see
// TestShutdownWaitsForWhatAnOperationInPlaceStarted); its failure ends the
// write's run and fails the answers held behind it.
func TestShutdownFailsHeldAnswers(t *testing.T) {
	k := newGateCluster(t)
	inc, _ := k.heldWrite(t) // never released
	local := k.invokeAsync(k.p, new(cellQuickGetOp), heldPartition)
	remote := k.invokeAsync(k.c, new(cellGetOp), heldPartition)
	eventually(t, func() bool { return answersHeld(k.p) == 2 })
	k.p.Shutdown()
	if r := <-local; !errors.Is(r.err, spi.ErrShutdown) {
		t.Fatalf("local read = %v, %v; want ErrShutdown", r.v, r.err)
	}
	k.c.Shutdown() // its read retries against the stopped primary until then
	if r := <-remote; r.err == nil {
		t.Fatalf("remote read = %v after the primary shut down with its backup held", r.v)
	}
	if r := <-inc; r.err == nil {
		t.Fatalf("held write = %v after the primary shut down with its backup held", r.v)
	}
}

// CloseConnections (a member whose port closed, as a killed process's
// does) ends at once what waits on other members: a local caller whose
// write waits for a backup gets ErrShutdown, not an answer after
// Shutdown or the backup-ack timeout, and an invocation that would go to
// another member gets it instead of retrying.
func TestCloseConnectionsEndsWaitsOnOtherMembers(t *testing.T) {
	k := newGateCluster(t)
	release := k.holdBackups(t)
	defer release()
	local := k.invokeAsync(k.p, &cellIncOp{Amount: 2}, heldPartition)
	eventually(t, func() bool { return k.holds.Load() == 1 })
	k.p.CloseConnections()
	if r := <-local; !errors.Is(r.err, spi.ErrShutdown) {
		t.Fatalf("local write with its backup held = %v, %v; want ErrShutdown", r.v, r.err)
	}
	k.c.CloseConnections() // c routes every partition to p
	if _, err := k.c.Invoke(context.Background(), "cells", new(cellGetOp), heldPartition); !errors.Is(err, spi.ErrShutdown) {
		t.Fatalf("a read owned by another member after CloseConnections: %v; want ErrShutdown", err)
	}
}
