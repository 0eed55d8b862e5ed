package nodeengine

import (
	"context"
	"testing"
	"time"
)

// Only a port nothing listens on refuses: a port that accepts, a port
// the network filter cuts off (as a split cuts a host off: no answer),
// and any port while this member is frozen do not; a dial that the
// host refuses is reported.
func TestRefusesOnlyAPortNothingListensOn(t *testing.T) {
	p, q := newTestPort(t), newTestPort(t)
	var reported []string
	p.refused = func(addr string) { reported = append(reported, addr) }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p.refuses(ctx, q.Address(), time.Second) {
		t.Fatal("a port that accepts connections refuses")
	}
	p.cutFrom[q.Address()] = true
	p.cut.Store(true)
	q.Shutdown()
	if p.refuses(ctx, q.Address(), time.Second) {
		t.Fatal("a port the network filter cuts off refuses")
	}
	p.cut.Store(false)
	resume := p.frozen.Pause()
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	frozen := p.refuses(short, q.Address(), time.Second)
	cancelShort()
	resume()
	if frozen {
		t.Fatal("a port refuses a member that is frozen")
	}
	if !p.refuses(ctx, q.Address(), time.Second) {
		t.Fatal("a port nothing listens on does not refuse")
	}
	if len(reported) != 0 {
		t.Fatalf("checks reported as refused dials: %q", reported)
	}
	if _, err := p.dial(ctx, q.Address(), time.Second, selectOperations); err == nil || len(reported) != 1 || reported[0] != q.Address() {
		t.Fatalf("a refused dial (%v) reported %q", err, reported)
	}
	c, err := p.dial(ctx, p.Address(), time.Second, selectOperations)
	if err != nil || len(reported) != 1 {
		t.Fatalf("a dial that opened (%v) reported %q", err, reported)
	}
	c.Close()
}
