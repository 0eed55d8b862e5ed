package nodeengine_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// Backup answers: a caller that holds the partition's synchronous backup,
// or whose partition's backup can forward it, is answered by the backup
// once applied, never before.

// When the caller holds the partition's only synchronous backup, it takes
// its answer from the backup: no answer before the backup is applied on
// the caller's member, and the right one after.
func TestCallerHoldingTheBackupIsAnsweredByIt(t *testing.T) {
	c := newCluster(t, 2, 1, nil) // with 2 members, the other one holds every backup
	c.WaitClusterSafe()
	key := c.KeyOwnedBy(0, "answered-")
	ctr := reg(c, 1, key)
	incWhileBackupHeld(t, c, ctr)
	if v := local(t, c, 1)[key]; v != 7 {
		t.Fatalf("backup on the caller's member holds %d, want 7", v)
	}
	// Both increments were answered by the backup, none by a message.
	if n := clustertest.Scrape(t, c.Member(1)).Value("partita_backup_answers_total"); n != 2 {
		t.Fatalf("partita_backup_answers_total = %v on the caller, want 2", n)
	}
}

// Backups that are lost are sent again by the primary; the caller's
// answer comes with the one that is applied, and the increment counts once.
func TestCallerHoldingTheBackupAnsweredAfterLostBackups(t *testing.T) {
	c := newCluster(t, 2, 1, nil)
	c.WaitClusterSafe()
	key := c.KeyOwnedBy(0, "resent-")
	ctr := reg(c, 1, key)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	drop := &clustertest.Fault{From: c.Member(0).ID(), To: c.Member(1).ID(), Kind: "backup/", Drop: true}
	remove := c.AddFault(drop)
	done := make(chan incResult, 1)
	go func() {
		v, err := ctr.Inc(ctx, 3)
		done <- incResult{v, err}
	}()
	waitHits(t, drop, 3)
	remove()
	if r := <-done; r.err != nil || r.v != 3 {
		t.Fatalf("Inc = %d, %v; want 3", r.v, r.err)
	}
	for m := 0; m < 2; m++ {
		if v := local(t, c, m)[key]; v != 3 {
			t.Fatalf("member %d holds %d, want 3", m, v)
		}
	}
}

// incWhileBackupHeld adds 5 to ctr, then 2 while the backups from member
// 0 to member 1 are held: the primary has run the increment, yet no
// answer may come before the backup is applied; then it must be 7.
func incWhileBackupHeld(t *testing.T, c *clustertest.Cluster, ctr register) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if v, err := ctr.Inc(ctx, 5); err != nil || v != 5 {
		t.Fatalf("first Inc = %d, %v", v, err)
	}
	hold := &clustertest.Fault{From: c.Member(0).ID(), To: c.Member(1).ID(), Kind: "backup/", Hold: make(chan struct{})}
	remove := c.AddFault(hold)
	defer remove()
	done := make(chan incResult, 1)
	go func() {
		v, err := ctr.Inc(ctx, 2)
		done <- incResult{v, err}
	}()
	waitHits(t, hold, 1)
	select {
	case r := <-done:
		t.Fatalf("Inc answered (%d, %v) while its backup was held", r.v, r.err)
	default:
	}
	close(hold.Hold)
	if r := <-done; r.err != nil || r.v != 7 {
		t.Fatalf("Inc = %d, %v; want 7", r.v, r.err)
	}
}

// A caller whose member holds neither replica gets its answer from the
// backup, forwarded once the backup is applied (three hops, not four).
// The primary answers too, after the backup's ack: the forwarded answer
// is normally first and completes the call.
func TestCallerWithoutAReplicaIsAnsweredByTheBackup(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	c.WaitClusterSafe()
	key := keyPlacedOn(t, c, 0, 1, "forwarded-")
	ctr := reg(c, 2, key)
	incWhileBackupHeld(t, c, ctr)
	for m := 0; m < 2; m++ {
		if v := local(t, c, m)[key]; v != 7 {
			t.Fatalf("member %d holds %d, want 7", m, v)
		}
	}
	incUntilForwarded(t, c, 2, ctr, 7)
}

// incUntilForwarded increments ctr, whose value is v, by one until a
// forwarded answer has completed one of the caller's (member caller's)
// calls, and returns the value. The backup's member may have no
// connection to the caller's yet (it dials one then), and which answer
// arrives first is a race (one hop against two).
func incUntilForwarded(t *testing.T, c *clustertest.Cluster, caller int, ctr register, v int64) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clustertest.Eventually(t, 10*time.Second, func() error {
		v++
		if got, err := ctr.Inc(ctx, 1); err != nil || got != v {
			t.Fatalf("Inc = %d, %v; want %d", got, err, v)
		}
		if n := clustertest.Scrape(t, c.Member(caller)).Value("partita_backup_answers_total"); n < 1 {
			return fmt.Errorf("partita_backup_answers_total = %v on the caller", n)
		}
		return nil
	})
	return v
}

// A forwarded answer that is lost leaves the caller with the primary's
// answer: the increment is answered, and counts once.
func TestLostForwardedAnswerLeavesThePrimarysAnswer(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	c.WaitClusterSafe()
	key := keyPlacedOn(t, c, 0, 1, "lost-answer-")
	ctr := reg(c, 2, key)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := incUntilForwarded(t, c, 2, ctr, 0)
	before := clustertest.Scrape(t, c.Member(2)).Value("partita_backup_answers_total")
	drop := &clustertest.Fault{From: c.Member(1).ID(), To: c.Member(2).ID(), Kind: "answer/", Drop: true}
	remove := c.AddFault(drop)
	defer remove()
	if got, err := ctr.Inc(ctx, 2); err != nil || got != v+2 {
		t.Fatalf("Inc = %d, %v; want %d", got, err, v+2)
	}
	if drop.Hits() != 1 {
		t.Fatalf("%d forwarded answers dropped, want 1", drop.Hits())
	}
	for m := 0; m < 2; m++ {
		if got := local(t, c, m)[key]; got != v+2 {
			t.Fatalf("member %d holds %d, want %d", m, got, v+2)
		}
	}
	if after := clustertest.Scrape(t, c.Member(2)).Value("partita_backup_answers_total"); after != before {
		t.Fatalf("partita_backup_answers_total went from %v to %v: the dropped answer completed the call", before, after)
	}
}
