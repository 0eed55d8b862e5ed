package operation

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

// reviewBackedOp is a write with one synchronous backup (an echoOp).
type reviewBackedOp struct{}

func (o *reviewBackedOp) Run(*spi.OpContext) error       { return nil }
func (o *reviewBackedOp) Response() any                  { return "written" }
func (o *reviewBackedOp) WriteData(*spi.Writer)          {}
func (o *reviewBackedOp) ReadData(r *spi.Reader) error   { return r.Err() }
func (o *reviewBackedOp) SyncBackupCount() int           { return 1 }
func (o *reviewBackedOp) AsyncBackupCount() int          { return 0 }
func (o *reviewBackedOp) ShouldBackup() bool             { return true }
func (o *reviewBackedOp) BackupOperation() spi.Operation { return &echoOp{S: "backup"} }

// unreachableBackupRouting owns every partition; the backup replica is on
// a member whose host does not answer (a SYN into the void).
type unreachableBackupRouting struct{}

func (unreachableBackupRouting) Owner(int) (string, string, bool)    { return "self", "local", true }
func (unreachableBackupRouting) MemberAddress(string) (string, bool) { return "", false }
func (unreachableBackupRouting) Backups(_ int, dst []Replica) []Replica {
	return append(dst, Replica{ID: "b", Address: "10.255.255.1:5701"})
}
func (unreachableBackupRouting) ReplicaIndex(int) int { return 0 }

// Review finding: sendBackupNow dials the backup member on the partition
// executor (backup.go sendBackupNow -> connTo -> dial, bounded only by the
// 5 s handshake timeout). While the backup's host does not answer, every
// backed-up write stalls its executor and with it every partition that
// executor serves; the next write dials again.
func TestReviewBackupDialBlocksExecutor(t *testing.T) {
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
		{ID: 2, New: func() spi.Operation { return new(reviewBackedOp) }},
	}); err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	writeDone := make(chan error, 1)
	go func() {
		_, err := s.Invoke(ctx, "svc", &reviewBackedOp{}, 1)
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
