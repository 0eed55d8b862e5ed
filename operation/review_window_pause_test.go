package operation

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// Review finding (session 5): the dedup window was checked before the
// back-off pause, not before the retry after it, so the last retry left
// about W+500ms after the first attempt, when the record had expired, and
// the operation ran twice. The window is now checked right before each
// send, and the primary keeps records an eighth longer.
func TestReviewRetryAfterPauseOutlivesRecord(t *testing.T) {
	const window = time.Second
	reviewApplied.Store(0)
	rt := &reviewRouting{}
	owner := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1, Routing: rt, DedupWindow: window})
	owner.Register("count", nil, reviewCountTypes())
	owner.Start()
	defer owner.Shutdown()
	var dropped atomic.Bool
	caller := New(Config{ClusterName: "dev", LocalID: "c", LocalAddress: "c:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: &reviewRouting{}, DedupWindow: window, RetryPause: 5 * time.Millisecond,
		Dial: func(context.Context, string) (net.Conn, error) {
			a, b := net.Pipe()
			owner.HandleConn(b)
			return a, nil
		},
		Hook: func(m Message) Verdict { // first answer lost; retries refused for 0.9 W (checks at ~5..635 ms, then a 500 ms pause)
			if m.Response && !dropped.Swap(true) {
				rt.away.Store(true)
				time.AfterFunc(window*9/10, func() { rt.away.Store(false) })
				return Verdict{Drop: true}
			}
			return Verdict{}
		}})
	caller.Register("count", nil, reviewCountTypes())
	caller.Start()
	defer caller.Shutdown()
	_, err := caller.Invoke(context.Background(), "count", &reviewCountOp{}, 3)
	if n := reviewApplied.Load(); n != 1 {
		t.Errorf("one invocation applied %d times (err %v)", n, err)
	}
}
