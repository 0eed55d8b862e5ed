package operation

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
	dto "github.com/prometheus/client_model/go"
)

// sbpOp counts its runs; mutates, when set, makes it a
// spi.MutatingOperation that says so.
type sbpOp struct {
	runs    *atomic.Int32
	mutates *bool
}

func (o *sbpOp) Run(*spi.OpContext) error     { o.runs.Add(1); return nil }
func (o *sbpOp) WriteData(*spi.Writer)        {}
func (o *sbpOp) ReadData(r *spi.Reader) error { return r.Err() }

type mutatingSbpOp struct{ sbpOp }

func (o *mutatingSbpOp) Mutates() bool { return *o.mutates }

// backedSbpOp is a backed-up write that counts its runs.
type backedSbpOp struct{ sbpOp }

func (o *backedSbpOp) SyncBackupCount() int           { return 1 }
func (o *backedSbpOp) AsyncBackupCount() int          { return 0 }
func (o *backedSbpOp) ShouldBackup() bool             { return true }
func (o *backedSbpOp) BackupOperation() spi.Operation { return &echoOp{} }

type mutatingBackedSbpOp struct{ backedSbpOp }

func (o *mutatingBackedSbpOp) Mutates() bool { return *o.mutates }

func TestIsWrite(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		op   spi.Operation
		want bool
	}{
		{&sbpOp{}, false},
		{&backedSbpOp{}, true},
		{&mutatingSbpOp{sbpOp{mutates: &yes}}, true},
		{&mutatingBackedSbpOp{backedSbpOp{sbpOp{mutates: &no}}}, false},
	} {
		if got := isWrite(tc.op); got != tc.want {
			t.Errorf("isWrite(%T) = %v, want %v", tc.op, got, tc.want)
		}
	}
}

// protectedService starts a member that owns every partition, with
// service "svc" protected as given and a member list of *members.
func protectedService(t *testing.T, members func() int, reads, writes int) *Service {
	t.Helper()
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 3,
		PartitionThreads: 1, Routing: selfRouting{"self"}, Members: members})
	types := []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return new(echoOp) }},
		{ID: 2, New: func() spi.Operation { return new(sbpOp) }},
		{ID: 3, New: func() spi.Operation { return new(backedSbpOp) }},
	}
	if err := s.Register("svc", nil, types); err != nil {
		t.Fatal(err)
	}
	if err := s.Register("free", nil, types); err != nil {
		t.Fatal(err)
	}
	if err := s.ProtectService("svc", reads, writes); err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	return s
}

// Reads and writes need their own minimum; a refusal is typed, not
// retried, not run, and counted; other services are not concerned.
func TestSplitBrainProtectionRefusesBeforeRun(t *testing.T) {
	var size atomic.Int32
	size.Store(2)
	s := protectedService(t, func() int { return int(size.Load()) }, 2, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var runs atomic.Int32
	read, write := &sbpOp{runs: &runs}, &backedSbpOp{sbpOp{runs: &runs}}

	if _, err := s.Invoke(ctx, "svc", read, 1); err != nil {
		t.Fatalf("read with 2 of 2 members: %v", err)
	}
	start := time.Now()
	_, err := s.Invoke(ctx, "svc", write, 1)
	if !errors.Is(err, spi.ErrSplitBrainProtection) || spi.IsRetryable(err) {
		t.Fatalf("write with 2 of 3 members: %v, want spi.ErrSplitBrainProtection", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusal took %v: it was retried", d)
	}
	if _, err := s.InvokeOnMember(ctx, "svc", write, "self"); !errors.Is(err, spi.ErrSplitBrainProtection) {
		t.Fatalf("generic write with 2 of 3 members: %v", err)
	}
	if _, err := s.Invoke(ctx, "free", write, 1); err != nil {
		t.Fatalf("unprotected service: %v", err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("%d runs, want 2 (a read and the unprotected write)", n)
	}
	size.Store(1)
	if _, err := s.Invoke(ctx, "svc", read, 1); !errors.Is(err, spi.ErrSplitBrainProtection) {
		t.Fatalf("read with 1 of 2 members: %v", err)
	}
	var d dto.Metric
	if err := s.m.splitBrainRejected.WithLabelValues("svc").Write(&d); err != nil {
		t.Fatal(err)
	}
	if got := d.GetCounter().GetValue(); got != 3 {
		t.Errorf("partita_split_brain_protection_rejected_total{service=svc} = %v, want 3", got)
	}
	size.Store(3)
	if _, err := s.Invoke(ctx, "svc", write, 1); err != nil {
		t.Fatalf("write with 3 of 3 members: %v", err)
	}
}

// The member that runs the operation checks again right before Run: a
// list that shrank after the caller's check (here, between the two
// calls of Members) refuses it there. A member with no list yet is not
// ready (retried) rather than too small.
func TestSplitBrainProtectionCheckedBeforeRun(t *testing.T) {
	var calls atomic.Int32
	sizes := []int{0, 0, 3, 1}
	s := protectedService(t, func() int {
		return sizes[min(int(calls.Add(1))-1, len(sizes)-1)]
	}, 0, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var runs atomic.Int32
	_, err := s.Invoke(ctx, "svc", &backedSbpOp{sbpOp{runs: &runs}}, 0)
	if !errors.Is(err, spi.ErrSplitBrainProtection) || runs.Load() != 0 {
		t.Fatalf("Invoke = %v with %d runs, want spi.ErrSplitBrainProtection and none", err, runs.Load())
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("Members called %d times, want 4 (caller: no list; executor: no list, retried; caller: 3; executor: 1)", n)
	}
}

func TestProtectServiceErrors(t *testing.T) {
	s := New(Config{PartitionCount: 1, Routing: selfRouting{"self"}})
	if err := s.Register("svc", nil, echoTypes()); err != nil {
		t.Fatal(err)
	}
	if err := s.ProtectService("nope", 2, 2); err == nil {
		t.Error("protecting an unregistered service succeeded")
	}
	if err := s.ProtectService("svc", 2, 2); err == nil {
		t.Error("protection without Config.Members succeeded")
	}
	if err := s.ProtectService("svc", 0, 0); err != nil {
		t.Errorf("no protection: %v", err)
	}
}
