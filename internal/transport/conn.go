package transport

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/partita-go/partita/spi"
)

// Conn is one member-to-member connection. Both sides may send any frame
// on it; one writer goroutine batches the queued frames into as few
// writes as it can, one reader goroutine hands each frame to the
// transport's Handler.
type Conn struct {
	t      *Stream
	nc     net.Conn
	remote Hello // the peer's hello

	// Value is the Handler's state for this connection, set by Opened
	// before any frame is read or sent; read-only after.
	Value any

	mu     sync.Mutex
	out    []byte // frames queued for the writer
	closed bool
	err    error      // why it closed
	wr     spi.Writer // encodes frames into out, under mu

	rd spi.Reader // the reader goroutine's, for each frame

	unknownTicks uint64 // ticks for which the peer was no member (Tick's alone)

	wake chan struct{} // cap 1: frames queued
	done chan struct{} // closed when closing
	wg   sync.WaitGroup
}

// Remote returns the hello the peer sent.
func (c *Conn) Remote() Hello { return c.remote }

// RemoteAddr returns the network address of the other end.
func (c *Conn) RemoteAddr() string { return c.nc.RemoteAddr().String() }

// Done is closed when the connection closes.
func (c *Conn) Done() <-chan struct{} { return c.done }

// IsClosed reports whether the connection has closed.
func (c *Conn) IsClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Close shuts the connection once; the Handler's Closed is told err.
func (c *Conn) Close(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, err
	c.mu.Unlock()
	close(c.done)
	c.wakeWriter() // it returns on done
	c.nc.Close()
	c.t.cfg.Handler.Closed(c, err)
	c.t.forget(c)
}

// maxQueued bounds the bytes waiting for the writer on one connection.
const maxQueued = 64 << 20

// send appends one frame to the output buffer, body writing its payload
// after the header, and wakes the writer (unless h holds it back: see
// HeldWrites). body runs under the connection's lock and must not block;
// on its error (or panic) the partial frame is discarded.
func (c *Conn) send(h *HeldWrites, kind uint8, callID uint64, body func(w *spi.Writer) error) error {
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if len(c.out) > maxQueued {
		c.mu.Unlock()
		return fmt.Errorf("%w: %d bytes queued to %s", spi.ErrOverloaded, maxQueued, c.remote.Address)
	}
	mark := len(c.out)
	out, err := c.fill(kind, callID, body)
	if err != nil {
		c.out = out[:mark]
		c.mu.Unlock()
		return err
	}
	c.out = out
	c.mu.Unlock()
	if h == nil || !h.hold(c) {
		c.wakeWriter()
		if h != nil {
			h.Release() // no caller left to run: nothing to wait for
		}
	}
	return nil
}

// fill encodes one frame into c.out (under c.mu), turning a panic in an
// operation's WriteData into an error so the lock is never left held.
func (c *Conn) fill(kind uint8, callID uint64, body func(w *spi.Writer) error) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = c.out, fmt.Errorf("encoding a frame panicked: %v", r)
		}
	}()
	buf, start := BeginFrame(c.out, kind, callID)
	w := &c.wr
	w.SetBuffer(buf)
	err = body(w)
	buf = w.Bytes()
	w.SetBuffer(nil)
	if err != nil {
		return buf, err
	}
	return buf, EndFrame(buf, start)
}

func (c *Conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes whatever frames have been queued, many per syscall.
func (c *Conn) writeLoop() {
	defer c.wg.Done()
	var spare []byte
	for {
		<-c.wake // close wakes it too: one channel, no select
		select {
		case <-c.done:
			return
		default:
		}
		if !c.thawed() { // paused (Stream.Pause): what is queued waits
			return
		}
		c.mu.Lock()
		buf := c.out
		c.out = spare[:0]
		c.mu.Unlock()
		if len(buf) == 0 {
			spare = buf
			continue
		}
		if _, err := c.nc.Write(buf); err != nil {
			c.Close(fmt.Errorf("%w: write to %s: %w", spi.ErrMemberLeft, c.remote.Address, err))
			return
		}
		if cap(buf) > 4<<20 {
			buf = nil // do not pin a burst's buffer forever
		}
		spare = buf
	}
}

// frameReader is a connection that reads frames itself, and must then be
// poked on every tick (turnConn).
type frameReader interface {
	// readFrames calls handle with the body of each frame, pre's first,
	// until handle or the connection fails; a body is valid only during
	// the call. It calls handle with wait false while it holds the
	// socket (a Close waits for it, so such a handle must neither wait
	// nor close this connection), and again with wait true, having let
	// go, for a frame that returned ErrWouldWait.
	readFrames(pre []byte, handle func(body []byte, wait bool) error) error
	pokeIfStuck()
	// bodyOverdue reports whether a frame's first bytes were received
	// more than ticks calls ago (the clock's ticks) and it is not whole.
	bodyOverdue(ticks uint64) bool
}

// ErrWouldWait is what a Handler's Frame returns, when told not to wait,
// for a frame it cannot take without waiting (its executor's queue is
// full); nothing was done, and the frame is handed again with wait true.
// A paused Stream (Pause) returns it for every frame, before its Handler.
var ErrWouldWait = errors.New("executor queue full")

// handle parses one frame and hands it to the Handler.
func (c *Conn) handle(body []byte, wait bool) error {
	if c.t.gate.Paused() != nil { // Stream.Pause: not before it ends
		if !wait {
			return ErrWouldWait // wait off the socket
		}
		if !c.thawed() {
			return net.ErrClosed
		}
	}
	h, payload, err := ParseHeader(body)
	if err != nil {
		return err
	}
	if h.Kind == KindHello {
		return fmt.Errorf("%w: a second hello", spi.ErrProtocol)
	}
	c.rd.Reset(payload)
	return c.t.cfg.Handler.Frame(c, h, &c.rd, wait)
}

// Handle handles one frame body (after its length) as if c's reader had
// read it; for connections made with Stream.Open.
func (c *Conn) Handle(body []byte) error { return c.handle(body, true) }

// readLoop reads frames until the connection fails. A frame that breaks the
// protocol closes this connection (logged); other connections are not
// affected.
func (c *Conn) readLoop(br *bufio.Reader) {
	var err error
	if fr, ok := c.nc.(frameReader); ok {
		pre, _ := br.Peek(br.Buffered()) // read with the hello
		err = fr.readFrames(pre, c.handle)
	} else {
		var buf []byte
		for {
			buf, err = readFrameWithin(br, buf, c.nc, c.t.cfg.FrameBodyTimeout)
			if err != nil {
				break
			}
			if err = c.Handle(buf); err != nil {
				break
			}
			if cap(buf) > bodyChunk {
				buf = nil // do not keep a large frame's buffer
			}
		}
	}
	select {
	case <-c.done: // closed on purpose
	default:
		switch {
		case errors.Is(err, spi.ErrProtocol):
			c.t.reject(RejectFrame, c.RemoteAddr(), "closing connection after a malformed frame", fmt.Errorf("member %s: %w", c.remote.ID, err))
		case errors.Is(err, errBodyTimeout):
			c.t.reject(RejectSlowFrame, c.RemoteAddr(), "closing connection", fmt.Errorf("member %s: %w", c.remote.ID, err))
		default:
			c.t.log.Debug("connection closed", "remote", c.remote.Address, "error", err)
		}
	}
	c.Close(fmt.Errorf("%w: connection to %s lost: %w", spi.ErrMemberLeft, c.remote.Address, err))
	c.wg.Wait()
}
