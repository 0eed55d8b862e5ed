package nodeengine_test

import (
	"context"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// An increment whose answer is lost is retried with the id of its first
// attempt; the primary answers the retry from its record instead of
// applying the increment again.
func TestLostAnswerIsNotAppliedTwice(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := c.KeyOwnedBy(1, "eo")
	caller, owner := c.Member(0), c.Member(1)
	ctr := register{caller, name}
	drop := &clustertest.Fault{From: caller.ID(), To: owner.ID(), Kind: "TestService/", Responses: true, Drop: true}
	remove := c.AddFault(drop)
	done := make(chan struct{})
	var v int64
	var err error
	go func() {
		defer close(done)
		v, err = ctr.Inc(ctx, 5)
	}()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if drop.Hits() == 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	remove()
	<-done
	if err != nil || v != 5 {
		t.Fatalf("Inc = %d, %v; want 5", v, err)
	}
	if got, err := ctr.Get(ctx); err != nil || got != 5 {
		t.Fatalf("Get = %d, %v; want 5: the retry was applied again", got, err)
	}
}

// The primary applies an increment and backs it up, then dies before its
// answer arrives: the retry reaches the promoted backup, which answers from
// the record that came with the backup.
func TestRetryAfterPrimaryDiesIsAnsweredFromRecord(t *testing.T) {
	c := newCluster(t, 3, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := c.KeyOwnedBy(1, "eo")
	caller, owner := c.Member(0), c.Member(1)
	ctr := register{caller, name}
	if _, err := ctr.Inc(ctx, 1); err != nil {
		t.Fatal(err)
	}
	hold := &clustertest.Fault{From: caller.ID(), To: owner.ID(), Kind: "TestService/*testservice.AddOperation",
		Responses: true, Drop: true, Hold: make(chan struct{})}
	remove := c.AddFault(hold)
	done := make(chan struct{})
	var v int64
	var incErr error
	go func() {
		defer close(done)
		v, incErr = ctr.Inc(ctx, 10)
	}()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if hold.Hits() == 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	c.Kill(1) // the answer (11) is held at the caller; its owner is gone
	close(hold.Hold)
	remove()
	<-done
	if incErr != nil || v != 11 {
		t.Fatalf("Inc = %d, %v; want 11", v, incErr)
	}
	if got, err := ctr.Get(ctx); err != nil || got != 11 {
		t.Fatalf("Get = %d, %v; want 11: the retry was applied again on the promoted backup", got, err)
	}
}
