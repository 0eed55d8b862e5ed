package operation

import (
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// Review finding: conn.sendBackup registers the ack call in c.pending, drops
// the lock, then queues the frame under the lock again. A close in between
// completes the call (close fails every pending call) and makes queue fail,
// so sendBackup also returns the error, and sendBackups calls done(err) a
// second time for the same backup: the synchronous-ack counter drops by two
// for one backup (with two synchronous backups, the caller is answered
// before the other one applied).
func TestReviewBackupAckCompletedTwice(t *testing.T) {
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
