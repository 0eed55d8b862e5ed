//go:build unix

package transport

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/partita-go/partita/spi"
)

// turnConn is a TCP connection whose read and write syscalls take turns.
//
// Linux's TCP holds a socket's lock for the whole of a send or a receive.
// On loopback a send also runs the receiving side of the stack inline,
// still holding the sender's lock, for several microseconds. A member's
// reader and writer use the same socket, so a read issued during a write
// used to sleep in the kernel until the write was done. Its thread kept its
// Go P while it slept, so nothing ran on that core: the 64-caller bench
// spent 11 to 16 % of the CPU idle, and 96 % of the switches to the idle
// task were readers and writers waiting for this lock
// (docs/performance.md, "Reads and writes take turns").
//
// Here a Go mutex taken around each syscall does the waiting instead: a
// goroutine that finds the socket busy parks, and its P runs other
// goroutines. The mutex is held only for the syscall itself, never while
// waiting for data or for room in the send buffer (the runtime's poller
// does that), so a full send buffer cannot block the reader.
//
// It supports one reader and one writer at a time, which is how conn uses
// its socket: the per-call state lives in the struct so that the syscall
// callbacks are bound once and nothing is allocated per call.
type turnConn struct {
	net.Conn
	rc syscall.RawConn
	mu sync.Mutex // held for one read or write syscall

	rbuf   []byte
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	wbuf    []byte
	wn      int
	werr    error
	writeFn func(fd uintptr) bool

	closed atomic.Bool // Close was called: readFrames stops

	// readFrames' wait after a short read, for pokeIfStuck.
	skipping atomic.Bool   // waiting without having seen EAGAIN
	skips    atomic.Uint64 // such waits begun, ever
	pokeMu   sync.Mutex
	poked    bool   // a deadline in the past was set to end the wait
	pokeSeen uint64 // skips at the previous poke

	// For bodyOverdue: partial is 0 while no frame is partly received,
	// else a number that readFrames changes for each new such frame. The
	// clock (one goroutine) has seen bodySeen for bodyAge ticks.
	partial  atomic.Uint64
	bodySeen uint64
	bodyAge  uint64
}

// takeTurns wraps a *net.TCPConn. Any other connection is returned as it
// is: a wrapper (a test's fault-injecting one, or one that has buffered
// bytes) must keep its own Read and Write, even if it embeds a TCPConn
// and so exposes the descriptor.
func takeTurns(nc net.Conn) net.Conn {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nc
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nc
	}
	c := &turnConn{Conn: nc, rc: rc}
	c.readFn, c.writeFn = c.read, c.write
	return c
}

// read is RawConn.Read's callback: false asks the poller to wait until the
// socket is readable and call again.
func (c *turnConn) read(fd uintptr) bool {
	n, err := c.sysRead(fd, c.rbuf)
	switch {
	case err == syscall.EAGAIN:
		return false
	case err != nil:
		c.rerr = err
	case n == 0:
		c.rerr = io.EOF
	default:
		c.rn = n
	}
	return true
}

// sysRead reads once into p, taking its turn, and again if interrupted.
func (c *turnConn) sysRead(fd uintptr, p []byte) (int, error) {
	for {
		c.mu.Lock()
		n, err := syscall.Read(int(fd), p)
		c.mu.Unlock()
		if err != syscall.EINTR {
			return n, err
		}
	}
}

func (c *turnConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.readFn) // closed or past the deadline
	c.rbuf = nil
	if err != nil {
		return 0, err
	}
	return c.rn, c.opError("read", c.rerr)
}

// opError wraps a syscall's error as net.TCPConn would (io.EOF stays bare).
func (c *turnConn) opError(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, err)}
}

// write is RawConn.Write's callback: it writes until p is gone, returning
// false to wait for room in the send buffer.
func (c *turnConn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		c.mu.Lock()
		n, err := syscall.Write(int(fd), c.wbuf[c.wn:])
		c.mu.Unlock()
		if n > 0 {
			c.wn += n
			continue
		}
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case nil:
			err = io.ErrShortWrite // a write of 0 bytes without an error
		}
		c.werr = err
		return true
	}
	return true
}

func (c *turnConn) Write(p []byte) (int, error) {
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.writeFn)
	n := c.wn
	c.wbuf = nil
	if err == nil {
		err = c.opError("write", c.werr)
	}
	return n, err
}

// frameBufSize is readFrames' buffer: as many bytes as one read takes.
const frameBufSize = 64 << 10

// readFrames implements frameReader. A read that returns less than it
// asked for has emptied the socket's receive queue, so the next read would
// fail with EAGAIN (half of all reads at 64 callers did). Instead, once the
// frames are handled, the reader waits for the poller at once.
//
// That is safe only inside one RawConn.Read: the runtime resets the poll
// descriptor's readiness when a RawConn.Read begins, so readiness seen
// between two of them is forgotten, and a wait first in the next one could
// sleep with data in the socket. Within one call nothing is forgotten, and
// the poller is edge triggered: data that arrives after the short read
// raises a new event. So the frames are handled inside the read callback.
//
// The one thing such a wait can miss is a close or a reset that reached
// the socket with the last data and was reported by the same event (the
// read stops short at it, and nothing arrives after). pokeIfStuck, called
// on every tick of the service's coarse clock, ends a wait that has
// outlasted a whole tick with a read deadline in the past, and the reader
// then reads for real: such a close is noticed a tick or two late, never
// missed.
//
// A frame larger than the buffer does not get a buffer of its size when
// its length is read: the buffer doubles only when the frame's bytes have
// filled it (growFrameBuf), so a peer that announces 16 MiB and sends
// nothing costs the usual 64 KiB, and one that sends k bytes of it at most
// 2k. A grown buffer is given up once what is left fits the usual one.
//
// A frame partly received is timed by the clock, not by a deadline per
// frame: readFrames notes in partial when a read leaves a frame begun since
// the last note (a comparison per read otherwise), and bodyOverdue, called
// on every tick, counts the ticks for which the same frame stays partial.
func (c *turnConn) readFrames(pre []byte, handle func(body []byte, wait bool) error) error {
	buf := make([]byte, max(frameBufSize, len(pre)))
	start, end := 0, copy(buf, pre)
	skip := false       // the last read was short: wait before the next
	later := false      // the frame at start waits for room: see handle
	inFrame := false    // partial is not 0
	var partials uint64 // frames noted in partial
	var ferr error
	f := func(fd uintptr) bool {
		if c.skipping.Load() { // the wait is over
			c.skipping.Store(false)
		}
		for {
			for end-start >= 4 {
				n32 := binary.LittleEndian.Uint32(buf[start:])
				if n32 > MaxFrameSize {
					ferr = fmt.Errorf("%w: frame length %d exceeds the %d-byte limit", spi.ErrProtocol, n32, MaxFrameSize)
					return true
				}
				n := int(n32)
				if end-start-4 < n {
					break // the buffer grows below, as the body arrives
				}
				if ferr = handle(buf[start+4:start+4+n:start+4+n], false); ferr == ErrWouldWait {
					ferr, later = nil, true
					return true // handled again below, off the socket
				} else if ferr != nil {
					return true
				}
				start += 4 + n
				if c.closed.Load() {
					// Close waits for this call to return: handle no
					// more, even what is buffered.
					ferr = net.ErrClosed
					return true
				}
			}
			// A frame partly received is timed by the clock (bodyOverdue):
			// note a new one (begun since the last note, as frames were
			// handled or none was partly here) and the end of one.
			if end > start {
				if start > 0 || !inFrame {
					partials++
					c.partial.Store(partials)
					inFrame = true
				}
			} else if inFrame {
				c.partial.Store(0)
				inFrame = false
			}
			// What is left of a partial frame goes to the front; a buffer
			// grown for a large frame is not kept for the small ones after.
			switch {
			case len(buf) > frameBufSize && fitsSmall(buf[start:end]):
				small := make([]byte, frameBufSize)
				buf, start, end = small, 0, copy(small, buf[start:end])
			case start > 0:
				end = copy(buf, buf[start:end])
				start = 0
			}
			if end == len(buf) {
				// A frame larger than the buffer, which is full of it: grow
				// by doubling, never past the frame, so that a peer that
				// announces a large frame costs memory only as it sends it.
				buf = growFrameBuf(buf, end)
			}
			if skip {
				skip = false
				c.skips.Add(1)
				c.skipping.Store(true)
				return false
			}
			m, err := c.sysRead(fd, buf[end:])
			switch {
			case err == syscall.EAGAIN:
				return false
			case err != nil:
				ferr = c.opError("read", err)
				return true
			case m == 0:
				ferr = io.EOF
				if end > 0 {
					ferr = io.ErrUnexpectedEOF
				}
				return true
			}
			skip = m < len(buf)-end
			end += m
		}
	}
	for {
		err := c.rc.Read(f) // closed or poked
		if err == nil && later {
			// Wait for room in the executor's queue without holding the
			// socket (pushing back on the sender through TCP, as before),
			// then read before waiting: the next call forgot readiness.
			later, skip = false, false
			if inFrame { // this frame is whole: its wait is not the peer's
				c.partial.Store(0)
				inFrame = false
			}
			n := int(binary.LittleEndian.Uint32(buf[start:]))
			if err := handle(buf[start+4:start+4+n:start+4+n], true); err != nil {
				return err
			}
			start += 4 + n
			continue
		}
		if err == nil {
			return ferr
		}
		if !c.unpoke() {
			return err
		}
		// skip is false (every wait clears it): the next call reads before
		// it waits, as it must, having forgotten any readiness.
	}
}

// Close closes the connection. A readFrames that is handling frames stops
// after the frame at hand (the descriptor's Close waits for it).
func (c *turnConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// growFrameBuf returns a buffer twice as large as buf (at most as large as
// the frame at its front, whose length has been read) holding buf[:end].
func growFrameBuf(buf []byte, end int) []byte {
	need := 4 + int(binary.LittleEndian.Uint32(buf))
	nb := make([]byte, min(need, 2*len(buf)))
	copy(nb, buf[:end])
	return nb
}

// fitsSmall reports whether the partial frame p fits in readFrames' usual
// buffer (when its length is not known yet, it is assumed to).
func fitsSmall(p []byte) bool {
	return len(p) < 4 || 4+int64(binary.LittleEndian.Uint32(p)) <= frameBufSize
}

// pokeIfStuck ends readFrames' wait after a short read if it has lasted
// since the previous call (see readFrames).
func (c *turnConn) pokeIfStuck() {
	if !c.skipping.Load() {
		return
	}
	n := c.skips.Load()
	c.pokeMu.Lock()
	defer c.pokeMu.Unlock()
	if n != c.pokeSeen || c.poked {
		c.pokeSeen = n
		return
	}
	c.poked = true
	c.Conn.SetReadDeadline(time.Unix(1, 0))
}

// bodyOverdue implements frameReader: a frame's first bytes were read
// more than ticks calls ago and it is not whole yet (however much of it
// arrives meanwhile). It is called by the clock's goroutine only.
func (c *turnConn) bodyOverdue(ticks uint64) bool {
	p := c.partial.Load()
	if p == 0 || p != c.bodySeen {
		c.bodySeen, c.bodyAge = p, 0
		return false
	}
	c.bodyAge++
	return c.bodyAge > ticks
}

// unpoke clears a poke's deadline and reports whether there was one.
func (c *turnConn) unpoke() bool {
	c.pokeMu.Lock()
	defer c.pokeMu.Unlock()
	if !c.poked {
		return false
	}
	c.poked = false
	c.Conn.SetReadDeadline(time.Time{})
	return true
}
