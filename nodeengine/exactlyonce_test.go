package nodeengine_test

import (
	"context"
	"testing"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// An increment whose answer is lost is retried with the id of its first
// attempt; the primary answers the retry from its record instead of
// applying the increment again.
func TestLostAnswerIsNotAppliedTwice(t *testing.T) {
	c, ctr := remoteRegister(t)
	ctx := ctxT(t)
	drop := &clustertest.Fault{Kind: "TestService/", Drop: true}
	done, remove := incWithAnswersFaulted(ctx, c, ctr, drop, 5)
	waitHits(t, drop, 1)
	remove()
	if r := <-done; r.err != nil || r.v != 5 {
		t.Fatalf("Inc = %d, %v; want 5", r.v, r.err)
	}
	if got, err := ctr.Get(ctx); err != nil || got != 5 {
		t.Fatalf("Get = %d, %v; want 5: the retry was applied again", got, err)
	}
}

// The primary applies an increment and backs it up, then dies before its
// answer arrives: the retry reaches the promoted backup, which answers from
// the record that came with the backup.
func TestRetryAfterPrimaryDiesIsAnsweredFromRecord(t *testing.T) {
	c, ctr := remoteRegister(t)
	ctx := ctxT(t)
	if _, err := ctr.Inc(ctx, 1); err != nil {
		t.Fatal(err)
	}
	hold := &clustertest.Fault{Kind: "TestService/*testservice.AddOperation", Drop: true, Hold: make(chan struct{})}
	done, remove := incWithAnswersFaulted(ctx, c, ctr, hold, 10)
	waitHits(t, hold, 1)
	c.Kill(1) // the answer (11) is held at the caller; its owner is gone
	close(hold.Hold)
	remove()
	if r := <-done; r.err != nil || r.v != 11 {
		t.Fatalf("Inc = %d, %v; want 11", r.v, r.err)
	}
	if got, err := ctr.Get(ctx); err != nil || got != 11 {
		t.Fatalf("Get = %d, %v; want 11: the retry was applied again on the promoted backup", got, err)
	}
}

// remoteRegister starts 3 members and returns a register that member 1
// owns, used through member 0.
func remoteRegister(t *testing.T) (*clustertest.Cluster, register) {
	c := newCluster(t, 3, 1, nil)
	return c, reg(c, 0, c.KeyOwnedBy(1, "eo"))
}

// incWithAnswersFaulted installs fault f on the answers from member 1 to
// member 0 and starts ctr.Inc(delta), whose result comes on done.
func incWithAnswersFaulted(ctx context.Context, c *clustertest.Cluster, ctr register, f *clustertest.Fault, delta int64) (done <-chan incResult, remove func()) {
	f.From, f.To, f.Responses = c.Member(0).ID(), c.Member(1).ID(), true
	remove = c.AddFault(f)
	ch := make(chan incResult, 1)
	go func() {
		v, err := ctr.Inc(ctx, delta)
		ch <- incResult{v, err}
	}()
	return ch, remove
}
