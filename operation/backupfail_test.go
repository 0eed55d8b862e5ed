package operation

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/transport"
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

// A connection that closes while a synchronous backup is being queued on
// it completes the backup's ack call once: either the close fails it, or
// the failed send does, never both (which would count one backup's
// failure twice, and with two synchronous backups answer the caller
// before the other one applied). The race is searched for over many
// trials.
func TestBackupAckCompletedOnce(t *testing.T) {
	s := newTestService(t)
	svc := s.byName["echo"]
	tk := task{svc: svc, pid: 1, key: invKey{Origin: 1, Seq: 1}}
	var twice, trials int
	for trial := 0; trial < 200000 && twice == 0; trial++ {
		trials++
		a, b := net.Pipe()
		c, err := s.stream.Open(a, transport.Hello{Version: ProtocolVersion, Cluster: "dev", ID: "peer", Address: "peer"})
		if err != nil {
			t.Fatal(err)
		}
		var completions atomic.Int32
		cl := &call{then: ackFunc(func(error) { completions.Add(1) })}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			// what sendBackups does with sendBackup's error
			if err := s.sendBackupOn(c, cl, tk, 1, 1, 1, 0, &echoOp{S: "x"}); err != nil {
				cl.complete(nil, err)
			}
		}()
		go func() {
			defer wg.Done()
			runtime.Gosched()
			c.Close(spi.ErrMemberLeft)
		}()
		wg.Wait()
		b.Close()
		if completions.Load() > 1 {
			twice++
		}
	}
	t.Logf("%d trials", trials)
	if twice > 0 {
		t.Errorf("a backup's ack call was completed twice")
	}
}

// ackFunc adapts a function to acker.
type ackFunc func(error)

func (f ackFunc) acked(err error) { f(err) }

// backedOp is a write with one synchronous backup (an echoOp).
type backedOp struct{}

func (o *backedOp) Run(*spi.OpContext) error       { return nil }
func (o *backedOp) Response() any                  { return "written" }
func (o *backedOp) WriteData(*spi.Writer)          {}
func (o *backedOp) ReadData(r *spi.Reader) error   { return r.Err() }
func (o *backedOp) SyncBackupCount() int           { return 1 }
func (o *backedOp) AsyncBackupCount() int          { return 0 }
func (o *backedOp) ShouldBackup() bool             { return true }
func (o *backedOp) BackupOperation() spi.Operation { return &echoOp{S: "backup"} }

// unreachableBackupRouting owns every partition; the backup replica is on
// a member whose host does not answer (a SYN into the void).
type unreachableBackupRouting struct{}

func (unreachableBackupRouting) Owner(int) (string, string, bool)    { return "self", "local", true }
func (unreachableBackupRouting) MemberAddress(string) (string, bool) { return "", false }
func (unreachableBackupRouting) Backups(_ int, dst []Replica) []Replica {
	return append(dst, Replica{ID: "b", Address: "10.255.255.1:5701"})
}
func (unreachableBackupRouting) ReplicaIndex(int) int { return 0 }

// A backup to a member not connected yet is dialled off the partition
// executor: while the backup's host does not answer (a dial bounded only
// by the 5 s handshake timeout), the executor serves its other
// partitions. (It used to dial on the executor, stalling them all.)
func TestBackupDialDoesNotBlockTheExecutor(t *testing.T) {
	dialing := make(chan struct{}, 1)
	var dialEnded atomic.Bool
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 1, Routing: unreachableBackupRouting{},
		Dial: func(ctx context.Context, address string) (net.Conn, error) {
			select {
			case dialing <- struct{}{}:
			default:
			}
			<-ctx.Done() // the host does not answer
			dialEnded.Store(true)
			return nil, ctx.Err()
		}})
	if err := s.Register("svc", nil, []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return new(echoOp) }},
		{ID: 2, New: func() spi.Operation { return new(backedOp) }},
	}); err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	writeDone := make(chan error, 1)
	go func() {
		_, err := s.Invoke(ctx, "svc", &backedOp{}, 1)
		writeDone <- err
	}()
	<-dialing // the write ran and its backup's member is being dialled
	if _, err := s.Invoke(ctx, "svc", &echoOp{S: "read"}, 2); err != nil {
		t.Fatal(err)
	}
	// The dial only ends with its handshake timeout: a read that had
	// waited behind it would return after it.
	if dialEnded.Load() {
		t.Errorf("partition 2's read returned only after partition 1's backup dial ended")
	}
	err := <-writeDone
	t.Logf("the write returned %v (no backup was taken)", err)
}
