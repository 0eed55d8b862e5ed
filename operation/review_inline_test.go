package operation

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

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

// Shutdown waits for what an operation running in place on a local
// caller's goroutine started: that caller is not among the service's
// goroutines, but the backup it held back (a fault hook) is, and
// Shutdown returns only once that one is done.
func TestShutdownWaitsForWhatAnOperationInPlaceStarted(t *testing.T) {
	st := &stuck{entered: make(chan struct{}, 1), release: make(chan struct{})}
	hold := make(chan struct{})
	s := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: primaryRouting{}, InvocationTimeout: 5 * time.Second,
		Hook: func(m Message) Verdict {
			if _, ok := m.Op.(backupMessage); ok {
				return Verdict{Hold: hold}
			}
			return Verdict{}
		}})
	if err := s.Register("slow", st, []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return slowBackedOp{} }},
		{ID: 2, New: func() spi.Operation { return slowBackupOp{} }},
	}); err != nil {
		t.Fatal(err)
	}
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
	close(st.release)                                   // which holds its backup back
	waitParked(t, "(*Service).Shutdown", "WaitGroup).Wait")
	select {
	case <-shut:
		t.Fatal("Shutdown returned while a backup's goroutine still waits")
	default:
	}
	close(hold)
	<-shut
	<-invoked
	buf := make([]byte, 1<<20)
	if n := runtime.Stack(buf, true); strings.Contains(string(buf[:n]), "sendBackupLater") {
		t.Fatal("a goroutine of the service (sendBackupLater) is still running after Shutdown returned")
	}
}

// panicResponseOp panics in Response, outside executor.safely.
type panicResponseOp struct{}

func (panicResponseOp) NonBlocking()                 {}
func (panicResponseOp) Run(*spi.OpContext) error     { return nil }
func (panicResponseOp) Response() any                { panic("bad Response") }
func (panicResponseOp) WriteData(*spi.Writer)        {}
func (panicResponseOp) ReadData(r *spi.Reader) error { return r.Err() }

// A panic outside Run (here in Response) while an operation runs in place
// reaches the caller, which may recover it (net/http does); the executor
// stays usable, and Shutdown does not hang.
func TestPanicInPlaceLeavesTheExecutorUsable(t *testing.T) {
	s := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: ownerRouting{"p"}, InvocationTimeout: 5 * time.Second})
	if err := s.Register("where", nil, append(whereTypes(),
		spi.OperationType{ID: 9, New: func() spi.Operation { return panicResponseOp{} }})); err != nil {
		t.Fatal(err)
	}
	s.Start()
	func() {
		defer func() { recover() }()
		s.Invoke(context.Background(), "where", panicResponseOp{}, 1)
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
