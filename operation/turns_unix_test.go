//go:build unix

package operation

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
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

// A writer waiting for room in a full send buffer does not hold the turn:
// the reader of the same socket still gets what the peer sends.
func TestTurnConnFullSendBufferDoesNotBlockReads(t *testing.T) {
	a, b := turnPair(t)
	big := make([]byte, 32<<20) // far more than the kernel buffers hold
	written := make(chan error, 1)
	go func() {
		_, err := a.Write(big) // blocks until b reads
		written <- err
	}()
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
	select {
	case err := <-written:
		t.Fatalf("a's 32 MiB write finished before b read anything: %v", err)
	default:
	}
	n, err := io.Copy(io.Discard, io.LimitReader(b, int64(len(big))))
	if err != nil || n != int64(len(big)) {
		t.Fatalf("b drained %d bytes: %v", n, err)
	}
	if err := wait(t, written, "a's write"); err != nil {
		t.Fatal(err)
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

	// Closing our end wakes a read blocked on it.
	c, _ := turnPair(t)
	failed := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		failed <- err
	}()
	c.Close()
	if err := wait(t, failed, "the blocked read to fail"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed connection: %v, want net.ErrClosed", err)
	}
}

func TestTakeTurnsLeavesOtherConnsAlone(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if takeTurns(p) != p {
		t.Fatal("takeTurns wrapped a connection without a file descriptor")
	}
}
