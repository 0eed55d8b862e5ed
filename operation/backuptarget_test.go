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

// viewRouting is one member's view of a table where "p" owns every
// partition and *backup holds its one backup replica.
type viewRouting struct {
	self   string
	backup *atomic.Pointer[string]
}

func (r viewRouting) Owner(int) (string, string, bool) { return "p", "p:1", true }
func (r viewRouting) MemberAddress(id string) (string, bool) {
	return id + ":1", id == "p" || id == "b" || id == "y"
}
func (r viewRouting) Backups(_ int, dst []Replica) []Replica {
	b := *r.backup.Load()
	return append(dst, Replica{ID: b, Address: b + ":1", Index: 1})
}
func (r viewRouting) ReplicaIndex(int) int {
	switch r.self {
	case "p":
		return 0
	case *r.backup.Load():
		return 1
	}
	return -1
}

func viewMember(t *testing.T, id string, view *atomic.Pointer[string], members map[string]*Service, ackTimeout time.Duration, hook func(Message) Verdict) *Service {
	t.Helper()
	s := New(Config{ClusterName: "dev", LocalID: id, LocalAddress: id + ":1", PartitionCount: 7, PartitionThreads: 1,
		Routing: viewRouting{id, view}, RetryPause: time.Millisecond, BackupAckTimeout: ackTimeout, Hook: hook,
		InvocationTimeout: 2 * time.Second, // the clock ticks every 100 ms
		Dial: func(ctx context.Context, address string) (net.Conn, error) {
			a, b := net.Pipe()
			members[address].HandleConn(b)
			return a, nil
		}})
	if err := s.Register("svc", nil, backedTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	return s
}

func view(id string) *atomic.Pointer[string] {
	var v atomic.Pointer[string]
	v.Store(&id)
	return &v
}

// A synchronous backup whose replica moved to another member (the old one
// refuses it: it holds no replica any more) goes to the new replica as
// soon as the primary's table says so, and the write is acknowledged once
// the new replica applied it, not after a retry budget and not without it.
func TestSyncBackupFollowsTheTable(t *testing.T) {
	members := map[string]*Service{}
	pView := view("b")
	var toB atomic.Int32
	members["p:1"] = viewMember(t, "p", pView, members, 0, func(m Message) Verdict {
		if m.Frame == transport.KindBackup && m.To == "b" {
			toB.Add(1)
		}
		return Verdict{}
	})
	members["b:1"] = viewMember(t, "b", view("y"), members, 0, nil) // b's newer table: y holds the backup
	members["y:1"] = viewMember(t, "y", view("y"), members, 0, nil)
	p, y := members["p:1"], members["y:1"]

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := p.Invoke(ctx, "svc", &backedOp{}, 1)
		done <- err
	}()
	// b refuses; the primary retries while its own table names b.
	eventually(t, func() bool { return toB.Load() >= 2 })
	select {
	case err := <-done:
		t.Fatalf("the write returned (%v) while its only backup replica refused it", err)
	default:
	}
	pView.Store(new("y")) // the primary's table catches up
	if err := <-done; err != nil {
		t.Fatalf("write: %v", err)
	}
	if v := y.ReplicaVersion(1); v != 1 {
		t.Errorf("the write was acknowledged and the new backup replica's version is %d, want 1", v)
	}
}

// A synchronous backup that its replica, still a member, never
// acknowledges (here it waits for a sync that never comes) ends at
// operations.backup-ack-timeout: the caller gets spi.ErrBackupTimeout,
// which is also spi.ErrIndeterminate.
func TestSyncBackupAckTimeout(t *testing.T) {
	members := map[string]*Service{}
	members["p:1"] = viewMember(t, "p", view("b"), members, 300*time.Millisecond, nil)
	members["b:1"] = viewMember(t, "b", view("b"), members, 0, nil)
	p := members["p:1"]
	p.SetReplicaVersion(1, 5) // b, at 0, holds version 6 back as a gap

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := p.Invoke(ctx, "svc", &backedOp{}, 1)
	if !errors.Is(err, spi.ErrBackupTimeout) || !errors.Is(err, spi.ErrIndeterminate) {
		t.Fatalf("write whose backup is never acknowledged: %v, want spi.ErrBackupTimeout", err)
	}
	t.Logf("caller saw: %v", err)
}

// A primary that was replaced by a promoted backup (declared dead while
// it still ran) stamps its writes with the old epoch; a replica that
// follows the new primary's epoch refuses them instead of acknowledging
// them as covered, and the write's caller learns that its outcome is
// unknown: the surviving history may lack it.
func TestBackupOfAnOlderEpochIsNotAcknowledged(t *testing.T) {
	members := map[string]*Service{}
	members["p:1"] = viewMember(t, "p", view("b"), members, 0, nil)
	members["b:1"] = viewMember(t, "b", view("b"), members, 0, nil)
	p, b := members["p:1"], members["b:1"]
	p.SetReplicaVersion(1, 5)       // the old primary, epoch 0
	b.SetReplicaVersion(1, 1<<32+9) // a replica of the promoted one, epoch 1

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := p.Invoke(ctx, "svc", &backedOp{}, 1)
	if !errors.Is(err, spi.ErrIndeterminate) {
		t.Fatalf("write backed up to a replica of a newer primary: %v, want spi.ErrIndeterminate", err)
	}
	if v := b.ReplicaVersion(1); v != 1<<32+9 {
		t.Errorf("the replica's version moved to %#x", v)
	}
}
