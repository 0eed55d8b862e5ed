//go:build unix

package operation

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// turnPair returns both ends of a loopback TCP connection, each taking turns.
func turnPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var acc net.Conn
	select {
	case acc = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted")
	}
	if acc == nil {
		t.Fatal("accept failed")
	}
	a, b = takeTurns(d), takeTurns(acc)
	if _, ok := a.(*turnConn); !ok {
		t.Fatalf("takeTurns(%T) did not wrap a TCP connection", d)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// wait fails the test unless ch delivers within a bound.
func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// Both ends send many megabytes at once, in writes of every size, while
// reading the other's: the send buffers fill (partial writes, waits for
// room) and every byte arrives in order.
func TestTurnConnCarriesBothWaysAtOnce(t *testing.T) {
	a, b := turnPair(t)
	payload := func(seed uint64) []byte {
		p := make([]byte, 8<<20)
		r := rand.New(rand.NewPCG(seed, seed))
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return p
	}
	pa, pb := payload(1), payload(2)
	send := func(c net.Conn, p []byte, seed uint64) <-chan error {
		done := make(chan error, 1)
		go func() {
			r := rand.New(rand.NewPCG(seed, 0))
			for len(p) > 0 {
				n := min(len(p), 1+r.IntN(256<<10))
				if k, err := c.Write(p[:n]); err != nil || k != n {
					done <- errors.Join(err, io.ErrShortWrite)
					return
				}
				p = p[n:]
			}
			done <- nil
		}()
		return done
	}
	recv := func(c net.Conn, n int) <-chan []byte {
		done := make(chan []byte, 1)
		go func() {
			got := make([]byte, n)
			_, err := io.ReadFull(c, got)
			if err != nil {
				got = nil
			}
			done <- got
		}()
		return done
	}
	wa, wb := send(a, pa, 3), send(b, pb, 4)
	ra, rb := recv(a, len(pb)), recv(b, len(pa))
	for _, w := range []<-chan error{wa, wb} {
		if err := wait(t, w, "a writer"); err != nil {
			t.Fatal(err)
		}
	}
	if got := wait(t, rb, "b's reader"); !bytes.Equal(got, pa) {
		t.Fatal("b did not receive a's bytes intact")
	}
	if got := wait(t, ra, "a's reader"); !bytes.Equal(got, pb) {
		t.Fatal("a did not receive b's bytes intact")
	}
}

// waitParked waits until some goroutine's stack holds every one of
// frames: a read or write of the test waiting in the runtime's poller.
func waitParked(t *testing.T, frames ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	eventually(t, func() bool {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if !slices.ContainsFunc(frames, func(f string) bool { return !strings.Contains(g, f) }) {
				return true
			}
		}
		return false
	})
}

// A writer waiting for room in a full send buffer does not hold the turn:
// the reader of the same socket still gets what the peer sends.
func TestTurnConnFullSendBufferDoesNotBlockReads(t *testing.T) {
	a, b := turnPair(t)
	big := make([]byte, 32<<20) // far more than the kernel buffers hold
	written := make(chan error, 1)
	go func() {
		_, err := a.Write(big) // waits until b reads
		written <- err
	}()
	waitParked(t, "(*turnConn).Write", "waitWrite")
	if _, err := b.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		p := make([]byte, 4)
		_, err := io.ReadFull(a, p)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(p)
	}()
	if s := wait(t, got, "a's read while its write is blocked"); s != "ping" {
		t.Fatalf("a read %q, want ping", s)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(b, int64(len(big))))
	if err != nil || n != int64(len(big)) {
		t.Fatalf("b drained %d bytes: %v", n, err)
	}
	if err := wait(t, written, "a's write"); err != nil {
		t.Fatal(err)
	}
}

// A reader waiting for data does not hold the turn either: a write on the
// same socket goes out (conn's reader spends most of its time so).
func TestTurnConnWaitingReaderDoesNotBlockWrites(t *testing.T) {
	a, b := turnPair(t)
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(a, make([]byte, 1))
		read <- err
	}()
	waitParked(t, "(*turnConn).Read", "waitRead")
	written := make(chan error, 1)
	go func() {
		_, err := a.Write([]byte("pong"))
		written <- err
	}()
	if err := wait(t, written, "a's write while its reader waits"); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4)
	if _, err := io.ReadFull(b, p); err != nil || string(p) != "pong" {
		t.Fatalf("b read %q, %v; want pong", p, err)
	}
	b.Write([]byte("x"))
	if err := wait(t, read, "a's read"); err != nil {
		t.Fatal(err)
	}
}

// Deadlines reached while a read or a write waits in the poller fail it
// as they would on a plain TCPConn (a write reports what it wrote), and
// the connection stays usable.
func TestTurnConnDeadlineWhileWaiting(t *testing.T) {
	a, b := turnPair(t)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := a.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})
	b.Write([]byte("x"))
	p := make([]byte, 1)
	if _, err := io.ReadFull(a, p); err != nil || p[0] != 'x' {
		t.Fatalf("read after the timeout: %q, %v", p, err)
	}
	a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := a.Write(make([]byte, 32<<20)) // b does not read
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 32<<20 {
		t.Fatalf("write past its deadline: n=%d, %v; want a partial write and a timeout", n, err)
	}
}

// Closing wakes a writer waiting for room and a reader waiting for data
// (conn.close does this while its writer and reader wait).
func TestTurnConnCloseWakesWaiters(t *testing.T) {
	a, _ := turnPair(t)
	werr, rerr := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := a.Write(make([]byte, 32<<20))
		werr <- err
	}()
	go func() {
		_, err := a.Read(make([]byte, 1))
		rerr <- err
	}()
	waitParked(t, "(*turnConn).Write", "waitWrite")
	waitParked(t, "(*turnConn).Read", "waitRead")
	a.Close()
	if err := wait(t, werr, "the waiting write"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write: %v, want net.ErrClosed", err)
	}
	if err := wait(t, rerr, "the waiting read"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read: %v, want net.ErrClosed", err)
	}
}

// A reset by the peer comes back wrapped as net.TCPConn wraps it.
func TestTurnConnResetIsAnOpError(t *testing.T) {
	a, b := turnPair(t)
	b.(*turnConn).Conn.(*net.TCPConn).SetLinger(0) // close sends a reset
	b.Close()
	_, err := a.Read(make([]byte, 1))
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after a reset: %T %v, want a *net.OpError wrapping ECONNRESET", err, err)
	}
}

func TestTurnConnEOFDeadlineAndClose(t *testing.T) {
	a, b := turnPair(t)
	// A deadline in the past fails a read at once, with the usual error.
	a.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})

	// The peer closing its end is io.EOF after the last bytes.
	b.Write([]byte("bye"))
	b.(*turnConn).Conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(a)
	if err != nil || string(got) != "bye" {
		t.Fatalf("ReadAll = %q, %v; want \"bye\", nil", got, err)
	}

	// A closed connection refuses both.
	a.Close()
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed connection: %v, want net.ErrClosed", err)
	}
}

// A wrapper keeps its own Read and Write, even one that embeds a TCPConn.
type wrappedTCP struct{ *net.TCPConn }

func TestTakeTurnsLeavesOtherConnsAlone(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if takeTurns(p) != p {
		t.Fatal("takeTurns wrapped a net.Pipe")
	}
	a, _ := turnPair(t)
	w := wrappedTCP{a.(*turnConn).Conn.(*net.TCPConn)}
	if takeTurns(w) != net.Conn(w) {
		t.Fatal("takeTurns wrapped a wrapper of a TCPConn")
	}
}
