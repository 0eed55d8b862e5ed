//go:build unix

package operation

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
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
	for {
		c.mu.Lock()
		n, err := syscall.Read(int(fd), c.rbuf)
		c.mu.Unlock()
		switch {
		case err == syscall.EINTR:
			continue
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
