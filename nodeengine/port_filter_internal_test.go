package nodeengine

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// testPort is a member port serving nothing but memberlist's channels,
// cut off from the ports in its cut set while that is on.
type testPort struct {
	*muxTransport
	cutFrom map[string]bool // addresses cut off while cut is on
	cut     atomic.Bool
}

func newTestPort(t *testing.T) *testPort {
	t.Helper()
	tr, err := listen("127.0.0.1:0", false, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	p := &testPort{muxTransport: tr, cutFrom: map[string]bool{}}
	tr.reach = func(addr string) bool { return !p.cut.Load() || !p.cutFrom[addr] }
	tr.serve(func(c net.Conn) { c.Close() }, inboundLimits{pending: 16, perAddress: 16}, newRejectedMetric())
	t.Cleanup(func() { tr.Shutdown() })
	return p
}

// nextPacket returns the next memberlist packet p received.
func (p *testPort) nextPacket(t *testing.T) string {
	t.Helper()
	select {
	case pk := <-p.PacketCh():
		return string(pk.Buf)
	case <-time.After(10 * time.Second):
		t.Fatal("no packet within 10s")
		return ""
	}
}

// The network filter drops memberlist packets to and from the ports it
// cuts off, silently, and fails dials to them at once; once it lets them
// through again, they flow. A packet that passes after one that was cut
// arrives first: the cut one was dropped, not late.
func TestNetworkFilterCutsPort(t *testing.T) {
	a, b, c := newTestPort(t), newTestPort(t), newTestPort(t)
	send := func(from, to *testPort, msg string) {
		t.Helper()
		if _, err := from.WriteTo([]byte(msg), to.Address()); err != nil {
			t.Fatalf("%s to %s: %v", msg, to.Address(), err)
		}
	}
	// lost checks that a's packet to b is lost: c's, sent after it,
	// arrives first.
	lost := func(why string) {
		t.Helper()
		send(a, b, why)
		send(c, b, "witness")
		if got := b.nextPacket(t); got != "witness" {
			t.Fatalf("b got %q (%s)", got, why)
		}
	}
	send(a, b, "before")
	if got := b.nextPacket(t); got != "before" {
		t.Fatalf("b got %q, want before", got)
	}

	// Inbound: b drops what a sends.
	b.cutFrom[a.Address()] = true
	b.cut.Store(true)
	lost("b cuts a off")
	b.cut.Store(false)

	// Outbound: a drops what it would send to b, and cannot dial it.
	a.cutFrom[b.Address()] = true
	a.cut.Store(true)
	lost("a cuts b off")
	for _, dial := range []func() (net.Conn, error){
		func() (net.Conn, error) { return a.DialTimeout(b.Address(), 10*time.Second) },
		func() (net.Conn, error) {
			return a.dial(context.Background(), b.Address(), 10*time.Second, selectOperations)
		},
	} {
		if conn, err := dial(); !errors.Is(err, errUnreachable) {
			if conn != nil {
				conn.Close()
			}
			t.Fatalf("dial to a port cut off: %v; want errUnreachable", err)
		}
	}

	// Healed.
	a.cut.Store(false)
	send(a, b, "after")
	if got := b.nextPacket(t); got != "after" {
		t.Fatalf("b got %q, want after", got)
	}
	conn, err := a.DialTimeout(b.Address(), 10*time.Second)
	if err != nil {
		t.Fatalf("dial after healing: %v", err)
	}
	conn.Close()
	select {
	case s := <-b.StreamCh():
		s.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the stream dialled after healing did not arrive")
	}
}
