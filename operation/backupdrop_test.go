package operation

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// droppingRouting is viewRouting until dropped: then this member has no
// table, as a member whose cluster merges into another (a member declared
// dead that ran on, a split's smaller side) once it gave its data up.
type droppingRouting struct {
	viewRouting
	dropped *atomic.Bool
}

func (r droppingRouting) Owner(p int) (string, string, bool) {
	if r.dropped.Load() {
		return "", "", false
	}
	return r.viewRouting.Owner(p)
}

func (r droppingRouting) Backups(p int, dst []Replica) []Replica {
	if r.dropped.Load() {
		return dst
	}
	return r.viewRouting.Backups(p, dst)
}

func (r droppingRouting) ReplicaIndex(p int) int {
	if r.dropped.Load() {
		return -1
	}
	return r.viewRouting.ReplicaIndex(p)
}

// A primary whose synchronous backup its replica refuses (the replica's
// newer table makes it the primary: the writer was declared dead and
// replaced) and which then drops its table to merge into the other
// cluster does not acknowledge the write as safe on itself, as it would
// for a replica that left: it is giving its data up. The caller learns
// that the outcome is unknown (a frozen master that ran on lost
// increments acknowledged this way).
func TestBackupGivenUpAsThePrimaryDropsItsTableIsNotAcknowledged(t *testing.T) {
	members := map[string]*Service{}
	var dropped atomic.Bool
	var toB atomic.Int32
	p := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: droppingRouting{viewRouting{"p", view("b")}, &dropped}, RetryPause: time.Millisecond,
		InvocationTimeout: 2 * time.Second,
		Hook: func(m Message) Verdict {
			if m.Frame == transport.KindBackup && m.To == "b" {
				toB.Add(1)
			}
			return Verdict{}
		},
		Dial: func(ctx context.Context, address string) (net.Conn, error) {
			a, b := net.Pipe()
			members[address].HandleConn(b)
			return a, nil
		}})
	if err := p.Register("svc", nil, backedTypes()); err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(p.Shutdown)
	members["p:1"] = p
	members["b:1"] = viewMember(t, "b", view("y"), members, 0, nil) // b holds no backup replica in its table

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := p.Invoke(ctx, "svc", &backedOp{}, 1)
		done <- err
	}()
	eventually(t, func() bool { return toB.Load() >= 2 }) // refused, retried
	dropped.Store(true)
	if err := <-done; !errors.Is(err, spi.ErrIndeterminate) {
		t.Fatalf("write whose backup was given up as its primary dropped its table: %v, want spi.ErrIndeterminate", err)
	}
}
