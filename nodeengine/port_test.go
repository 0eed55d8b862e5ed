package nodeengine_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// TestPendingConnectionsCapped opens more idle connections from 127.0.0.1
// than network.max-pending-per-address (or network.max-pending-connections)
// allows: the extra ones are closed at once and counted, and the members'
// established connections still carry operations.
func TestPendingConnectionsCapped(t *testing.T) {
	for _, tc := range []struct {
		reason string
		set    func(*config.NetworkConfig)
	}{
		{"too_many_from_address", func(n *config.NetworkConfig) { n.MaxPendingPerAddress = 4 }},
		{"too_many_pending", func(n *config.NetworkConfig) { n.MaxPendingConnections = 4 }},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			testPendingConnectionsCapped(t, tc.reason, tc.set)
		})
	}
}

func testPendingConnectionsCapped(t *testing.T, reason string, set func(*config.NetworkConfig)) {
	const limit, idle = 4, 20
	c := clustertest.New(t, 2, clustertest.WithConfig(func(i int, cfg *config.Config) {
		withProbe(i, cfg)
		set(&cfg.Network)
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
	if closed < idle-limit || closed > idle-limit+1 {
		// +1: a connection of member a's may have held a slot.
		t.Errorf("%d of %d idle connections closed within 2 s, want %d", closed, idle, idle-limit)
	}
	if got := clustertest.Scrape(t, b).Value("partita_rejected_input_total", "reason", reason); got < idle-limit {
		t.Errorf("partita_rejected_input_total{reason=%s} = %v, want >= %d", reason, got, idle-limit)
	}
	// The established operation connection still works.
	if _, err := a.Operations().Invoke(ctx, "Probe", &probeOp{}, p); err != nil {
		t.Fatalf("operation after the cap was hit: %v", err)
	}
	if ok, reason := b.Ready(); !ok {
		t.Errorf("member not ready: %s", reason)
	}
}

// loopbackConfig is a member config like clustertest's: any free port on
// 127.0.0.1, no multicast, fast failure detection.
func loopbackConfig(join ...string) *config.Config {
	cfg := config.Default()
	cfg.Network.Bind = "127.0.0.1:0"
	cfg.Metrics.Address = "127.0.0.1:0"
	cfg.Network.Join.Multicast.Enabled = false
	cfg.Network.Join.Members = join
	cfg.UseFastFailureDetection()
	return cfg
}

// startLoopback starts one member with loopbackConfig and log; the caller
// terminates it.
func startLoopback(t *testing.T, log *slog.Logger) *nodeengine.Node {
	t.Helper()
	n, err := nodeengine.New(loopbackConfig(), nodeengine.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestGarbageConnectionsCountedLogRateLimited sends 1,000 connections
// with a bad protocol selector: each is counted, and the log holds one
// line about them.
func TestGarbageConnectionsCountedLogRateLimited(t *testing.T) {
	var logs clustertest.LogBuffer
	n := startLoopback(t, slog.New(slog.NewTextHandler(&logs, nil)))
	defer n.Terminate()

	const garbage = 1000
	for i := 0; i < garbage; i++ {
		c, err := net.DialTimeout("tcp", n.Address(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		c.Close()
	}
	clustertest.Eventually(t, 10*time.Second, func() error {
		m := clustertest.Scrape(t, n)
		if got := m.Value("partita_rejected_input_total", "reason", "bad_selector"); got != garbage {
			return fmt.Errorf("partita_rejected_input_total{reason=bad_selector} = %v, want %d", got, garbage)
		}
		return nil
	})
	if k := strings.Count(logs.String(), "bad protocol selector"); k != 1 {
		t.Errorf("%d log lines about the bad selector, want 1 (the rest suppressed for a minute):\n%s", k, logs.String())
	}
	if k := strings.Count(logs.String(), "level=WARN"); k > 3 {
		t.Errorf("%d warn lines, want a few:\n%s", k, logs.String())
	}
	if ok, reason := n.Ready(); !ok {
		t.Errorf("member not ready after the garbage: %s", reason)
	}
}
