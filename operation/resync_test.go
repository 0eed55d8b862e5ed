package operation

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/operation/replica"
	"github.com/partita-go/partita/spi"
)

// roleRouting: this member holds replica index `index` of every partition
// (1: the first backup), which a test changes to move it.
type roleRouting struct{ index atomic.Int32 }

func (*roleRouting) Owner(int) (string, string, bool)    { return "primary", "primary:1", true }
func (*roleRouting) MemberAddress(string) (string, bool) { return "primary:1", true }
func (*roleRouting) Backups(int, []Replica) []Replica    { return nil }
func (r *roleRouting) ReplicaIndex(int) int              { return int(r.index.Load()) }

// resyncHarness is a backup replica whose requests for a full sync
// (OnReplicaGap) land in gaps, with backups of service "store" sent to it
// as a primary would.
type resyncHarness struct {
	s       *Service
	routing *roleRouting
	gaps    chan int
}

const resyncPartition = 2

func newResyncHarness(t *testing.T) *resyncHarness {
	h := &resyncHarness{routing: &roleRouting{}, gaps: make(chan int, 16)}
	h.routing.index.Store(1)
	h.s = New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "self:1", PartitionCount: 4,
		PartitionThreads: 1, Routing: h.routing, OnReplicaGap: func(p int) { h.gaps <- p }})
	if err := h.s.Register("store", nil, []spi.OperationType{{ID: 1, New: func() spi.Operation { return writeBackupOp{} }}}); err != nil {
		t.Fatal(err)
	}
	h.s.Start()
	t.Cleanup(h.s.Shutdown)
	return h
}

// backup sends the backup stamped version; its ack (nil) or refusal
// arrives on the channel.
func (h *resyncHarness) backup(t *testing.T, version int64) <-chan error {
	out := make(chan error, 1)
	cl := newCall(writeBackupOp{})
	tk := task{op: cl.op, svc: h.s.byName["store"], pid: resyncPartition, replica: 1, version: version, local: cl,
		key: invKey{Origin: 9, Seq: uint64(version)}}
	if err := h.s.enqueue(context.Background(), tk); err != nil {
		t.Fatal(err)
	}
	go func() {
		<-cl.done
		cl.taken()
		_, err := cl.result()
		out <- err
	}()
	return out
}

// on runs f on the partition's executor and waits for it.
func (h *resyncHarness) on(f func()) {
	done := make(chan struct{})
	h.s.RunOnPartition(resyncPartition, func() { f(); close(done) })
	<-done
}

// pending reports whether the replica waits for a sync or has backups
// waiting, read on its executor.
func (h *resyncHarness) pending() (syncing, waiting bool) {
	h.on(func() {
		syncing = h.s.IsSyncing(resyncPartition)
		waiting = h.s.replicas[resyncPartition].Held() > 0
	})
	return
}

// gap waits for a request for a sync, for up to within (0: it must have
// been made already).
func (h *resyncHarness) gap(t *testing.T, within time.Duration) {
	t.Helper()
	if within == 0 {
		select {
		case p := <-h.gaps:
			if p != resyncPartition {
				t.Fatalf("sync asked for partition %d", p)
			}
		default:
			t.Fatal("no sync asked for at once")
		}
		return
	}
	select {
	case p := <-h.gaps:
		if p != resyncPartition {
			t.Fatalf("sync asked for partition %d", p)
		}
	case <-time.After(within):
		t.Fatalf("no sync asked for within %v", within)
	}
}

func (h *resyncHarness) noGapYet(t *testing.T) {
	t.Helper()
	select {
	case <-h.gaps:
		t.Fatal("a sync was asked for")
	default:
	}
}

func expectPending(t *testing.T, c <-chan error) {
	t.Helper()
	select {
	case err := <-c:
		t.Fatalf("the waiting backup ended: %v", err)
	default:
	}
}

// A full sync given up (ReplicaSynced(p, -1)) while this member is still a
// backup of p does not leave the replica stalled until the next
// anti-entropy round: it stays syncing, the waiting backup keeps waiting,
// and a new sync is asked for at once; the copy then releases the backup.
func TestGivenUpSyncOfABackupAsksAgain(t *testing.T) {
	h := newResyncHarness(t)
	second := h.backup(t, 2) // version 1 is missing: it waits, a sync is asked for
	h.gap(t, 10*time.Second)
	h.on(func() {
		h.s.ReplicaSynced(resyncPartition, -1)
		// Asked again on the spot, before anything else runs here.
		if len(h.gaps) != 1 {
			t.Errorf("after the first failed sync: %d syncs asked for, want 1 at once", len(h.gaps))
		}
	})
	h.gap(t, 0)
	if syncing, waiting := h.pending(); !syncing || !waiting {
		t.Fatalf("after the failed sync: syncing %v, backup waiting %v; want both", syncing, waiting)
	}
	expectPending(t, second)
	h.on(func() { h.s.ReplicaSynced(resyncPartition, 1) })
	if err := <-second; err != nil {
		t.Fatalf("backup 2 after the copy: %v", err)
	}
	if syncing, waiting := h.pending(); syncing || waiting || h.s.ReplicaVersion(resyncPartition) != 2 {
		t.Fatalf("after the copy: syncing %v, waiting %v, version %d", syncing, waiting, h.s.ReplicaVersion(resyncPartition))
	}
}

// Two backups of one version reach a replica that is behind (its primary
// sent it the write for two replicas: the table named it twice, or it
// serves one replica and takes over another, or a backup was redirected
// to it): both wait for the copy, and both are acknowledged once it
// comes. The second used to replace the first, which was never answered:
// its primary waited operations.backup-ack-timeout and answered the
// write with ErrBackupTimeout.
func TestTwoCopiesOfAWaitingBackupAreBothAcknowledged(t *testing.T) {
	h := newResyncHarness(t)
	first := h.backup(t, 2) // version 1 is missing: it waits, a sync is asked for
	h.gap(t, 10*time.Second)
	second := h.backup(t, 2)
	h.on(func() {
		if n := h.s.replicas[resyncPartition].Held(); n != 2 {
			t.Errorf("%d backups waiting, want both copies", n)
		}
	})
	expectPending(t, first)
	expectPending(t, second)
	h.on(func() { h.s.ReplicaSynced(resyncPartition, 1) })
	for i, c := range []<-chan error{first, second} {
		select {
		case err := <-c:
			if err != nil {
				t.Fatalf("copy %d after the sync: %v", i+1, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("copy %d never acknowledged after the sync", i+1)
		}
	}
	if syncing, waiting := h.pending(); syncing || waiting || h.s.ReplicaVersion(resyncPartition) != 2 {
		t.Fatalf("after the copy: syncing %v, waiting %v, version %d", syncing, waiting, h.s.ReplicaVersion(resyncPartition))
	}
}

// Syncs that keep failing are asked for again after pauses that double
// (never a busy loop), up to replica.MaxSyncPause; a sync that succeeds
// starts the count again.
func TestFailingSyncsBackOff(t *testing.T) {
	h := newResyncHarness(t)
	second := h.backup(t, 2)
	h.gap(t, 10*time.Second)
	h.on(func() { h.s.ReplicaSynced(resyncPartition, -1) })
	h.gap(t, 0) // the first failure: at once
	for i, want := range []time.Duration{replica.FirstSyncPause, 2 * replica.FirstSyncPause, 4 * replica.FirstSyncPause} {
		start := time.Now()
		h.on(func() { h.s.ReplicaSynced(resyncPartition, -1) })
		h.gap(t, 10*time.Second)
		if took := time.Since(start); took < want {
			t.Fatalf("failure %d: asked again after %v, want at least %v", i+2, took, want)
		}
		expectPending(t, second)
	}
	if got := min(replica.FirstSyncPause<<16, replica.MaxSyncPause); got != replica.MaxSyncPause {
		t.Fatalf("longest pause %v", got)
	}
	// A sync older than the waiting backup (a hole remains) counts as a
	// failure too: asked for again only after a pause.
	start := time.Now()
	h.on(func() { h.s.ReplicaSynced(resyncPartition, 0) })
	h.gap(t, 10*time.Second)
	if took := time.Since(start); took < 8*replica.FirstSyncPause {
		t.Fatalf("after an old copy: asked again after %v, want at least %v", took, 8*replica.FirstSyncPause)
	}
	h.on(func() { h.s.ReplicaSynced(resyncPartition, 1) })
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	// Synced: the next gap and failure are asked for at once again.
	third := h.backup(t, 4)
	h.gap(t, 10*time.Second)
	h.on(func() {
		h.s.ReplicaSynced(resyncPartition, -1)
		if len(h.gaps) != 1 {
			t.Errorf("first failure after a good sync: %d syncs asked for at once, want 1", len(h.gaps))
		}
	})
	h.gap(t, 0)
	h.on(func() { h.s.ReplicaSynced(resyncPartition, 3) })
	if err := <-third; err != nil {
		t.Fatal(err)
	}
}

// A full sync given up once this member is no longer a backup of the
// partition (no replica, or promoted to primary) fails the waiting
// backups with a retryable error and leaves the replica neither syncing
// nor holding backups, with no sync asked for.
func TestGivenUpSyncOfAFormerBackupFailsWaitingBackups(t *testing.T) {
	for _, index := range []int32{-1, 0} {
		h := newResyncHarness(t)
		second := h.backup(t, 2)
		h.gap(t, 10*time.Second)
		h.routing.index.Store(index)
		h.on(func() { h.s.ReplicaSynced(resyncPartition, -1) })
		select {
		case err := <-second:
			if !spi.IsRetryable(err) || !errors.Is(err, spi.ErrWrongTarget) {
				t.Fatalf("replica index %d: waiting backup ended with %v, want a retryable ErrWrongTarget", index, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("replica index %d: the waiting backup still waits", index)
		}
		if syncing, waiting := h.pending(); syncing || waiting || h.s.SyncsPending() != 0 {
			t.Fatalf("replica index %d: syncing %v, waiting %v, syncs pending %d", index, syncing, waiting, h.s.SyncsPending())
		}
		h.on(func() {
			if h.s.replicas[resyncPartition].RetryArmed() {
				t.Errorf("replica index %d: a sync retry is armed", index)
			}
		})
		h.noGapYet(t)
	}
}

// A member that stops being a backup while a failed sync's retry waits
// for its pause gives up when the pause ends instead of asking again.
func TestRoleChangeDuringSyncPause(t *testing.T) {
	h := newResyncHarness(t)
	second := h.backup(t, 2)
	h.gap(t, 10*time.Second)
	h.on(func() { h.s.ReplicaSynced(resyncPartition, -1) })
	h.gap(t, 0)
	h.on(func() {
		h.s.ReplicaSynced(resyncPartition, -1) // armed: asked again after a pause
		h.routing.index.Store(0)               // promoted meanwhile
	})
	select {
	case err := <-second:
		if !spi.IsRetryable(err) {
			t.Fatalf("waiting backup ended with %v, want a retryable error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting backup still waits")
	}
	if syncing, waiting := h.pending(); syncing || waiting {
		t.Fatalf("syncing %v, waiting %v", syncing, waiting)
	}
	h.noGapYet(t)
}

// AbandonSync (the member stops) fails the waiting backups with its error
// and asks for nothing.
func TestAbandonSync(t *testing.T) {
	h := newResyncHarness(t)
	second := h.backup(t, 2)
	h.gap(t, 10*time.Second)
	h.on(func() { h.s.AbandonSync(resyncPartition, spi.ErrShutdown) })
	if err := <-second; !errors.Is(err, spi.ErrShutdown) {
		t.Fatalf("waiting backup ended with %v", err)
	}
	if syncing, waiting := h.pending(); syncing || waiting {
		t.Fatalf("syncing %v, waiting %v", syncing, waiting)
	}
	h.noGapYet(t)
}
