package nodeengine_test

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// TestPendingConnectionsPerAddressCapped opens more idle connections from
// 127.0.0.1 than network.max-pending-per-address allows: the extra ones
// are closed at once and counted, and the members' established
// connections still carry operations.
func TestPendingConnectionsPerAddressCapped(t *testing.T) {
	const perAddress, idle = 4, 20
	c := clustertest.New(t, 2, clustertest.WithConfig(func(i int, cfg *config.Config) {
		withProbe(i, cfg)
		cfg.Network.MaxPendingPerAddress = perAddress
	}))
	ctx := ctxT(t)
	a, b := c.Member(0), c.Member(1)
	p := ownedBy(t, a, b.ID())
	if _, err := a.Operations().Invoke(ctx, "Probe", &probeOp{}, p); err != nil {
		t.Fatal(err)
	}

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < idle; i++ {
		c, err := net.DialTimeout("tcp", b.Address(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Well before the 5 s a connection has to send its selector, the ones
	// over the cap are closed and the ones under it are still open.
	deadline := time.Now().Add(2 * time.Second)
	results := make(chan bool, len(conns))
	for _, c := range conns {
		go func() {
			c.SetReadDeadline(deadline)
			var buf [1]byte
			_, err := c.Read(buf[:])
			results <- !errors.Is(err, os.ErrDeadlineExceeded)
		}()
	}
	closed := 0
	for range conns {
		if <-results {
			closed++
		}
	}
	if closed < idle-perAddress || closed > idle-perAddress+1 {
		// +1: a connection of member a's may have held a slot.
		t.Errorf("%d of %d idle connections closed within 2 s, want %d", closed, idle, idle-perAddress)
	}
	if got := clustertest.Scrape(t, b).Value("partita_rejected_input_total", "reason", "too_many_from_address"); got < idle-perAddress {
		t.Errorf("partita_rejected_input_total{reason=too_many_from_address} = %v, want >= %d", got, idle-perAddress)
	}
	// The established operation connection still works.
	if _, err := a.Operations().Invoke(ctx, "Probe", &probeOp{}, p); err != nil {
		t.Fatalf("operation after the cap was hit: %v", err)
	}
	if ok, reason := b.Ready(); !ok {
		t.Errorf("member not ready: %s", reason)
	}
}
