package operation

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

// backupRouting: this member holds the first backup of every partition.
type backupRouting struct{}

func (backupRouting) Owner(int) (string, string, bool)    { return "primary", "primary:1", true }
func (backupRouting) MemberAddress(string) (string, bool) { return "primary:1", true }
func (backupRouting) Backups(int, []Replica) []Replica    { return nil }
func (backupRouting) ReplicaIndex(int) int                { return 1 }

// failOnce fails the first time it runs, on any replica.
type failOnce struct{ ran *int }

func (o *failOnce) Run(*spi.OpContext) error {
	*o.ran++
	if *o.ran == 1 {
		return errors.New("disk full")
	}
	return nil
}
func (o *failOnce) WriteData(*spi.Writer)        {}
func (o *failOnce) ReadData(r *spi.Reader) error { return r.Err() }

// A backup whose Run fails is refused and leaves the replica's version
// where it was; the replica asks its primary for a full copy, and the
// backups behind the failed one wait for it instead of being applied
// over a hole. The primary's retry, once the copy arrived, is answered as
// applied.
func TestFailedBackupAsksForCopy(t *testing.T) {
	gaps := make(chan int, 4)
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "self:1", PartitionCount: 4,
		PartitionThreads: 1, Routing: backupRouting{}, OnReplicaGap: func(p int) { gaps <- p }})
	var ran int
	types := []spi.OperationType{{ID: 1, New: func() spi.Operation { return &failOnce{ran: &ran} }}}
	if err := s.Register("flaky", nil, types); err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Shutdown()
	svc := s.byName["flaky"]
	backup := func(version int64) error {
		cl := newCall(&failOnce{ran: &ran})
		t := task{op: cl.op, svc: svc, pid: 2, replica: 1, version: version, local: cl, key: invKey{Origin: 9, Seq: uint64(version)}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.enqueue(ctx, t); err != nil {
			return err
		}
		select {
		case <-cl.done:
			cl.taken()
			_, err := cl.result()
			return err
		case <-ctx.Done():
			if !cl.abandon() {
				<-cl.done
				cl.taken()
			}
			return ctx.Err()
		}
	}
	if err := backup(1); err == nil {
		t.Fatal("a failed backup was acknowledged")
	}
	if v := s.ReplicaVersion(2); v != 0 || !s.IsSyncing(2) {
		t.Fatalf("after the failure: version %d, syncing %v; want 0, true", v, s.IsSyncing(2))
	}
	if p := <-gaps; p != 2 {
		t.Fatalf("copy asked for partition %d", p)
	}
	// Version 2 arrives while version 1 is missing: it waits.
	second := make(chan error, 1)
	go func() { second <- backup(2) }()
	eventually(t, func() bool {
		done := make(chan bool)
		s.RunOnPartition(2, func() { done <- s.ReplicaPending(2) && ran == 1 })
		return <-done
	})
	// The copy arrives at version 1: version 2 is applied, and the
	// primary's retry of version 1 is answered as applied.
	s.RunOnPartition(2, func() { s.ReplicaSynced(2, 1) })
	if err := <-second; err != nil {
		t.Fatalf("backup 2 after the copy: %v", err)
	}
	if err := backup(1); err != nil {
		t.Fatalf("retry of backup 1 after the copy: %v", err)
	}
	if v := s.ReplicaVersion(2); v != 2 || ran != 2 {
		t.Fatalf("version %d, runs %d; want 2, 2 (backup 1 is covered by the copy)", v, ran)
	}
}
