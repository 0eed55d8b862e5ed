//go:build unix

package operation

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// served has s serve one end of a loopback TCP connection (as HandleConn
// after the protocol selector) and returns the peer's end and the served
// socket (for drained).
func served(t *testing.T, s *Service) (peer net.Conn, server *net.TCPConn) {
	return servedAs(t, s, false)
}

// wrappedConn hides a TCP connection's type from takeTurns: the service
// reads it through bufio and readFrameWithin.
type wrappedConn struct{ net.Conn }

// servedAs is served, with the served end wrapped when wrap is set.
func servedAs(t *testing.T, s *Service, wrap bool) (peer net.Conn, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	peer, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	b := testkit.Recv(t, acc, "accept")
	if b == nil {
		t.Fatal("accept failed")
	}
	if wrap {
		s.HandleConn(wrappedConn{b})
	} else {
		s.HandleConn(b)
	}
	return peer, b.(*net.TCPConn)
}

// greet sends a hello as member id and reads the service's.
func greet(t *testing.T, peer net.Conn, id string) {
	t.Helper()
	if _, err := peer.Write(transport.AppendHello(nil, transport.Hello{Version: ProtocolVersion, Cluster: "dev", ID: id, Address: id})); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := transport.ReadHello(bufio.NewReaderSize(peer, 16)); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Time{})
}

// drained waits until the kernel holds no bytes for the served socket:
// its reader has read everything sent to it.
func drained(t *testing.T, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var p [1]byte
	eventually(t, func() bool {
		n := 0
		var rerr error
		rc.Control(func(fd uintptr) {
			n, _, rerr = syscall.Recvfrom(int(fd), p[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		})
		return n <= 0 && rerr == syscall.EAGAIN
	})
}

// readersWaiting waits until n goroutines wait for data in readFrames.
func readersWaiting(t *testing.T, n int) {
	t.Helper()
	buf := make([]byte, 16<<20)
	eventually(t, func() bool {
		k := 0
		m := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:m]), "\n\n") {
			if strings.Contains(g, "(*turnConn).readFrames") && strings.Contains(g, "pollWait") {
				k++
			}
		}
		return k >= n
	})
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// Issue 19: a peer that announces a large frame and sends little of it
// must not cost the frame's size. 200 connections each announce a frame
// of almost 16 MiB after their hello and send 50 bytes of it: the heap
// grows by far less than one such frame per connection (3 GiB), and a
// buffer is allocated only as the body's bytes arrive.
func TestAnnouncedLargeFramesCostOnlyWhatArrives(t *testing.T) {
	s := newTestService(t)
	const conns = 200
	before := heapInUse()
	servers := make([]*net.TCPConn, conns)
	for i := range conns {
		peer, server := served(t, s)
		servers[i] = server
		greet(t, peer, fmt.Sprintf("m%d", i))
		f := binary.LittleEndian.AppendUint32(nil, 0x00fffff0)
		f = append(f, make([]byte, 50)...)
		if _, err := peer.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range servers {
		drained(t, c)
	}
	readersWaiting(t, conns)
	after := heapInUse()
	grown := int64(after) - int64(before)
	t.Logf("heap in use grew by %.1f MiB for %d connections", float64(grown)/(1<<20), conns)
	if grown > 64<<20 {
		t.Fatalf("heap in use grew by %.1f MiB for %d connections, each announcing a 16 MiB frame", float64(grown)/(1<<20), conns)
	}
}

// logBuffer collects a service's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newBodyTimeoutService is newTestService with a FrameBodyTimeout, a
// clock ticking every 10 ms and its log collected.
func newBodyTimeoutService(t *testing.T, timeout time.Duration) (*Service, *logBuffer) {
	logs := &logBuffer{}
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 2, Routing: selfRouting{"self"}, InvocationTimeout: 160 * time.Millisecond,
		FrameBodyTimeout: timeout, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err := s.Register("echo", nil, echoTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	return s, logs
}

// echoes sends an echo request on peer, as whole frame or byte by byte
// every pace, and checks its answer.
func echoes(t *testing.T, s *Service, peer net.Conn, br *bufio.Reader, callID uint64, pace time.Duration) {
	t.Helper()
	f := requestFrame(callID, s.byName["echo"].id, 1, 3, fmt.Sprintf("echo %d", callID))
	if pace == 0 {
		if _, err := peer.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; pace > 0 && i < len(f); i++ {
		if _, err := peer.Write(f[i : i+1]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pace) // pacing the sender, not synchronisation
	}
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer peer.SetReadDeadline(time.Time{})
	body, err := transport.ReadFrame(br, nil)
	if err != nil {
		t.Fatalf("call %d: %v", callID, err)
	}
	h, payload, err := transport.ParseHeader(body)
	if err != nil || h.Kind != transport.KindResponse || h.CallID != callID {
		t.Fatalf("call %d: answer %+v, %v", callID, h, err)
	}
	if v, err := readValue(spi.NewReader(payload), nil); err != nil || v != fmt.Sprintf("echo %d", callID) {
		t.Fatalf("call %d: answered %v, %v", callID, v, err)
	}
}

// closedByPeer waits until the service has closed peer's connection and
// returns how long that took from since.
func closedByPeer(t *testing.T, peer net.Conn, since time.Time) time.Duration {
	t.Helper()
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := peer.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection not closed by the service: read returned %v", err)
	}
	return time.Since(since)
}

// Issue 19: a peer that sends part of a frame and stalls is cut after
// FrameBodyTimeout, with a log line naming it and why; a connection idle
// between frames for longer is not.
func TestStalledFrameBodyClosesTheConnection(t *testing.T) {
	for _, wrap := range []bool{false, true} {
		t.Run(fmt.Sprintf("wrapped=%v", wrap), func(t *testing.T) {
			const timeout = 300 * time.Millisecond
			s, logs := newBodyTimeoutService(t, timeout)
			idle, _ := servedAs(t, s, wrap)
			greet(t, idle, "idle")
			stalled, _ := servedAs(t, s, wrap)
			greet(t, stalled, "stalled")
			f := requestFrame(1, s.byName["echo"].id, 1, 3, "never finished")
			start := time.Now()
			if _, err := stalled.Write(f[:len(f)/2]); err != nil {
				t.Fatal(err)
			}
			took := closedByPeer(t, stalled, start)
			if took < timeout {
				t.Fatalf("closed after %v, before the %v body timeout", took, timeout)
			}
			remote := stalled.LocalAddr().String()
			eventually(t, func() bool {
				l := logs.String()
				return strings.Contains(l, "closing connection") && strings.Contains(l, "remote="+remote) &&
					(strings.Contains(l, "sent part of a frame") || strings.Contains(l, "frame received within"))
			})
			t.Log(logs.String())
			// Idle for longer than the body timeout, and still served.
			echoes(t, s, idle, bufio.NewReader(idle), 2, 0)
		})
	}
}

// Frames sent a byte at a time, each well within FrameBodyTimeout but all
// together taking longer, are served: the limit is per frame.
func TestSlowFramesWithinTheBodyTimeoutAreServed(t *testing.T) {
	for _, wrap := range []bool{false, true} {
		t.Run(fmt.Sprintf("wrapped=%v", wrap), func(t *testing.T) {
			const timeout = time.Second
			s, logs := newBodyTimeoutService(t, timeout)
			peer, _ := servedAs(t, s, wrap)
			greet(t, peer, "slow")
			br := bufio.NewReader(peer)
			start := time.Now()
			for id := uint64(1); time.Since(start) < 2*timeout; id++ {
				echoes(t, s, peer, br, id, 4*time.Millisecond) // about 45 bytes: 200 ms a frame
			}
			if strings.Contains(logs.String(), "closing connection") {
				t.Fatalf("a connection was closed:\n%s", logs.String())
			}
		})
	}
}
