package nodeengine

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
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

// A member declared dead by its refused port leaves the member list and
// its alive messages (the others' gossip) are refused, without the
// one-time warning of a member coming back unmerged; memberlist's own
// declaration ends the entry, and the warning stays for a later
// comeback. One that memberlist goes on listing is taken back, and its
// port's refusals count for nothing after.
func TestRefusedPortDeclarationEndsOrIsTakenBack(t *testing.T) {
	n := bareNode(4, nil, nil)
	defer n.run.wait()
	defer n.run.halt() // the refusals' reconsiderDead goroutines
	d := newDelegates(n, nil)
	n.del = d
	const cluster = "c"
	n.cfg.Cluster.Name = cluster
	node := func(name string) *memberlist.Node {
		m := memberMeta{protocol: operation.ProtocolVersion, cluster: cluster, address: name + ":1", started: 5}
		return &memberlist.Node{Name: name, Meta: m.encode()}
	}
	listed := func(name string) bool {
		return slices.ContainsFunc(d.members(cluster), func(m spi.Member) bool { return m.ID == name })
	}
	d.set(node("x"), true)
	d.set(node("y"), true)
	if !d.confirmDead("x") || listed("x") || !listed("y") {
		t.Fatalf("after confirmDead(x): members %v", d.members(cluster))
	}
	if d.confirmDead("x") {
		t.Fatal("x declared dead twice")
	}
	if err := d.check(node("x")); err == nil || !strings.Contains(err.Error(), goneReason) {
		t.Fatalf("gossip about x after its declaration: %v", err)
	}
	d.set(node("x"), false) // memberlist declares it dead
	if d.refused["gone:x"] || d.refused["dead:x"] || d.gone["x"] {
		t.Fatalf("memberlist's declaration left refused %v, gone %v", d.refused, d.gone)
	}
	if err := d.check(node("x")); err == nil || strings.Contains(err.Error(), goneReason) || !d.refused["dead:x"] {
		t.Fatalf("x back unmerged after memberlist's declaration: %v (refused %v)", err, d.refused)
	}

	if !d.confirmDead("y") || listed("y") {
		t.Fatal("y not declared dead")
	}
	if !d.undoGone("y") || !listed("y") || d.check(node("y")) != nil {
		t.Fatalf("y, still listed by memberlist, not taken back: members %v", d.members(cluster))
	}
	if d.refusalsCount("y") || d.confirmDead("y") || !listed("y") {
		t.Fatal("y's refused port declared it dead again after it was taken back")
	}
	if d.undoGone("x") {
		t.Fatal("x, which memberlist declared dead, was taken back")
	}
}
