package operation

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/spi"
)

// call is one invocation attempt waiting for its answer.
type call struct {
	op   spi.Operation
	resp any
	err  error
	done chan struct{}
	// then, when set, is told the outcome instead of done (backup acks);
	// it runs on the goroutine that completes the call.
	then acker
	// A caller's call (then nil): state is callWaiting until complete
	// (callDelivered) or the caller gives up (callAbandoned), whichever
	// comes first; a delivery counts the caller in held.runnable until it
	// has taken the answer.
	state atomic.Uint32
	held  *heldWrites // &held; tests use their own
}

const (
	callWaiting uint32 = iota
	callDelivered
	callAbandoned
)

// acker receives the outcome of a call that nobody waits on.
type acker interface{ acked(err error) }

// calls recycles calls (and their channels) whose answer was received.
var calls = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func newCall(op spi.Operation) *call {
	c := calls.Get().(*call)
	c.op, c.held = op, &held
	c.state.Store(callWaiting)
	return c
}

// complete delivers the answer; it is called exactly once per use (the
// pending map hands a call to one completer).
func (c *call) complete(resp any, err error) {
	if c.then != nil {
		c.then.acked(err)
		return
	}
	c.resp, c.err = resp, err
	if c.state.CompareAndSwap(callWaiting, callDelivered) {
		c.held.runnable.Add(1) // before the caller can take it
	}
	c.done <- struct{}{}
}

// taken is called by the caller once it has the answer delivered to it.
func (c *call) taken() { c.held.resumed() }

// abandon is called by a caller that gives up waiting; false: the answer
// has been delivered (or is being), the caller must take it from done.
func (c *call) abandon() bool { return c.state.CompareAndSwap(callWaiting, callAbandoned) }

// result returns the answer received on done and recycles the call.
func (c *call) result() (any, error) {
	resp, err := c.resp, c.err
	c.op, c.resp, c.err = nil, nil, nil
	calls.Put(c)
	return resp, err
}

// peer is the connection used to reach one member; dialled once, shared
// by every invocation to that member.
type peer struct {
	ready chan struct{} // closed when c or err is set
	c     *conn
	err   error
}

// holds reports whether the peer's dial finished with c.
func (p *peer) holds(c *conn) bool {
	select {
	case <-p.ready:
		return p.c == c
	default:
		return false // still dialling: p.c is not ours to read yet
	}
}

// conn is one member-to-member TCP connection. Both sides may send
// requests and responses on it; one writer goroutine batches frames.
type conn struct {
	s      *Service
	nc     net.Conn
	remote hello // the peer's hello

	mu      sync.Mutex
	out     []byte // frames queued for the writer
	pending map[uint64]*call
	closed  bool
	err     error // why it closed

	rd spi.Reader // reused by the reader goroutine for each frame
	wr spi.Writer // reused under mu to encode frames into out

	wake chan struct{} // cap 1: frames queued
	done chan struct{} // closed when closing
	wg   sync.WaitGroup
}

// handshakeTimeout bounds the hello exchange on a new connection.
const handshakeTimeout = 5 * time.Second

// HandleConn serves a connection accepted on the operation port (after the
// node engine's protocol selector byte). It returns at once; the
// connection's goroutines run until it closes.
func (s *Service) HandleConn(nc net.Conn) {
	if s.closed.Load() {
		nc.Close()
		return
	}
	s.wg.Add(1)
	nc = takeTurns(nc)
	go func() {
		defer s.wg.Done()
		br := bufio.NewReaderSize(nc, 64<<10)
		nc.SetDeadline(time.Now().Add(handshakeTimeout))
		h, err := readHello(br)
		if err == nil {
			err = s.checkHello(h)
		}
		if err != nil {
			s.log.Warn("refusing connection", "remote", nc.RemoteAddr().String(), "error", err)
			nc.Write(appendError(nil, 0, err))
			nc.Close()
			return
		}
		if _, err := nc.Write(s.hello().encode(nil)); err != nil {
			nc.Close()
			return
		}
		nc.SetDeadline(time.Time{})
		c := s.newConn(nc, h)
		if c == nil {
			return
		}
		// Reuse this connection to reach the peer unless we already have one.
		s.mu.Lock()
		if _, ok := s.conns[h.id]; !ok {
			p := &peer{ready: make(chan struct{}), c: c}
			close(p.ready)
			s.conns[h.id] = p
		}
		s.mu.Unlock()
		c.readLoop(br)
	}()
}

func (s *Service) hello() hello {
	return hello{version: ProtocolVersion, cluster: s.cfg.ClusterName, id: s.cfg.LocalID, address: s.cfg.LocalAddress}
}

func (s *Service) checkHello(h hello) error {
	switch {
	case h.version != ProtocolVersion:
		return fmt.Errorf("%w: member %s at %s speaks protocol version %d, this member speaks %d",
			spi.ErrClusterMismatch, h.id, h.address, h.version, ProtocolVersion)
	case h.cluster != s.cfg.ClusterName:
		return fmt.Errorf("%w: member %s at %s belongs to cluster %q, this member to %q",
			spi.ErrClusterMismatch, h.id, h.address, h.cluster, s.cfg.ClusterName)
	}
	return nil
}

// readFrame reads one frame body (after the length) into buf.
func readFrame(br *bufio.Reader, buf []byte) ([]byte, error) {
	return readFrameWithin(br, buf, nil, 0)
}

// readFrameWithin is readFrame with a read deadline on the body, unless
// nc is nil: a body that has not arrived whole within timeout of its
// length fails with errBodyTimeout. (A connection that reads frames itself
// is timed by the clock instead: see frameReader.)
func readFrameWithin(br *bufio.Reader, buf []byte, nc net.Conn, timeout time.Duration) ([]byte, error) {
	lb, err := br.Peek(4) // not a local array: io.ReadFull would move it to the heap
	if err != nil {
		if err == io.EOF && len(lb) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return buf, err
	}
	n := binary.LittleEndian.Uint32(lb)
	br.Discard(4)
	if n > MaxFrameSize {
		return buf, fmt.Errorf("%w: frame length %d exceeds the %d-byte limit", spi.ErrProtocol, n, MaxFrameSize)
	}
	if nc != nil && br.Buffered() < int(n) {
		nc.SetReadDeadline(time.Now().Add(timeout))
		defer nc.SetReadDeadline(time.Time{})
	}
	buf, err = readBody(br, buf, int(n))
	switch {
	case err == io.EOF:
		err = io.ErrUnexpectedEOF
	case errors.Is(err, os.ErrDeadlineExceeded) && nc != nil:
		err = fmt.Errorf("%w: %d of a %d-byte frame received within %v: %w", errBodyTimeout, len(buf), n, timeout, err)
	}
	return buf, err
}

// bodyChunk is the most readBody allocates for a frame ahead of its bytes.
const bodyChunk = 64 << 10

// readBody reads an n-byte frame body into buf. A buffer too small for it
// grows as the body arrives, doubling from bodyChunk, so that a peer that
// announces a large frame and sends little of it costs little memory.
func readBody(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) >= n {
		buf = buf[:n]
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	buf = buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(n, max(2*cap(buf), bodyChunk)))
			buf = nb[:copy(nb, buf)]
		}
		k, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil {
			if err == io.EOF && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
	}
	return buf, nil
}

func readHello(br *bufio.Reader) (hello, error) {
	body, err := readFrame(br, nil)
	if err != nil {
		return hello{}, fmt.Errorf("reading hello: %w", err)
	}
	h, payload, err := parseHeader(body)
	if err != nil {
		return hello{}, err
	}
	switch h.kind {
	case kindHello:
		return decodeHello(payload)
	case kindError:
		return hello{}, decodeError(payload, "peer")
	}
	return hello{}, fmt.Errorf("%w: expected a hello frame, got kind %d", spi.ErrProtocol, h.kind)
}

// dial connects to a member and exchanges hellos.
func (s *Service) dial(ctx context.Context, id, address string) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	nc, err := s.cfg.Dial(dctx, address)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s (%s): %w", spi.ErrMemberLeft, id, address, err)
	}
	nc = takeTurns(nc)
	if dl, ok := dctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if _, err := nc.Write(s.hello().encode(nil)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("%w: hello to %s: %w", spi.ErrMemberLeft, address, err)
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	h, err := readHello(br)
	if err == nil {
		err = s.checkHello(h)
	}
	if err == nil && h.id != id {
		err = fmt.Errorf("%w: %s answered as member %s, expected %s (restarted?)", spi.ErrMemberLeft, address, h.id, id)
	}
	if err != nil {
		nc.Close()
		var re *spi.RemoteError
		if errors.As(err, &re) || errors.Is(err, spi.ErrClusterMismatch) {
			s.log.Error("member refused our connection", "member", id, "address", address, "error", err)
			return nil, err
		}
		return nil, fmt.Errorf("%w: handshake with %s: %w", spi.ErrMemberLeft, address, err)
	}
	nc.SetDeadline(time.Time{})
	c := s.newConn(nc, h)
	if c == nil {
		return nil, spi.ErrShutdown
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c.readLoop(br)
	}()
	return c, nil
}

// connected returns the established connection to member id, or nil.
func (s *Service) connected(id string) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.conns[id]; ok {
		select {
		case <-p.ready:
			return p.c
		default:
		}
	}
	return nil
}

// connTo returns the connection to member id, dialling it once.
func (s *Service) connTo(ctx context.Context, id, address string) (*conn, error) {
	s.mu.Lock()
	p, ok := s.conns[id]
	if !ok {
		p = &peer{ready: make(chan struct{})}
		s.conns[id] = p
		s.mu.Unlock()
		p.c, p.err = s.dial(ctx, id, address)
		close(p.ready)
		if p.err != nil {
			s.dropPeer(id, p)
		}
		return p.c, p.err
	}
	s.mu.Unlock()
	select {
	case <-p.ready:
		return p.c, p.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for a connection to %s: %w", spi.ErrTimeout, address, ctx.Err())
	}
}

func (s *Service) dropPeer(id string, p *peer) {
	s.mu.Lock()
	if s.conns[id] == p {
		delete(s.conns, id)
	}
	s.mu.Unlock()
}

// MemberLeft closes the connections to a member that left the cluster;
// invocations waiting on it fail with ErrMemberLeft and are retried.
func (s *Service) MemberLeft(id string) {
	s.mu.Lock()
	var victims []*conn
	for c := range s.all {
		if c.remote.id == id {
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		c.close(fmt.Errorf("%w: member %s left", spi.ErrMemberLeft, id))
	}
}

func (s *Service) newConn(nc net.Conn, h hello) *conn {
	c := &conn{s: s, nc: nc, remote: h, pending: make(map[uint64]*call),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	s.all[c] = struct{}{}
	s.mu.Unlock()
	c.wg.Add(1)
	go c.writeLoop()
	return c
}

// frameReader is a connection that reads frames itself, and must then be
// poked on every tick of the service's clock (turnConn).
type frameReader interface {
	// readFrames calls handle with the body of each frame, pre's first,
	// until handle or the connection fails; a body is valid only during
	// the call. It calls handle with wait false while it holds the
	// socket (a Close waits for it, so such a handle must neither wait
	// nor close this connection), and again with wait true, having let
	// go, for a frame that returned errWouldWait.
	readFrames(pre []byte, handle func(body []byte, wait bool) error) error
	pokeIfStuck()
	// bodyOverdue reports whether a frame's first bytes were received
	// more than ticks calls ago (the clock's ticks) and it is not whole.
	bodyOverdue(ticks uint64) bool
}

// pokeReaders pokes the connections that read frames themselves (see
// turnConn), and closes those on which a frame has been partly received
// for longer than FrameBodyTimeout.
func (s *Service) pokeReaders() {
	var late []*conn
	s.mu.Lock()
	for c := range s.all {
		if fr, ok := c.nc.(frameReader); ok {
			fr.pokeIfStuck()
			if fr.bodyOverdue(s.bodyTicks) {
				late = append(late, c)
			}
		}
	}
	s.mu.Unlock()
	for _, c := range late {
		err := fmt.Errorf("%w: %s sent part of a frame and not the rest within %v", errBodyTimeout, c.remote.address, s.cfg.FrameBodyTimeout)
		s.log.Warn("closing connection", "remote", c.nc.RemoteAddr().String(), "member", c.remote.id, "reason", err)
		c.close(fmt.Errorf("%w: %w", spi.ErrMemberLeft, err))
	}
}

// errBodyTimeout: a frame was not received whole within FrameBodyTimeout
// of its first bytes.
var errBodyTimeout = errors.New("frame body timeout")

// expireBackups fails the synchronous backups whose ack is overdue
// (syncBackup.deadline): their replica may have taken them and never
// answer, as a replica stuck behind a sync would. Called on each tick.
func (s *Service) expireBackups() {
	now := s.ticks.Load()
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.all))
	for c := range s.all {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	var late []*call
	for _, c := range conns {
		c.mu.Lock()
		for id, cl := range c.pending {
			if b, ok := cl.then.(*syncBackup); ok && now > b.deadline {
				delete(c.pending, id)
				late = append(late, cl)
			}
		}
		c.mu.Unlock()
	}
	for _, cl := range late {
		cl.complete(nil, fmt.Errorf("%w: no acknowledgement", spi.ErrTimeout))
	}
}

// close shuts the connection once, failing its pending calls with err.
func (c *conn) close(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, err
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	close(c.done)
	c.wakeWriter() // it returns on done
	c.nc.Close()
	for _, cl := range pending {
		cl.complete(nil, err)
	}
	s := c.s
	s.mu.Lock()
	delete(s.all, c)
	if p, ok := s.conns[c.remote.id]; ok && p.holds(c) {
		delete(s.conns, c.remote.id)
	}
	s.mu.Unlock()
}

// writeLoop writes whatever frames have been queued, many per syscall.
func (c *conn) writeLoop() {
	defer c.wg.Done()
	var spare []byte
	for {
		<-c.wake // close wakes it too: one channel, no select
		select {
		case <-c.done:
			return
		default:
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
			c.close(fmt.Errorf("%w: write to %s: %w", spi.ErrMemberLeft, c.remote.address, err))
			return
		}
		if cap(buf) > 4<<20 {
			buf = nil // do not pin a burst's buffer forever
		}
		spare = buf
	}
}

// heldWrites holds back the writers' wake-ups for the requests of callers
// while other callers have been handed their answers and not yet run. A
// connection's writer runs as soon as the goroutine that woke it parks
// (the Go scheduler runs a goroutine readied by a channel next), so when
// one reader hands answers to several callers, each of them would
// otherwise wake the writer, park, and have its next request written
// alone: one syscall per request. Held back, the requests of the callers
// woken together leave in one write per connection.
//
// A request is held until the callers that were runnable when it was
// queued have run (as many resumes), or none is left to run, or
// holdLimit requests are held, whichever comes first; a caller that finds
// no other runnable wakes its writer at once.
//
// There is one for the process (held), not one per member: the callers
// of every member in the process share the scheduler's cores, and a
// runnable caller of any of them delays the writers just the same.
//
// Every delivery to a caller is matched by the caller's taken, or its
// abandon fails and it takes the answer anyway (wait), so runnable counts
// callers that are about to run. Should a count ever be left behind, the
// coarse clock's tick releases the writers (one period of delay, never a
// hang).
type heldWrites struct {
	runnable atomic.Int32  // callers handed an answer they have not taken
	resumes  atomic.Uint64 // answers taken, ever
	due      atomic.Uint64 // release when resumes reaches it (0: none held)
	n        atomic.Int32  // requests held since the last release
	listed   atomic.Bool   // conns is not empty
	mu       sync.Mutex
	conns    []*conn // whose writers were not woken
}

// holdLimit bounds the requests held back before the writers are woken.
const holdLimit = 16

var held heldWrites

// resumed counts a caller that has taken its answer.
func (h *heldWrites) resumed() {
	r := h.resumes.Add(1)
	if h.runnable.Add(-1) == 0 || r >= h.due.Load()-1 {
		h.release()
	}
}

// hold records a request queued on c without waking c's writer, unless
// no other caller is about to run; it reports false when the caller must
// wake c itself.
func (h *heldWrites) hold(c *conn) bool {
	k := h.runnable.Load()
	if k <= 0 {
		return false
	}
	h.mu.Lock()
	if !slices.Contains(h.conns, c) {
		h.conns = append(h.conns, c)
	}
	h.listed.Store(true)
	if due := h.resumes.Load() + uint64(k); due < h.due.Load()-1 {
		h.due.Store(due + 1)
	}
	h.mu.Unlock()
	// Checked again after c is listed: a caller whose resumed found no
	// one left, or the callers ahead all run, either saw the list or is
	// seen here.
	if h.n.Add(1) >= holdLimit || h.runnable.Load() == 0 || h.resumes.Load() >= h.due.Load()-1 {
		h.release()
	}
	return true
}

// release wakes the writers held back.
func (h *heldWrites) release() {
	if !h.listed.Load() {
		return
	}
	h.mu.Lock()
	for i, c := range h.conns {
		c.wakeWriter()
		h.conns[i] = nil
	}
	h.conns = h.conns[:0]
	h.listed.Store(false)
	h.n.Store(0)
	h.due.Store(0)
	h.mu.Unlock()
}

// maxQueued bounds the bytes waiting for the writer on one connection.
const maxQueued = 64 << 20

// queue appends one frame produced by fill to the output buffer and wakes
// the writer. fill runs under the connection lock and returns the grown
// buffer or an error (the partial frame is then discarded).
func (c *conn) queue(fill func(buf []byte) ([]byte, error)) error { return c.queueHeld(nil, fill) }

// queueHeld is queue for a caller's request: the writer's wake-up may be
// held back by h (see heldWrites).
func (c *conn) queueHeld(h *heldWrites, fill func(buf []byte) ([]byte, error)) error {
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if len(c.out) > maxQueued {
		c.mu.Unlock()
		return fmt.Errorf("%w: %d bytes queued to %s", spi.ErrOverloaded, maxQueued, c.remote.address)
	}
	mark := len(c.out)
	out, err := c.fill(fill)
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
			h.release() // no caller left to run: nothing to wait for
		}
	}
	return nil
}

func (c *conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// fill runs a frame encoder under c.mu, turning a panic in an operation's
// WriteData into an error so the connection's lock is never left held.
func (c *conn) fill(f func(buf []byte) ([]byte, error)) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = c.out, fmt.Errorf("encoding a frame panicked: %v", r)
		}
	}()
	return f(c.out)
}

// sendRequest registers cl under a new call id and queues the request.
func (c *conn) sendRequest(cl *call, svc *serviceEntry, typeID uint16, pid int, key invKey, retry bool) (uint64, error) {
	id := c.s.nextCall.Add(1)
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.pending[id] = cl
	c.mu.Unlock()
	err := c.queueHeld(&held, func(buf []byte) ([]byte, error) {
		buf, start := beginFrame(buf, kindRequest, id)
		w := &c.wr // fill runs under c.mu
		w.SetBuffer(buf)
		w.WriteUint32(svc.id)
		w.WriteUint16(typeID)
		w.WriteVarint(int64(pid))
		w.WriteUint64(key.Origin)
		w.WriteUvarint(key.Seq)
		w.WriteBool(retry)
		cl.op.WriteData(w)
		buf = w.Bytes()
		return buf, endFrame(buf, start)
	})
	if err != nil {
		if !c.forget(id) {
			// close completed the call already; its answer is waiting.
			return id, nil
		}
		return 0, err
	}
	return id, nil
}

// sendBackup queues a backup frame, registering cl for its ack when cl is
// not nil (a synchronous backup).
func (c *conn) sendBackup(cl *call, t task, typeID uint16, replica int, version int64, callerCall uint64, op spi.Operation) error {
	var id uint64
	if cl != nil {
		id = c.s.nextCall.Add(1)
		c.mu.Lock()
		if c.closed {
			err := c.err
			c.mu.Unlock()
			return err
		}
		c.pending[id] = cl
		c.mu.Unlock()
	}
	var h *heldWrites
	if t.byCaller {
		h = &held
	}
	err := c.queueHeld(h, func(buf []byte) ([]byte, error) {
		buf, start := beginFrame(buf, kindBackup, id)
		w := &c.wr // fill runs under c.mu
		w.SetBuffer(buf)
		w.WriteUint32(t.svc.id)
		w.WriteUint16(typeID)
		w.WriteVarint(int64(t.pid))
		w.WriteUint8(uint8(replica))
		w.WriteUvarint(uint64(version))
		w.WriteUint64(t.key.Origin)
		w.WriteUvarint(t.key.Seq)
		w.WriteBytes(t.resp)
		w.WriteUvarint(callerCall)
		w.WriteString(t.callerID)
		op.WriteData(w)
		buf = w.Bytes()
		return buf, endFrame(buf, start)
	})
	if err != nil && cl != nil && !c.forget(id) {
		return nil // close completed the call already: report it once
	}
	return err
}

// sendAnswer queues a backup's answer to call callID of the member at
// the other end, which it sent to primary (see sendBackups).
func (c *conn) sendAnswer(callID uint64, primary string, resp []byte) error {
	return c.queue(func(buf []byte) ([]byte, error) {
		buf, start := beginFrame(buf, kindAnswer, callID)
		w := &c.wr // fill runs under c.mu
		w.SetBuffer(buf)
		w.WriteString(primary)
		buf = append(w.Bytes(), resp...)
		return buf, endFrame(buf, start)
	})
}

// take removes and returns pending call id (nil if none).
func (c *conn) take(id uint64) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[id]
	delete(c.pending, id)
	return cl
}

// takeAnswerable is take for a backup's forwarded answer: only a caller's
// call of a backed-up operation can be answered so, never a backup's ack
// (which would tell a primary that a backup it has not applied was).
func (c *conn) takeAnswerable(id uint64) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[id]
	if cl == nil || cl.then != nil {
		return nil
	}
	if _, ok := cl.op.(spi.BackupAwareOperation); !ok {
		return nil
	}
	delete(c.pending, id)
	return cl
}

// forget drops a pending call and reports whether it was still pending
// (false: a completer, such as close, already took it).
func (c *conn) forget(id uint64) bool { return c.take(id) != nil }

// sendResponse queues the answer to a request received on this connection.
func (c *conn) sendResponse(callID uint64, op spi.Operation, resp any, err error) {
	if err == nil {
		err = c.queue(func(buf []byte) ([]byte, error) {
			buf, start := beginFrame(buf, kindResponse, callID)
			w := &c.wr // fill runs under c.mu
			w.SetBuffer(buf)
			if codec, ok := op.(spi.ResponseCodec); ok && resp != nil {
				w.WriteUint8(tagCustom)
				codec.WriteResponse(w, resp)
			} else if err := writeValue(w, resp); err != nil {
				return w.Bytes(), err
			}
			buf = w.Bytes()
			return buf, endFrame(buf, start)
		})
		if err == nil || c.isClosed() {
			return
		}
		c.s.log.Error("cannot send response", "remote", c.remote.address, "error", err)
	}
	c.queue(func(buf []byte) ([]byte, error) { return appendError(buf, callID, err), nil })
}

func (c *conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// readLoop reads frames until the connection fails. A frame that breaks the
// protocol closes this connection (logged); other connections are not
// affected.
func (c *conn) readLoop(br *bufio.Reader) {
	var err error
	if fr, ok := c.nc.(frameReader); ok {
		pre, _ := br.Peek(br.Buffered()) // read with the hello
		err = fr.readFrames(pre, c.handleFrame)
	} else {
		var buf []byte
		for {
			buf, err = readFrameWithin(br, buf, c.nc, c.s.cfg.FrameBodyTimeout)
			if err != nil {
				break
			}
			if err = c.handle(buf); err != nil {
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
		if errors.Is(err, spi.ErrProtocol) {
			c.s.log.Error("closing connection after a malformed frame", "remote", c.remote.address, "member", c.remote.id, "error", err)
		} else if errors.Is(err, errBodyTimeout) {
			c.s.log.Warn("closing connection", "remote", c.nc.RemoteAddr().String(), "member", c.remote.id, "reason", err)
		} else {
			c.s.log.Debug("connection closed", "remote", c.remote.address, "error", err)
		}
	}
	c.close(fmt.Errorf("%w: connection to %s lost: %w", spi.ErrMemberLeft, c.remote.address, err))
	c.wg.Wait()
}

func (c *conn) handle(body []byte) error { return c.handleFrame(body, true) }

// errWouldWait: handleFrame was told not to wait, and the frame's
// executor queue is full; nothing was done.
var errWouldWait = errors.New("executor queue full")

// handleFrame handles one frame; unless wait, it returns errWouldWait
// rather than wait for room in an executor's queue (the frame may then be
// handled again, from the start).
func (c *conn) handleFrame(body []byte, wait bool) error {
	h, payload, err := parseHeader(body)
	if err != nil {
		return err
	}
	switch h.kind {
	case kindRequest:
		return c.handleRequest(h.callID, payload, false, wait)
	case kindBackup:
		return c.handleRequest(h.callID, payload, true, wait)
	case kindResponse, kindError:
		c.mu.Lock()
		cl := c.pending[h.callID]
		delete(c.pending, h.callID)
		c.mu.Unlock()
		if cl == nil {
			return nil // the caller gave up
		}
		if h.kind == kindError {
			cl.complete(nil, decodeError(payload, c.remote.address))
			return nil
		}
		codec, _ := cl.op.(spi.ResponseCodec)
		c.rd.Reset(payload)
		v, err := readValue(&c.rd, codec)
		if err != nil {
			err = fmt.Errorf("bad response from %s: %w", c.remote.address, err)
		}
		cl.complete(v, err)
	case kindAnswer:
		c.rd.Reset(payload)
		primary := c.rd.ReadString()
		if err := c.rd.Err(); err != nil {
			return fmt.Errorf("%w: answer frame: %w", spi.ErrProtocol, err)
		}
		// The call is pending on the connection it was sent on: this
		// member's connection to the primary.
		var cl *call
		if pc := c.s.connected(primary); pc != nil {
			cl = pc.takeAnswerable(h.callID)
		}
		if cl == nil {
			return nil // answered by the primary already, or the caller gave up
		}
		c.s.m.backupAnswers.Inc()
		v, err := decodeResponse(&c.rd, cl.op, payload[len(payload)-c.rd.Remaining():])
		if err != nil {
			err = fmt.Errorf("bad answer from %s: %w", c.remote.address, err)
		}
		cl.complete(v, err)
	default:
		return fmt.Errorf("%w: unexpected frame kind %d after hello", spi.ErrProtocol, h.kind)
	}
	return nil
}

func (c *conn) handleRequest(callID uint64, payload []byte, backup, wait bool) error {
	s := c.s
	r := &c.rd
	r.Reset(payload)
	sid, tid, pid := r.ReadUint32(), r.ReadUint16(), r.ReadVarint()
	var replica uint8
	var version, callerCall uint64
	var resp []byte
	var callerID string
	if backup {
		replica, version = r.ReadUint8(), r.ReadUvarint()
	}
	key := invKey{Origin: r.ReadUint64(), Seq: r.ReadUvarint()}
	retry := false
	if backup {
		resp, callerCall, callerID = r.ReadBytes(), r.ReadUvarint(), r.ReadString()
		if r.Err() == nil && (pid < 0 || replica == 0 || replica > 6) {
			fail := fmt.Errorf("%w: backup for partition %d replica %d", spi.ErrProtocol, pid, replica)
			s.log.Warn("rejecting backup", "remote", c.remote.address, "error", fail)
			c.queue(func(buf []byte) ([]byte, error) { return appendError(buf, callID, fail), nil })
			return nil
		}
	} else {
		retry = r.ReadBool()
	}
	fail := func(err error) {
		s.log.Warn("rejecting request", "remote", c.remote.address, "error", err)
		if callID != 0 {
			c.queue(func(buf []byte) ([]byte, error) { return appendError(buf, callID, err), nil })
		}
	}
	if err := r.Err(); err != nil {
		fail(fmt.Errorf("bad request header: %w", err))
		return nil
	}
	svc := s.byID[sid]
	if svc == nil {
		fail(fmt.Errorf("%w: no service with wire id %#x on %s", spi.ErrUnknownService, sid, s.cfg.LocalAddress))
		return nil
	}
	factory := svc.types[tid]
	if factory == nil {
		fail(fmt.Errorf("%w: service %q has no operation type %d", spi.ErrUnknownOperation, svc.name, tid))
		return nil
	}
	if pid < -1 || pid >= int64(s.cfg.PartitionCount) {
		fail(fmt.Errorf("%w: partition %d out of range", spi.ErrProtocol, pid))
		return nil
	}
	op := factory()
	if err := op.ReadData(r); err != nil {
		fail(fmt.Errorf("%w: decoding %T of service %q: %w", spi.ErrProtocol, op, svc.name, err))
		return nil
	}
	if r.Remaining() != 0 {
		fail(fmt.Errorf("%w: %d trailing bytes after %T", spi.ErrProtocol, r.Remaining(), op))
		return nil
	}
	t := task{op: op, svc: svc, pid: int(pid), caller: c.remote.address, conn: c, callID: callID,
		replica: int(replica), version: int64(version), key: key, resp: resp, retry: retry, st: svc.statsByID[tid],
		callerCall: callerCall, callerID: callerID}
	if s.runInline(t, false) {
		return nil
	}
	if !wait {
		if s.tryEnqueue(t) {
			return nil
		}
		return errWouldWait
	}
	// Blocking here pushes back on the sender through TCP.
	if err := s.enqueue(context.Background(), t); err != nil {
		s.finish(t, nil, err)
	}
	return nil
}
