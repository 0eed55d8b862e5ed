package operation

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/spi"
)

// flakyRouting reports no table for the first notReady lookups, then for
// a while every second lookup names a member that is gone (the caller's
// dial fails with ErrMemberLeft) or moves the partition away between
// routing and the owner's re-check (ErrWrongTarget), then the truth: this
// member owns everything.
type flakyRouting struct {
	lookups    atomic.Int32
	notReady   int32
	wrongOwner int32
}

func (r *flakyRouting) Owner(int) (string, string, bool) {
	n := r.lookups.Add(1)
	switch {
	case n <= r.notReady:
		return "", "", false
	case n <= r.notReady+2*r.wrongOwner && n%2 == 0:
		return "someone-else", "127.0.0.1:1", true
	}
	return "self", "local", true
}
func (r *flakyRouting) MemberAddress(string) (string, bool) { return "", false }
func (r *flakyRouting) Backups(int, []Replica) []Replica    { return nil }
func (r *flakyRouting) ReplicaIndex(int) int                { return 0 }

func TestInvokeRetriesUntilServed(t *testing.T) {
	r := &flakyRouting{notReady: 3, wrongOwner: 2}
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 2, Routing: r, RetryPause: time.Millisecond})
	if err := s.Register("echo", nil, echoTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := s.Invoke(ctx, "echo", &echoOp{S: "ok"}, 1)
	if err != nil || v != "ok" {
		t.Fatalf("Invoke = %v, %v", v, err)
	}
	// 3 not-ready lookups, a dead owner, a wrong-target re-check, success.
	if n := r.lookups.Load(); n < 8 {
		t.Fatalf("only %d routing lookups: the retries did not happen", n)
	}
}

func TestInvokeGivesUpAtDeadline(t *testing.T) {
	r := &flakyRouting{notReady: 1 << 30}
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 1, Routing: r, RetryPause: time.Millisecond})
	if err := s.Register("echo", nil, echoTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Invoke(ctx, "echo", &echoOp{}, 1)
	if !errors.Is(err, spi.ErrTimeout) || !errors.Is(err, spi.ErrNotReady) {
		t.Fatalf("err = %v, want ErrTimeout wrapping the last ErrNotReady", err)
	}
	s.Shutdown()
	if _, err := s.Invoke(context.Background(), "echo", &echoOp{}, 1); !errors.Is(err, spi.ErrShutdown) {
		t.Fatalf("after shutdown: %v", err)
	}
}

// gateOp blocks its executor until its service's gate opens.
type gateOp struct{}

// gate is the service of gateOp.
type gate struct{ running, open chan struct{} }

func (gateOp) Run(ctx *spi.OpContext) error {
	g := ctx.Service.(*gate)
	g.running <- struct{}{}
	<-g.open
	return nil
}
func (gateOp) WriteData(*spi.Writer)        {}
func (gateOp) ReadData(r *spi.Reader) error { return r.Err() }

// newGateService starts a Service with one partition executor, serving
// "echo" and "gate".
func newGateService(t *testing.T, timeout time.Duration) (*Service, *gate) {
	g := &gate{running: make(chan struct{}, 1), open: make(chan struct{})}
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 1, Routing: selfRouting{"self"}, InvocationTimeout: timeout})
	if err := s.Register("gate", g, []spi.OperationType{{ID: 1, New: func() spi.Operation { return gateOp{} }}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Register("echo", nil, echoTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	return s, g
}

// An invocation whose context has no deadline is bounded by the
// invocation timeout (the coarse clock, not a timer of its own), both
// while it waits for an answer and while it retries.
func TestInvokeWithoutDeadlineTimesOut(t *testing.T) {
	s, g := newGateService(t, 200*time.Millisecond)
	defer s.Shutdown()
	defer close(g.open)
	_, err := s.Invoke(context.Background(), "gate", gateOp{}, 1)
	if !errors.Is(err, spi.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting: err = %v, want ErrTimeout wrapping context.DeadlineExceeded", err)
	}

	r := &flakyRouting{notReady: 1 << 30}
	s2 := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 1, Routing: r, RetryPause: time.Millisecond, InvocationTimeout: 200 * time.Millisecond})
	if err := s2.Register("echo", nil, echoTypes()); err != nil {
		t.Fatal(err)
	}
	s2.Start()
	defer s2.Shutdown()
	_, err = s2.Invoke(context.Background(), "echo", &echoOp{}, 1)
	if !errors.Is(err, spi.ErrTimeout) || !errors.Is(err, spi.ErrNotReady) {
		t.Fatalf("retrying: err = %v, want ErrTimeout wrapping the last ErrNotReady", err)
	}
}

// At shutdown, an invocation without a deadline that waits behind a stuck
// operation is told ErrShutdown, and its operation does not run; one whose
// operation was queued after the executors drained (it will never run) is
// told ErrShutdown too, not left waiting for its invocation timeout.
func TestInvokeWithoutDeadlineEndsAtShutdown(t *testing.T) {
	s, g := newGateService(t, time.Hour)
	stuck := make(chan error, 1)
	go func() { _, err := s.Invoke(context.Background(), "gate", gateOp{}, 1); stuck <- err }()
	<-g.running
	behind := make(chan error, 1)
	go func() { _, err := s.Invoke(context.Background(), "gate", gateOp{}, 1); behind <- err }()
	eventually(t, func() bool { return len(s.partition[0].queue) == 1 })
	shut := make(chan struct{})
	go func() { s.Shutdown(); close(shut) }()
	eventually(t, s.closed.Load)
	close(g.open) // Shutdown waits for the running operation
	if err := <-behind; !errors.Is(err, spi.ErrShutdown) {
		t.Fatalf("queued behind the stuck operation: err = %v, want ErrShutdown", err)
	}
	<-shut
	if err := <-stuck; err != nil {
		t.Fatalf("the running operation: %v", err)
	}
	select {
	case <-g.running:
		t.Fatal("the operation queued at shutdown ran")
	default:
	}

	// Queued after the executors drained: nobody will run it.
	cl := newCall(&echoOp{})
	if !s.tryEnqueue(task{op: cl.op, svc: s.byName["echo"], pid: 1, local: cl}) {
		t.Fatal("queue full")
	}
	if _, err := s.wait(context.Background(), time.Now().Add(time.Hour), cl, nil, 0); !errors.Is(err, spi.ErrShutdown) {
		t.Fatalf("queued after shutdown: err = %v, want ErrShutdown", err)
	}
}

func eventually(t *testing.T, cond func() bool) { t.Helper(); testkit.Eventually(t, cond) }
func waitParked(t *testing.T, frames ...string) { t.Helper(); testkit.WaitParked(t, frames...) }
