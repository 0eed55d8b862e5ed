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
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// whereOp answers where it ran: on an executor's goroutine, a
// connection's reader, or the invoking caller's goroutine.
type whereOp struct{}

func (whereOp) Run(*spi.OpContext) error     { return nil }
func (whereOp) WriteData(*spi.Writer)        {}
func (whereOp) ReadData(r *spi.Reader) error { return r.Err() }
func (whereOp) Response() any {
	buf := make([]byte, 64<<10)
	stack := string(buf[:runtime.Stack(buf, false)])
	switch {
	case strings.Contains(stack, "(*executor).loop"):
		return "executor"
	case strings.Contains(stack, "(*Conn).readLoop"):
		return "reader"
	}
	return "caller"
}

// quickWhereOp is whereOp, promised not to block.
type quickWhereOp struct{ whereOp }

func (quickWhereOp) NonBlocking() {}

// soloOp fails if another operation of its service runs at the same time
// (the service is a *solo), and counts its runs without a lock.
type soloOp struct{}

type solo struct {
	running atomic.Bool
	runs    int // touched only by operations: -race reports a concurrent one
	overlap atomic.Bool
}

func (soloOp) NonBlocking() {}
func (soloOp) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*solo)
	if !s.running.CompareAndSwap(false, true) {
		s.overlap.Store(true)
		return errors.New("two operations of one executor at once")
	}
	s.runs++
	s.running.Store(false)
	return nil
}
func (soloOp) WriteData(*spi.Writer)        {}
func (soloOp) ReadData(r *spi.Reader) error { return r.Err() }

// stuckOp blocks until released, though it promises not to: a test's
// stand-in for an operation that is still running.
type stuckOp struct{}

type stuck struct{ entered, release chan struct{} }

func (stuckOp) NonBlocking() {}
func (stuckOp) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*stuck)
	s.entered <- struct{}{}
	<-s.release
	return nil
}
func (stuckOp) WriteData(*spi.Writer)        {}
func (stuckOp) ReadData(r *spi.Reader) error { return r.Err() }

func whereTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return whereOp{} }},
		{ID: 2, New: func() spi.Operation { return quickWhereOp{} }},
		{ID: 3, New: func() spi.Operation { return soloOp{} }},
	}
}

// newInlineService starts a member named id that owns no partition
// unless owner is id, with one partition executor, serving "where" and
// "solo"; dial reaches the other members.
func newInlineService(t *testing.T, id, owner string, sl *solo, dial func(string) *Service) *Service {
	s := New(Config{ClusterName: "dev", LocalID: id, LocalAddress: id + ":1", PartitionCount: 7, PartitionThreads: 1,
		Routing: ownerRouting{owner}, RetryPause: time.Millisecond, InvocationTimeout: 5 * time.Second,
		Dial: func(ctx context.Context, address string) (net.Conn, error) {
			a, b := net.Pipe()
			dial(address).HandleConn(b)
			return a, nil
		}})
	if err := s.Register("where", nil, whereTypes()); err != nil {
		t.Fatal(err)
	}
	if err := s.Register("solo", sl, whereTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	return s
}

// newInlinePair starts member p, which owns every partition (its "solo"
// service is sl), and member c, which calls it over a pipe.
func newInlinePair(t *testing.T, sl *solo) (p, c *Service) {
	dial := func(address string) *Service {
		if address == "p:1" {
			return p
		}
		return c
	}
	p = newInlineService(t, "p", "p", sl, dial)
	c = newInlineService(t, "c", "p", &solo{}, dial)
	return p, c
}

// ownerRouting: member owner ("<owner>:1") owns every partition; there
// are no backups.
type ownerRouting struct{ owner string }

func (r ownerRouting) Owner(int) (string, string, bool)    { return r.owner, r.owner + ":1", true }
func (r ownerRouting) MemberAddress(string) (string, bool) { return "", false }
func (r ownerRouting) Backups(_ int, dst []Replica) []Replica {
	return dst
}
func (r ownerRouting) ReplicaIndex(int) int { return 0 }

// A non-blocking operation runs on the goroutine that has it when its
// executor is idle: the caller's for a local invocation, the connection's
// reader for a remote one. Any other operation runs on the executor.
func TestNonBlockingOperationRunsInPlaceWhenTheExecutorIsIdle(t *testing.T) {
	p, c := newInlinePair(t, &solo{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		from *Service
		op   spi.Operation
		want string
	}{
		{"local, non-blocking", p, quickWhereOp{}, "caller"},
		{"remote, non-blocking", c, quickWhereOp{}, "reader"},
		{"local, may block", p, whereOp{}, "executor"},
		{"remote, may block", c, whereOp{}, "executor"},
	} {
		got, err := tc.from.Invoke(ctx, "where", tc.op, 3)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got != tc.want {
			t.Errorf("%s: ran on the %v's goroutine, want the %s's", tc.name, got, tc.want)
		}
	}
}

// A non-blocking operation does not overtake work queued before it: an
// invocation behind a function still running on its partition's executor
// waits for it, then runs (on the executor).
func TestNonBlockingOperationWaitsForQueuedWork(t *testing.T) {
	s := newInlineService(t, "p", "p", &solo{}, nil)
	started, release := make(chan struct{}), make(chan struct{})
	var fnDone atomic.Bool
	if err := s.RunOnPartition(2, func() {
		close(started)
		<-release
		fnDone.Store(true)
	}); err != nil {
		t.Fatal(err)
	}
	<-started
	got := make(chan any, 1)
	go func() {
		// Partition 5 shares the one executor with partition 2.
		v, err := s.Invoke(context.Background(), "where", quickWhereOp{}, 5)
		if err != nil {
			v = err
		}
		got <- v
	}()
	waitParked(t, "(*Service).wait")
	select {
	case v := <-got:
		t.Fatalf("answered (%v) while the function queued before it was still running", v)
	default:
	}
	close(release)
	if v := <-got; v != "executor" {
		t.Fatalf("answer %v, want it run on the executor", v)
	}
	if !fnDone.Load() {
		t.Fatal("the operation ran before the function queued ahead of it had finished")
	}
}

// Operations run in place and on the executor never overlap: many
// callers, local and remote, on partitions of one executor, with
// functions queued among them.
func TestNonBlockingOperationsNeverOverlap(t *testing.T) {
	sl := &solo{}
	p, c := newInlinePair(t, sl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const callers, each = 8, 300
	var wg sync.WaitGroup
	errs := make(chan error, 2*callers)
	for i := range 2 * callers {
		from := p
		if i%2 == 1 {
			from = c
		}
		wg.Go(func() {
			for j := range each {
				pid := (i + j) % 7
				if j%10 == 0 && from == p {
					done := make(chan struct{})
					if err := p.RunOnPartition(pid, func() { sl.runs++; close(done) }); err != nil {
						errs <- err
						return
					}
					<-done
					continue
				}
				if _, err := from.Invoke(ctx, "solo", soloOp{}, pid); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if sl.overlap.Load() {
		t.Fatal("two operations ran at once")
	}
	// Every invocation and every function counted once, none lost to a
	// concurrent update (-race would also report one).
	var total int
	done := make(chan struct{})
	if err := p.RunOnPartition(0, func() { total = sl.runs; close(done) }); err != nil {
		t.Fatal(err)
	}
	<-done
	if want := 2 * callers * each; total != want {
		t.Fatalf("runs = %d, want %d", total, want)
	}
}

// slowBackedOp is non-blocking and backup-aware; its Run parks until
// released (a stand-in for an operation still running in place).
type slowBackedOp struct{}

func (slowBackedOp) NonBlocking() {}
func (slowBackedOp) Run(ctx *spi.OpContext) error {
	s := ctx.Service.(*stuck)
	s.entered <- struct{}{}
	<-s.release
	return nil
}
func (slowBackedOp) WriteData(*spi.Writer)          {}
func (slowBackedOp) ReadData(r *spi.Reader) error   { return r.Err() }
func (slowBackedOp) SyncBackupCount() int           { return 1 }
func (slowBackedOp) AsyncBackupCount() int          { return 0 }
func (slowBackedOp) ShouldBackup() bool             { return true }
func (slowBackedOp) BackupOperation() spi.Operation { return slowBackupOp{} }

type slowBackupOp struct{}

func (slowBackupOp) Backup()                      {}
func (slowBackupOp) Run(*spi.OpContext) error     { return nil }
func (slowBackupOp) WriteData(*spi.Writer)        {}
func (slowBackupOp) ReadData(r *spi.Reader) error { return r.Err() }

// primaryRouting: "p" owns everything, "b" holds the first backup.
type primaryRouting struct{}

func (primaryRouting) Owner(int) (string, string, bool)       { return "p", "p:1", true }
func (primaryRouting) MemberAddress(id string) (string, bool) { return id + ":1", true }
func (primaryRouting) Backups(_ int, dst []Replica) []Replica {
	return append(dst, Replica{ID: "b", Address: "b:1"})
}
func (primaryRouting) ReplicaIndex(int) int { return 0 }

// Shutdown waits for an operation running in an executor's place, and
// for what it started: the local caller it runs on is not among the
// service's goroutines, but the backup it sends is, held back by a fault
// rule; Shutdown drops it and returns only once no goroutine of the
// service is left. None starts in place afterwards.
func TestShutdownWaitsForWhatAnOperationInPlaceStarted(t *testing.T) {
	st := &stuck{entered: make(chan struct{}, 1), release: make(chan struct{})}
	hold := make(chan struct{}) // never closed: Shutdown drops the backup
	network := transport.NewNetwork()
	b := New(Config{ClusterName: "dev", LocalID: "b", LocalAddress: "b:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: primaryRouting{}, Dial: network.Dial})
	defer network.Listen("b:1", b.HandleConn)()
	s := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: primaryRouting{}, InvocationTimeout: 5 * time.Second, Dial: network.Dial,
		Hook: func(m Message) Verdict {
			if m.Frame == transport.KindBackup {
				return Verdict{Hold: hold}
			}
			return Verdict{}
		}})
	for _, x := range []*Service{s, b} {
		if err := x.Register("slow", st, []spi.OperationType{
			{ID: 1, New: func() spi.Operation { return slowBackedOp{} }},
			{ID: 2, New: func() spi.Operation { return slowBackupOp{} }},
		}); err != nil {
			t.Fatal(err)
		}
	}
	b.Start()
	defer b.Shutdown()
	s.Start()
	invoked := make(chan error, 1)
	go func() {
		_, err := s.Invoke(context.Background(), "slow", slowBackedOp{}, 1)
		invoked <- err
	}()
	<-st.entered
	shut := make(chan struct{})
	go func() { s.Shutdown(); close(shut) }()
	waitParked(t, "(*Service).Shutdown", "Mutex).Lock") // waits for the operation
	close(st.release)                                   // which sends its backup
	<-shut
	<-invoked // ErrShutdown: its backup was never acknowledged
	if _, err := s.Invoke(context.Background(), "slow", slowBackedOp{}, 1); !errors.Is(err, spi.ErrShutdown) {
		t.Fatalf("after Shutdown: %v, want ErrShutdown", err)
	}
	if len(st.entered) != 0 {
		t.Fatal("an operation ran in place after Shutdown")
	}
	buf := make([]byte, 1<<20)
	if n := runtime.Stack(buf, true); strings.Contains(string(buf[:n]), "(*Faults).later") {
		t.Fatal("a goroutine of the service (a held backup) is still running after Shutdown returned")
	}
}

// panicResponseOp panics in Response once it ran, outside
// executor.safely (not on the fresh value Register asks for its type).
type panicResponseOp struct{ ran bool }

func (*panicResponseOp) NonBlocking()                 {}
func (o *panicResponseOp) Run(*spi.OpContext) error   { o.ran = true; return nil }
func (*panicResponseOp) WriteData(*spi.Writer)        {}
func (*panicResponseOp) ReadData(r *spi.Reader) error { return r.Err() }
func (o *panicResponseOp) Response() any {
	if o.ran {
		panic("bad Response")
	}
	return nil
}

// A panic outside Run (here in Response) while an operation runs in place
// reaches the caller, which may recover it (net/http does); the executor
// stays usable, and Shutdown does not hang.
func TestPanicInPlaceLeavesTheExecutorUsable(t *testing.T) {
	s := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: ownerRouting{"p"}, InvocationTimeout: 5 * time.Second})
	if err := s.Register("where", nil, append(whereTypes(),
		spi.OperationType{ID: 9, New: func() spi.Operation { return new(panicResponseOp) }})); err != nil {
		t.Fatal(err)
	}
	s.Start()
	func() {
		defer func() { recover() }()
		s.Invoke(context.Background(), "where", new(panicResponseOp), 1)
	}()
	got, err := s.Invoke(context.Background(), "where", quickWhereOp{}, 4) // same executor
	if err != nil || got != "caller" {
		t.Fatalf("after the panic: %v, %v; want it run in place again", got, err) // no Shutdown: it would hang
	}
	s.Shutdown()
}

// Operations run in place are timed like queued ones, about one in
// sampleEvery (partita_operation_run_seconds; docs/operations.md).
func TestOperationsRunInPlaceAreSampled(t *testing.T) {
	s := newInlineService(t, "p", "p", &solo{}, nil)
	const n = 800
	for range n {
		if _, err := s.Invoke(context.Background(), "where", quickWhereOp{}, 1); err != nil {
			t.Fatal(err)
		}
	}
	var d dto.Metric
	st := s.byName["where"].stats(quickWhereOp{})
	st.runs.Write(&d)
	runs := d.Counter.GetValue()
	st.run.(prometheus.Metric).Write(&d)
	timed := d.Histogram.GetSampleCount()
	t.Logf("runs %v, timed %v", runs, timed)
	if timed < uint64(runs)/16 {
		t.Fatalf("%d of %v runs timed; want about one in %d", timed, runs, sampleEvery)
	}
}
