package operation

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/operation/replica"
	"github.com/partita-go/partita/spi"
)

// ctxOp is a backed-up operation (no backups) that keeps the OpContext of
// each of its runs.
type ctxOp struct{}

var (
	ctxRunsMu sync.Mutex
	ctxRuns   []spi.OpContext
)

func (o *ctxOp) Run(c *spi.OpContext) error {
	ctxRunsMu.Lock()
	ctxRuns = append(ctxRuns, *c)
	ctxRunsMu.Unlock()
	return nil
}
func (o *ctxOp) Response() any                  { return "done" }
func (o *ctxOp) WriteData(*spi.Writer)          {}
func (o *ctxOp) ReadData(r *spi.Reader) error   { return r.Err() }
func (o *ctxOp) SyncBackupCount() int           { return 0 }
func (o *ctxOp) AsyncBackupCount() int          { return 0 }
func (o *ctxOp) ShouldBackup() bool             { return true }
func (o *ctxOp) BackupOperation() spi.Operation { return o } // never sent: no backups

func runsSoFar() []spi.OpContext {
	ctxRunsMu.Lock()
	defer ctxRunsMu.Unlock()
	return slices.Clone(ctxRuns)
}

// An invocation's runs see its id (the caller's incarnation, OriginOf its
// member ID). A retry whose first answer was lost is answered from the
// record; when the record no longer holds it (as on a backup promoted
// without it) it runs again, marked Retried. The owner keeps the
// invocations of a member it lost (MemberLeft) past the dedup window:
// RecordedInvocations lists them, and no longer the others.
func TestRetryTheRecordMissesIsMarked(t *testing.T) {
	const window = 300 * time.Millisecond
	const pid = 3
	for _, dropRecord := range []bool{false, true} {
		ctxRunsMu.Lock()
		ctxRuns = nil
		ctxRunsMu.Unlock()
		owner := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7,
			PartitionThreads: 1, Routing: &awayRouting{}, DedupWindow: window})
		if err := owner.Register("ctx", nil, []spi.OperationType{{ID: 1, New: func() spi.Operation { return &ctxOp{} }}}); err != nil {
			t.Fatal(err)
		}
		owner.Start()
		var dropped atomic.Bool
		caller := New(Config{ClusterName: "dev", LocalID: "c", LocalAddress: "c:1", PartitionCount: 7,
			PartitionThreads: 1, Routing: &awayRouting{}, DedupWindow: window, RetryPause: 5 * time.Millisecond,
			Dial: func(ctx context.Context, address string) (net.Conn, error) {
				a, b := net.Pipe()
				owner.HandleConn(b)
				return a, nil
			},
			Hook: func(m Message) Verdict {
				if m.Response && !dropped.Swap(true) {
					if dropRecord {
						// Queued before the retry can be.
						owner.RunOnPartition(pid, func() { owner.DropDedup(pid) })
					}
					return Verdict{Drop: true}
				}
				return Verdict{}
			},
		})
		if err := caller.Register("ctx", nil, []spi.OperationType{{ID: 1, New: func() spi.Operation { return &ctxOp{} }}}); err != nil {
			t.Fatal(err)
		}
		caller.Start()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := caller.Invoke(ctx, "ctx", &ctxOp{}, pid); err != nil {
			t.Fatal(err)
		}
		cancel()
		runs := runsSoFar()
		want := spi.InvocationID{Origin: OriginOf("c"), Seq: 1}
		switch {
		case !dropRecord && len(runs) != 1:
			t.Fatalf("a retry the record holds ran again: %d runs", len(runs))
		case dropRecord && (len(runs) != 2 || runs[0].Retried || !runs[1].Retried):
			t.Fatalf("a retry the record misses: runs %+v, want a first run, then one marked Retried", runs)
		}
		for _, r := range runs {
			if r.Invocation != want {
				t.Fatalf("run saw invocation %+v, want %+v", r.Invocation, want)
			}
		}
		if !dropRecord {
			// Lost: its invocation outlives the window; another one does not.
			other := spi.InvocationID{Origin: OriginOf("d"), Seq: 1}
			owner.RunOnPartition(pid, func() { owner.record(pid, other, []byte{1}, monoNow(), nil) })
			owner.MemberLeft("c")
			var ids []spi.InvocationID
			eventually(t, func() bool {
				got := make(chan []spi.InvocationID, 1)
				owner.RunOnPartition(pid, func() { got <- owner.RecordedInvocations(pid) })
				ids = <-got
				return slices.Equal(ids, []spi.InvocationID{want})
			})
			// A copy made before the loss (no pins) replaces the record
			// and its pins: the lost member's invocations it holds are
			// pinned again.
			var src replica.Record
			src.Add(want, []byte{1}, monoNow(), nil, owner.dedupWindow())
			w := spi.NewWriter(nil)
			src.Append(w, monoNow(), owner.dedupWindow())
			installed := make(chan error, 1)
			owner.RunOnPartition(pid, func() { installed <- owner.ReadDedup(spi.NewReader(w.Bytes()), pid) })
			if err := <-installed; err != nil {
				t.Fatal(err)
			}
			installedAt := monoNow()
			eventually(t, func() bool { // listed once its record expired: pinned
				if monoNow()-installedAt <= owner.dedupWindow().Keep {
					return false
				}
				got := make(chan []spi.InvocationID, 1)
				owner.RunOnPartition(pid, func() { got <- owner.RecordedInvocations(pid) })
				ids = <-got
				return slices.Equal(ids, []spi.InvocationID{want})
			})
		}
		caller.Shutdown()
		owner.Shutdown()
	}
}
