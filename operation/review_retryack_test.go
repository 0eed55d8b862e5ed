package operation

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

// threeRouting: "p" owns every partition, "b" is its one backup replica.
type threeRouting struct{ self string }

func (r threeRouting) Owner(int) (string, string, bool)    { return "p", "p:1", true }
func (r threeRouting) MemberAddress(string) (string, bool) { return "", false }
func (r threeRouting) Backups(_ int, dst []Replica) []Replica {
	return append(dst, Replica{ID: "b", Address: "b:1"})
}
func (r threeRouting) ReplicaIndex(int) int {
	if r.self == "b" {
		return 1
	}
	return 0
}

func reviewSvcTypes() []spi.OperationType {
	return []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return new(echoOp) }},
		{ID: 2, New: func() spi.Operation { return new(reviewBackedOp) }},
	}
}

func reviewMember(t *testing.T, id string, dial func(string) *Service, hook func(Message) Verdict) *Service {
	s := New(Config{ClusterName: "dev", LocalID: id, LocalAddress: id + ":1", PartitionCount: 7, PartitionThreads: 1,
		Routing: threeRouting{id}, RetryPause: time.Millisecond, Hook: hook,
		Dial: func(ctx context.Context, address string) (net.Conn, error) {
			a, b := net.Pipe()
			dial(address).HandleConn(b)
			return a, nil
		}})
	if err := s.Register("svc", nil, reviewSvcTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	return s
}

// heldBackupPair starts primary "p" and backup "b" (threeRouting) with
// p's backups held until release (which the test's cleanup calls too);
// members resolves their addresses, for a caller made with reviewMember.
func heldBackupPair(t *testing.T) (p, b *Service, members func(string) *Service, release func()) {
	hold := make(chan struct{})
	members = func(addr string) *Service {
		if addr == "b:1" {
			return b
		}
		return p
	}
	b = reviewMember(t, "b", members, nil)
	t.Cleanup(b.Shutdown)
	p = reviewMember(t, "p", members, func(m Message) Verdict {
		if _, ok := m.Op.(backupMessage); ok {
			return Verdict{Hold: hold} // the backup is slow to leave
		}
		return Verdict{}
	})
	t.Cleanup(p.Shutdown)
	release = sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release)
	return p, b, members, release
}

// Review finding: the primary records an invocation before its synchronous
// backups are acknowledged (executor.go run: record, then sendBackups). A
// retry of that invocation (its first answer lost with a broken connection)
// is answered from the record at once, while the backup has not been
// applied: the caller holds an acknowledgement that only the primary backs.
func TestReviewRetryAnsweredBeforeSyncBackupApplied(t *testing.T) {
	pSvc, bSvc, members, release := heldBackupPair(t)
	var requests atomic.Int32 // the invocation's attempts, first included
	caller := reviewMember(t, "c", members, func(m Message) Verdict {
		if _, ok := m.Op.(*reviewBackedOp); ok && !m.Response {
			requests.Add(1)
		}
		return Verdict{}
	})
	defer caller.Shutdown()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := caller.Invoke(ctx, "svc", &reviewBackedOp{}, 1)
		done <- err
	}()
	eventually(t, func() bool { return pSvc.ReplicaVersion(1) != 0 }) // the primary ran it; its backup is held
	caller.MemberLeft("p")                                            // the caller's connection breaks; it retries
	// A retry answered "in progress" is followed by another: two retries
	// sent mean the primary refused at least one while the backup was held.
	var early error
	returned := false
	eventually(t, func() bool {
		select {
		case early = <-done:
			returned = true
			return true
		default:
			return requests.Load() >= 3
		}
	})
	if returned {
		t.Fatalf("the invocation returned (%v) while its synchronous backup was held (backup version %d)", early, bSvc.ReplicaVersion(1))
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("after the backup was released: %v", err)
	}
	if v := bSvc.ReplicaVersion(1); v == 0 {
		t.Errorf("the invocation was acknowledged, and the backup replica's version is %d", v)
	}
}
