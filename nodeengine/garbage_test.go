package nodeengine_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// TestMemberSurvivesAGarbageSpewer points a spewer of bad input at a real
// member for a few seconds: random bytes, a bad or no protocol selector,
// random bytes after each selector, hellos of another cluster, frames
// announcing 16 MiB and stopping short, truncated and malformed frames,
// a slow writer, garbage UDP packets and a flood of idle connections,
// all from a fixed seed. Meanwhile another member's operations on it keep
// succeeding; afterwards it is ready, each kind of bad input was counted
// by reason, the log holds a few lines about it (rate-limited per
// address), and a new member joins it.
func TestMemberSurvivesAGarbageSpewer(t *testing.T) {
	var logs clustertest.LogBuffer
	start := func(log *slog.Logger, join ...string) *nodeengine.Node {
		cfg := loopbackConfig(join...)
		withProbe(0, cfg)
		cfg.Operations.FrameBodyTimeout = 500 * time.Millisecond
		n, err := nodeengine.New(cfg, nodeengine.WithLogger(log))
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Terminate)
		return n
	}
	b := start(slog.New(slog.NewTextHandler(&logs, nil)))
	a := start(slog.New(slog.DiscardHandler), b.Address())
	ctx := ctxT(t)
	if err := nodeengine.WaitStable(ctx, []*nodeengine.Node{a, b}); err != nil {
		t.Fatal(err)
	}
	p := ownedBy(t, a, b.ID())
	if _, err := a.Operations().Invoke(ctx, "Probe", &probeOp{}, p); err != nil {
		t.Fatal(err)
	}

	// The member keeps serving: a caller invokes on b throughout.
	stop := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				if n == 0 {
					served <- fmt.Errorf("no operation ran during the spew")
				}
				served <- nil
				return
			default:
			}
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := a.Operations().Invoke(ictx, "Probe", &probeOp{}, p)
			cancel()
			if err != nil {
				served <- fmt.Errorf("operation %d during the spew: %w", n, err)
				return
			}
			n++
		}
	}()

	sp := &spewer{t: t, addr: b.Address(), cluster: b.ClusterName()}
	sp.run(20260612)
	clustertest.Eventually(t, 10*time.Second, func() error {
		m := clustertest.Scrape(t, b)
		for _, reason := range []string{"bad_selector", "no_selector", "bad_packet", "too_many_from_address",
			transport.RejectHello, transport.RejectCluster, transport.RejectFrame, transport.RejectSlowFrame} {
			if m.Value("partita_rejected_input_total", "reason", reason) == 0 {
				return fmt.Errorf("partita_rejected_input_total{reason=%q} is 0", reason)
			}
		}
		return nil
	})
	sp.close()
	close(stop)
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if ok, reason := b.Ready(); !ok {
		t.Fatalf("member not ready after the spew: %s", reason)
	}
	if _, err := a.Operations().Invoke(ctx, "Probe", &probeOp{}, p); err != nil {
		t.Fatalf("operation after the spew: %v", err)
	}
	d := start(slog.New(slog.DiscardHandler), b.Address())
	if err := nodeengine.WaitStable(ctx, []*nodeengine.Node{a, b, d}); err != nil {
		t.Fatalf("a new member after the spew: %v", err)
	}
	if k := strings.Count(logs.String(), "level=WARN"); k > 10 {
		t.Errorf("%d warn lines on the spewed-at member, want a few (rate-limited per address):\n%s", k, logs.String())
	}
}

// spewer sends bad input of every kind to a member's port.
type spewer struct {
	t       *testing.T
	addr    string
	cluster string
	wg      sync.WaitGroup
	mu      sync.Mutex
	open    []net.Conn
}

func (s *spewer) dial() net.Conn {
	nc, err := net.DialTimeout("tcp", s.addr, 2*time.Second)
	if err != nil {
		return nil // the member may refuse while it is flooded
	}
	s.mu.Lock()
	s.open = append(s.open, nc)
	s.mu.Unlock()
	return nc
}

func (s *spewer) send(b ...[]byte) {
	if nc := s.dial(); nc != nil {
		for _, x := range b {
			nc.Write(x)
		}
	}
}

func (s *spewer) hello(cluster string) []byte {
	return transport.AppendHello([]byte{'P'}, transport.Hello{Version: transport.ProtocolVersion, Cluster: cluster, ID: "spewer", Address: "spewer:1"})
}

// run sends the bad input; the connections stay open until close.
func (s *spewer) run(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed))
	junk := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	for i := 0; i < 40; i++ {
		s.send(junk(1 + rng.IntN(512)))                       // random bytes (a random selector)
		s.send([]byte{'P'}, junk(1+rng.IntN(512)))            // not a hello
		s.send([]byte{'M'}, junk(1+rng.IntN(512)))            // not memberlist
		s.send(s.hello("not-" + s.cluster))                   // another cluster
		s.send(s.hello(s.cluster), []byte{9, 0, 0, 0, 7, 42}) // a valid hello, then an unknown kind
		s.send(s.hello(s.cluster), binary.LittleEndian.AppendUint32(nil, 1<<31))
		// A 16 MiB frame announced, a few bytes of it sent, then silence.
		s.send(s.hello(s.cluster), binary.LittleEndian.AppendUint32(nil, 16<<20), junk(64))
	}
	if nc := s.dial(); nc != nil { // no selector at all
		s.mu.Lock()
		s.open = s.open[:len(s.open)-1]
		s.mu.Unlock()
		nc.Close()
	}
	// Garbage UDP packets.
	if uc, err := net.Dial("udp", s.addr); err == nil {
		for i := 0; i < 500; i++ {
			uc.Write(junk(1 + rng.IntN(1024)))
		}
		uc.Close()
	}
	// A slow writer: a valid hello, then a frame a byte at a time.
	slow := s.dial()
	if slow != nil {
		slow.Write(s.hello(s.cluster))
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			frame := binary.LittleEndian.AppendUint32(nil, 64)
			frame = append(frame, junk(64)...)
			for _, x := range frame {
				if _, err := slow.Write([]byte{x}); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond) // the slowness is the input under test
			}
		}()
	}
	// A flood of idle connections, past the per-address cap.
	for i := 0; i < 300; i++ {
		s.dial()
	}
}

// close closes every connection the spewer opened.
func (s *spewer) close() {
	s.mu.Lock()
	for _, nc := range s.open {
		nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
