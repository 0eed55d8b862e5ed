package operation

import (
	"context"
	"testing"
	"time"
)

// InvokeOnceAt reaches a member that the routing does not know (the
// engine asks members memberlist declared dead whether they still run) at
// the address given. Something else answering there fails the call at
// once: it is not retried until the deadline.
func TestInvokeOnceAtMemberUnknownToRouting(t *testing.T) {
	_, c := newInlinePair(t, &solo{})
	if _, ok := c.cfg.Routing.MemberAddress("p"); ok {
		t.Fatal("the routing knows p")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if v, err := c.InvokeOnceAt(ctx, "where", whereOp{}, "p", "p:1"); err != nil || v == nil {
		t.Fatalf("InvokeOnceAt p at p:1 = %v, %v", v, err)
	}
	start := time.Now()
	if _, err := c.InvokeOnceAt(ctx, "where", whereOp{}, "q", "p:1"); err == nil {
		t.Fatal("member p answered for q")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a wrong member at the address failed after %v: retried", d)
	}
}
