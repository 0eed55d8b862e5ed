package operation

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

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
