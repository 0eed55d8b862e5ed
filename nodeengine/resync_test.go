package nodeengine

import (
	"testing"
	"time"
)

// syncNode is a bare member "b" that backs every partition up for "x"
// (reviewTable), whose requests for a full sync (OnReplicaGap) land in
// gaps instead of going to x.
type syncNode struct {
	*Node
	gaps chan int
}

func newSyncNode(t *testing.T) *syncNode {
	const count = 7
	sn := &syncNode{gaps: make(chan int, 16)}
	n := bareNode(count, nil, func(p int) { sn.gaps <- p })
	sn.Node = n
	n.ops.Start()
	n.view.table.Store(reviewTable(1, count, "x", "b"))
	t.Cleanup(func() {
		n.run.cancel()
		n.teardownForTest()
		n.ops.Shutdown()
	})
	return sn
}

// on runs f on partition 0's executor and waits for it.
func (n *syncNode) on(f func()) {
	done := make(chan struct{})
	n.ops.RunOnPartition(0, func() { f(); close(done) })
	<-done
}

// asked reports whether a sync of partition 0 was asked for (already).
func (n *syncNode) asked() bool {
	select {
	case p := <-n.gaps:
		return p == 0
	default:
		return false
	}
}

// A copy replicas.installSync cannot install while this member is still a backup
// (bad data, a migration of the partition in progress here) leaves the
// replica syncing and asks for another copy at once, instead of leaving
// it stalled until the next anti-entropy round.
func TestInstallSyncThatFailsAsksAgain(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(n *syncNode)
		data  []byte
	}{
		{"bad data", func(*syncNode) {}, []byte{0xff}},
		{"migration in progress", func(n *syncNode) { n.migs.byPart[0] = &migState{} }, []byte{5}},
		{"bad bundle", func(*syncNode) {}, []byte{5, 0, 0xff}},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newSyncNode(t)
			n.on(func() {
				c.setup(n)
				n.ops.MarkSyncing(0)
				n.replicas.installSync(0, c.data)
				n.migs.byPart[0] = nil
			})
			if !n.asked() || !n.ops.IsSyncing(0) {
				t.Fatalf("after a failed install: sync asked again %v, syncing %v; want both", len(n.gaps) > 0, n.ops.IsSyncing(0))
			}
			if v := n.ops.ReplicaVersion(0); v == 5 {
				t.Fatalf("version %d: the failed copy's version was taken", v)
			}
		})
	}
}

// A copy that arrives once this member holds no replica of the partition
// any more ends the sync (nothing asked for) and drops the replica.
func TestInstallSyncOnAFormerBackupDropsTheReplica(t *testing.T) {
	n := newSyncNode(t)
	n.on(func() {
		n.ops.SetReplicaVersion(0, 3)
		n.ops.MarkSyncing(0)
		n.view.table.Store(reviewTable(2, n.view.count, "x", "c")) // b holds nothing
		n.replicas.installSync(0, []byte{5})
	})
	if n.asked() || n.ops.IsSyncing(0) || n.ops.ReplicaVersion(0) != 0 {
		t.Fatalf("asked again %v, syncing %v, version %d; want false, false, 0", len(n.gaps) > 0, n.ops.IsSyncing(0), n.ops.ReplicaVersion(0))
	}
}

// replicas.requestSync ends cleanly when this member is no longer a backup (the
// replica stops syncing, nothing asked for again) and when the member
// stops (the sync is abandoned).
func TestRequestSyncEnds(t *testing.T) {
	waitNotSyncing := func(t *testing.T, n *syncNode) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var syncing bool
			n.on(func() { syncing = n.ops.IsSyncing(0) })
			if !syncing {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the replica still syncs")
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Run("no longer a backup", func(t *testing.T) {
		n := newSyncNode(t)
		n.view.table.Store(reviewTable(2, n.view.count, "x", "c"))
		n.on(func() { n.ops.MarkSyncing(0); n.replicas.requestSync(0) })
		waitNotSyncing(t, n)
		if n.asked() {
			t.Fatal("a sync was asked for again")
		}
	})
	t.Run("member stops", func(t *testing.T) {
		n := newSyncNode(t)
		n.run.cancel()
		n.on(func() { n.ops.MarkSyncing(0); n.replicas.requestSync(0) })
		waitNotSyncing(t, n)
		if n.asked() {
			t.Fatal("a sync was asked for again")
		}
	})
}
