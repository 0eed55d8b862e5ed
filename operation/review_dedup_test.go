package operation

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

// reviewCountOp is a backed-up operation (zero backups: it is recorded for
// exactly-once all the same) that counts its applications.
type reviewCountOp struct{}

var reviewApplied atomic.Int64

func (o *reviewCountOp) Run(*spi.OpContext) error       { reviewApplied.Add(1); return nil }
func (o *reviewCountOp) Response() any                  { return "done" }
func (o *reviewCountOp) WriteData(*spi.Writer)          {}
func (o *reviewCountOp) ReadData(r *spi.Reader) error   { return r.Err() }
func (o *reviewCountOp) SyncBackupCount() int           { return 0 }
func (o *reviewCountOp) AsyncBackupCount() int          { return 0 }
func (o *reviewCountOp) ShouldBackup() bool             { return true }
func (o *reviewCountOp) BackupOperation() spi.Operation { return o } // never sent: no backups
func reviewCountTypes() []spi.OperationType {
	return []spi.OperationType{{ID: 1, New: func() spi.Operation { return &reviewCountOp{} }}}
}

// reviewRouting names "p" as every partition's owner, except while away is
// set, when the owner's own re-check sees another member.
type reviewRouting struct{ away atomic.Bool }

func (r *reviewRouting) Owner(int) (string, string, bool) {
	if r.away.Load() {
		return "x", "x:1", true
	}
	return "p", "p:1", true
}
func (r *reviewRouting) MemberAddress(string) (string, bool) { return "", false }
func (r *reviewRouting) Backups(int, []Replica) []Replica    { return nil }
func (r *reviewRouting) ReplicaIndex(int) int                { return 0 }

// Review finding: invoke gives up with ErrIndeterminate only when the error
// of the latest attempt is ErrMemberLeft. An attempt that ran but whose
// answer was lost, followed by retries refused with another retryable error
// (ErrWrongTarget, ErrPartitionMigrating, ErrNotReady) until the dedup
// window has passed, ends with a retry that runs the operation again.
func TestReviewRetryPastDedupWindowAppliesTwice(t *testing.T) {
	const window = 200 * time.Millisecond
	reviewApplied.Store(0) // a package counter: -count=N runs the test again
	ownerRouting := &reviewRouting{}
	owner := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7,
		PartitionThreads: 1, Routing: ownerRouting, DedupWindow: window})
	if err := owner.Register("count", nil, reviewCountTypes()); err != nil {
		t.Fatal(err)
	}
	owner.Start()
	defer owner.Shutdown()
	var dropped atomic.Bool
	caller := New(Config{ClusterName: "dev", LocalID: "c", LocalAddress: "c:1", PartitionCount: 7,
		PartitionThreads: 1, Routing: &reviewRouting{}, DedupWindow: window, RetryPause: 5 * time.Millisecond,
		Dial: func(ctx context.Context, address string) (net.Conn, error) {
			a, b := net.Pipe()
			owner.HandleConn(b)
			return a, nil
		},
		Hook: func(m Message) Verdict {
			// The first answer is lost (as with a broken connection); the
			// owner's table then moves away for longer than the window.
			if m.Response && !dropped.Swap(true) {
				ownerRouting.away.Store(true)
				time.AfterFunc(2*window, func() { ownerRouting.away.Store(false) })
				return Verdict{Drop: true}
			}
			return Verdict{}
		},
	})
	if err := caller.Register("count", nil, reviewCountTypes()); err != nil {
		t.Fatal(err)
	}
	caller.Start()
	defer caller.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := caller.Invoke(ctx, "count", &reviewCountOp{}, 3)
	t.Logf("Invoke = %v, %v; applied %d times", v, err, reviewApplied.Load())
	if n := reviewApplied.Load(); n != 1 {
		t.Errorf("one invocation applied %d times (err %v)", n, err)
	}
}
