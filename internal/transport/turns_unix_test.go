//go:build unix

package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/spi"
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

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	return testkit.Recv(t, ch, what)
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
		_, err := a.Write(big) // waits until b reads
		written <- err
	}()
	testkit.WaitParked(t, "(*turnConn).Write", "waitWrite")
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
	testkit.WaitParked(t, "(*turnConn).Read", "waitRead")
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
	testkit.WaitParked(t, "(*turnConn).Write", "waitWrite")
	testkit.WaitParked(t, "(*turnConn).Read", "waitRead")
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

// frameOf returns the frame carrying body.
func frameOf(body []byte) []byte {
	return append(binary.LittleEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// frameSink runs c's readFrames with pre in the background: each body
// handled is sent (copied) on bodies, after hold (when not nil) lets it
// go; readFrames' result is sent on done.
type frameSink struct {
	bodies chan []byte
	hold   chan struct{}
	done   chan error
}

func readFramesInto(c net.Conn, pre []byte, hold chan struct{}) *frameSink {
	k := &frameSink{bodies: make(chan []byte, 1024), hold: hold, done: make(chan error, 1)}
	go func() {
		k.done <- c.(*turnConn).readFrames(pre, func(body []byte, _ bool) error {
			if k.hold != nil {
				<-k.hold
			}
			k.bodies <- bytes.Clone(body)
			return nil
		})
	}()
	return k
}

// handlingOne starts readFrames on a and has b send it frame "one", and
// returns once the reader is handling "one" (held until hold is closed).
func handlingOne(t *testing.T, a, b net.Conn) (k *frameSink, hold chan struct{}) {
	t.Helper()
	hold = make(chan struct{})
	k = readFramesInto(a, nil, hold)
	b.Write(frameOf([]byte("one")))
	testkit.WaitParked(t, "readFramesInto.func1.1", "[chan receive")
	return k, hold
}

// twoWhileHandlingOne has b send frame "two" while a's reader handles
// "one" (see handlingOne), lets the poller take the event for it, and
// then has the reader go on: both frames must arrive.
func (k *frameSink) twoWhileHandlingOne(t *testing.T, a, b net.Conn, hold chan struct{}) {
	t.Helper()
	b.Write(frameOf([]byte("two")))
	queued(t, a)
	harvest(t)
	close(hold)
	k.expect(t, []byte("one"))
	k.expect(t, []byte("two"))
}

func (k *frameSink) expect(t *testing.T, want []byte) {
	t.Helper()
	if got := wait(t, k.bodies, "a frame"); !bytes.Equal(got, want) {
		t.Fatalf("frame of %d bytes, want %d bytes %q...", len(got), len(want), want[:min(len(want), 8)])
	}
}

// Frames of every size (empty, larger than the read buffer), the first
// ones already read with the hello, the rest in writes that split them
// anywhere: each is handed over whole and in order, and the peer's close
// ends the loop with io.EOF, or io.ErrUnexpectedEOF inside a frame.
func TestReadFramesHandsOverEveryFrame(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	var bodies [][]byte
	var stream []byte
	for i := 0; i < 300; i++ {
		n := r.IntN(300)
		switch i % 50 {
		case 7:
			n = 0
		case 13:
			n = frameBufSize + r.IntN(3*frameBufSize) // grows the buffer
		}
		body := make([]byte, n)
		for j := range body {
			body[j] = byte(r.Uint32())
		}
		bodies = append(bodies, body)
		stream = append(stream, frameOf(body)...)
	}
	for _, partial := range []bool{false, true} {
		a, b := turnPair(t)
		pre := len(frameOf(bodies[0])) + len(frameOf(bodies[1])) + 3 // two and a bit
		k := readFramesInto(a, stream[:pre], nil)
		rest := stream[pre:]
		if partial {
			rest = rest[:len(rest)-1]
		}
		go func() {
			for len(rest) > 0 {
				n := min(len(rest), 1+r.IntN(100<<10))
				if _, err := b.Write(rest[:n]); err != nil {
					return
				}
				rest = rest[n:]
			}
			b.Close()
		}()
		want := bodies
		if partial {
			want = bodies[:len(bodies)-1]
		}
		for _, body := range want {
			k.expect(t, body)
		}
		err := k.end(t, a)
		if wantErr := map[bool]error{false: io.EOF, true: io.ErrUnexpectedEOF}[partial]; err != wantErr {
			t.Fatalf("partial last frame %v: readFrames returned %v, want %v", partial, err, wantErr)
		}
	}
}

// A frame longer than MaxFrameSize is a protocol error, not an allocation.
func TestReadFramesRefusesAnOversizedFrame(t *testing.T) {
	a, b := turnPair(t)
	k := readFramesInto(a, nil, nil)
	b.Write(binary.LittleEndian.AppendUint32(nil, MaxFrameSize+1))
	if err := wait(t, k.done, "readFrames"); !errors.Is(err, spi.ErrProtocol) {
		t.Fatalf("readFrames returned %v, want spi.ErrProtocol", err)
	}
}

// After a short read the reader waits for the poller without reading
// again. Bytes that arrive while it handles a frame, and whose event the
// poller takes before the wait begins, still end the wait: a new
// RawConn.Read would have forgotten that event, the same one does not.
func TestReadFramesKeepsAnEventTakenWhileHandling(t *testing.T) {
	a, b := turnPair(t)
	tc := a.(*turnConn)
	k, hold := handlingOne(t, a, b)
	k.twoWhileHandlingOne(t, a, b, hold)
	if tc.skips.Load() == 0 {
		t.Fatal("no read was skipped after the short one")
	}
}

// A wait after a short read that the poller will not end ends at the
// second poke; the reader reads for real, waits again with no deadline
// left behind, and takes the next frame.
func TestReadFramesPokeEndsAWaitWithoutAnError(t *testing.T) {
	a, b := turnPair(t)
	tc := a.(*turnConn)
	k := readFramesInto(a, nil, nil)
	// Written once the reader waits on an empty socket, so that the
	// frame's event is the one that ends that wait. Written before, its
	// event may reach the poller after the reader read the frame and end
	// the wait after the short read at once (a wake-up with nothing to
	// read, then a wait after EAGAIN that the pokes leave alone).
	testkit.WaitParked(t, "readFrames", "waitRead")
	b.Write(frameOf([]byte("one")))
	k.expect(t, []byte("one"))
	testkit.Eventually(t, tc.skipping.Load)
	testkit.WaitParked(t, "readFrames", "waitRead")
	tc.pokeIfStuck() // notes the wait
	if tc.pokedNow() {
		t.Fatal("the first poke set a deadline")
	}
	tc.pokeIfStuck()
	testkit.Eventually(t, func() bool { return !tc.skipping.Load() && !tc.pokedNow() })
	testkit.WaitParked(t, "readFrames", "waitRead")
	select {
	case err := <-k.done:
		t.Fatalf("readFrames returned %v after a poke", err)
	default:
	}
	b.Write(frameOf([]byte("two")))
	k.expect(t, []byte("two"))
}

// A poke that lands while the reader is busy (the wait it aimed at is
// over) makes the next wait fail at once; the reader clears it and reads
// on.
func TestReadFramesStalePokeIsHarmless(t *testing.T) {
	a, b := turnPair(t)
	tc := a.(*turnConn)
	k, hold := handlingOne(t, a, b)
	tc.pokeMu.Lock()
	tc.poked = true
	tc.Conn.SetReadDeadline(time.Unix(1, 0))
	tc.pokeMu.Unlock()
	k.twoWhileHandlingOne(t, a, b, hold)
	b.Write(frameOf([]byte("three")))
	k.expect(t, []byte("three"))
}

// A close that comes right behind the last frame is seen: at once when
// the poller reports it apart, else when the clock's pokes end the wait
// that its shared event left without a wake-up.
func TestReadFramesSeesACloseBehindTheLastFrame(t *testing.T) {
	for i := 0; i < 20; i++ {
		a, b := turnPair(t)
		k := readFramesInto(a, nil, nil)
		testkit.WaitParked(t, "readFrames", "waitRead")
		b.Write(frameOf([]byte("last")))
		b.(*turnConn).Conn.(*net.TCPConn).CloseWrite()
		k.expect(t, []byte("last"))
		if err := k.end(t, a); err != io.EOF {
			t.Fatalf("readFrames returned %v, want io.EOF", err)
		}
	}
}

// end returns what readFrames on c returned, poking c as the service's
// clock would meanwhile: a close that came with the last frame is seen
// only so (see readFrames).
func (k *frameSink) end(t *testing.T, c net.Conn) error {
	t.Helper()
	var err error
	testkit.Eventually(t, func() bool {
		select {
		case err = <-k.done:
			return true
		default:
			c.(*turnConn).pokeIfStuck()
			return false
		}
	})
	return err
}

func (c *turnConn) pokedNow() bool {
	c.pokeMu.Lock()
	defer c.pokeMu.Unlock()
	return c.poked
}

// queued waits until the kernel holds bytes for c to read (a peek the
// runtime's poller does not see): the socket's wake-up for them has run.
func queued(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(*turnConn).Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var p [1]byte
	testkit.Eventually(t, func() bool {
		n := 0
		rc.Control(func(fd uintptr) {
			n, _, _ = syscall.Recvfrom(int(fd), p[:], syscall.MSG_PEEK) // the socket is non-blocking
		})
		return n > 0
	})
}

// harvest returns once the runtime's poller has taken every event pending
// before the call: it wakes a reader parked in the poller, whose event
// queues behind them, and waits for it.
func harvest(t *testing.T) {
	t.Helper()
	x, y := turnPair(t)
	got := make(chan error, 1)
	go func() {
		_, err := y.Read(make([]byte, 1))
		got <- err
	}()
	testkit.WaitParked(t, "harvest.func1", "waitRead")
	x.Write([]byte{1})
	if err := wait(t, got, "the harvesting reader"); err != nil {
		t.Fatal(err)
	}
}

// The service's clock pokes the connections that read frames themselves.
type countingReader struct {
	net.Conn
	pokes atomic.Int32
}

func (c *countingReader) readFrames([]byte, func([]byte, bool) error) error { return io.EOF }
func (c *countingReader) pokeIfStuck()                                      { c.pokes.Add(1) }
func (c *countingReader) bodyOverdue(uint64) bool                           { return false }

// The stream's Tick pokes the connections that read frames themselves.
func TestTickPokesFrameReaders(t *testing.T) {
	s := NewStream(Config{Handler: nopHandler{}})
	x, y := net.Pipe()
	defer y.Close()
	nc := &countingReader{Conn: x}
	c, _ := s.open(nc, Hello{ID: "q"})
	if c == nil {
		t.Fatal("open refused the connection")
	}
	defer c.Close(nil)
	s.Tick()
	s.Tick()
	if n := nc.pokes.Load(); n != 2 {
		t.Fatalf("%d pokes after two ticks", n)
	}
}

// A frame whose executor queue is full is handled again off the socket,
// with waiting allowed, and the frames behind it follow in order; the
// socket is not held meanwhile, so Close does not wait for the queue.
func TestReadFramesWaitsForRoomOffTheSocket(t *testing.T) {
	a, b := turnPair(t)
	room := make(chan struct{})
	var got [][]byte
	var waited []bool
	done := make(chan error, 1)
	go func() {
		full := true
		done <- a.(*turnConn).readFrames(nil, func(body []byte, wait bool) error {
			if string(body) == "full" && full {
				if !wait {
					return ErrWouldWait
				}
				<-room // the queue makes room
				full = false
			}
			got, waited = append(got, bytes.Clone(body)), append(waited, wait)
			return nil
		})
	}()
	b.Write(append(append(frameOf([]byte("one")), frameOf([]byte("full"))...), frameOf([]byte("two"))...))
	testkit.WaitParked(t, "TestReadFramesWaitsForRoomOffTheSocket.func1.1", "[chan receive")
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	if err := wait(t, closed, "Close while a frame waits for room"); err != nil {
		t.Fatal(err)
	}
	close(room)
	if err := wait(t, done, "readFrames"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("readFrames returned %v, want net.ErrClosed", err)
	}
	if len(got) != 2 || string(got[0]) != "one" || string(got[1]) != "full" || waited[0] || !waited[1] {
		t.Fatalf("handled %q (wait %v); want one, then full with waiting allowed, then nothing after Close", got, waited)
	}
}

// Close stops readFrames after the frame at hand, though more frames are
// buffered, and then returns (it waits for that frame only).
func TestReadFramesStopsAtClose(t *testing.T) {
	a, b := turnPair(t)
	hold := make(chan struct{})
	k := readFramesInto(a, nil, hold)
	b.Write(append(frameOf([]byte("one")), frameOf([]byte("two"))...))
	testkit.WaitParked(t, "readFramesInto.func1.1", "[chan receive")
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	testkit.Eventually(t, a.(*turnConn).closed.Load)
	close(hold)
	if err := wait(t, closed, "Close"); err != nil {
		t.Fatal(err)
	}
	k.expect(t, []byte("one"))
	if err := wait(t, k.done, "readFrames"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("readFrames returned %v, want net.ErrClosed", err)
	}
	if len(k.bodies) != 0 {
		t.Fatalf("%d frames handled after Close", len(k.bodies))
	}
}

// After a frame was handled off the socket (its queue was full), the
// reader reads before it waits, though its last read was short: the new
// RawConn.Read forgot the event of bytes that came meanwhile.
func TestReadFramesReadsAfterWaitingForRoom(t *testing.T) {
	a, b := turnPair(t)
	room := make(chan struct{})
	bodies := make(chan string, 8)
	go a.(*turnConn).readFrames(nil, func(body []byte, wait bool) error {
		if string(body) == "full" {
			if !wait {
				return ErrWouldWait
			}
			<-room
		}
		bodies <- string(body)
		return nil
	})
	b.Write(append(frameOf([]byte("one")), frameOf([]byte("full"))...))
	testkit.WaitParked(t, "TestReadFramesReadsAfterWaitingForRoom.func1", "[chan receive")
	b.Write(frameOf([]byte("two")))
	queued(t, a)
	harvest(t)
	close(room)
	for _, want := range []string{"one", "full", "two"} {
		if got := wait(t, bodies, want); got != want {
			t.Fatalf("handled %q, want %q", got, want)
		}
	}
}

// A buffer grown for a frame larger than the usual one is kept while that
// frame arrives in small pieces, and given up after it.
func TestReadFramesKeepsAGrownBufferForItsFrame(t *testing.T) {
	if !fitsSmall(nil) || !fitsSmall(frameOf(make([]byte, frameBufSize-4))) || fitsSmall(frameOf(make([]byte, frameBufSize-3))[:4]) {
		t.Fatal("fitsSmall misjudges a frame's size")
	}
	a, b := turnPair(t)
	k := readFramesInto(a, nil, nil)
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	f := append(frameOf(big), frameOf([]byte("after"))...)
	go func() {
		for len(f) > 0 { // pieces smaller than the usual buffer
			n := min(len(f), 1000)
			b.Write(f[:n])
			f = f[n:]
		}
	}()
	k.expect(t, big)
	k.expect(t, []byte("after"))
}

// The frame length is converted to int before it is
// checked; where int has 32 bits a length of 2 GiB or more is negative,
// passes the MaxFrameSize check and slicing the body panics. readFrame
// compares the uint32.
func TestReadFramesRefusesA2GiBLength(t *testing.T) {
	a, b := turnPair(t)
	k := readFramesInto(a, nil, nil)
	b.Write(binary.LittleEndian.AppendUint32(nil, 1<<31))
	if err := wait(t, k.done, "readFrames"); !errors.Is(err, spi.ErrProtocol) {
		t.Fatalf("readFrames returned %v, want spi.ErrProtocol", err)
	}
}
