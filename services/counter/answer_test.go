package counter_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// incResult is the outcome of one Inc.
type incResult struct {
	v   int64
	err error
}

// When the caller holds the partition's only synchronous backup, it takes
// its answer from the backup: no answer before the backup is applied on
// the caller's member, and the right one after.
func TestCallerHoldingTheBackupIsAnsweredByIt(t *testing.T) {
	c := clustertest.New(t, 2) // with 2 members, the other one holds every backup
	c.WaitClusterSafe()
	key := c.KeyOwnedBy(0, "answered-")
	ctr := getCounter(t, c, 1, key)
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
	clustertest.Eventually(t, 10*time.Second, func() error {
		if hold.Hits() == 0 {
			return fmt.Errorf("backup not sent yet")
		}
		return nil
	})
	// The primary ran the increment and holds its answer until the backup
	// is acknowledged; the caller's answer travels with the backup.
	select {
	case r := <-done:
		t.Fatalf("Inc answered (%d, %v) while its backup was held", r.v, r.err)
	default:
	}
	close(hold.Hold)
	if r := <-done; r.err != nil || r.v != 7 {
		t.Fatalf("Inc = %d, %v; want 7", r.v, r.err)
	}
	if v := localValues(t, c, 1)[key]; v != 7 {
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
	c := clustertest.New(t, 2)
	c.WaitClusterSafe()
	key := c.KeyOwnedBy(0, "resent-")
	ctr := getCounter(t, c, 1, key)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	drop := &clustertest.Fault{From: c.Member(0).ID(), To: c.Member(1).ID(), Kind: "backup/", Drop: true}
	remove := c.AddFault(drop)
	done := make(chan incResult, 1)
	go func() {
		v, err := ctr.Inc(ctx, 3)
		done <- incResult{v, err}
	}()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if drop.Hits() < 3 {
			return fmt.Errorf("%d backups dropped", drop.Hits())
		}
		return nil
	})
	remove()
	if r := <-done; r.err != nil || r.v != 3 {
		t.Fatalf("Inc = %d, %v; want 3", r.v, r.err)
	}
	for m := 0; m < 2; m++ {
		if v := localValues(t, c, m)[key]; v != 3 {
			t.Fatalf("member %d holds %d, want 3", m, v)
		}
	}
}
