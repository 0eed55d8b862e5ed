package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/spi"
)

// Transport carries frames between members. Stream implements it over
// any stream network (TCP, or the in-memory Network of tests); Faults
// wraps one to drop, delay, hold, reorder or cut frames.
//
// All methods may be called on any goroutine. Send and Connected never
// block (a partition executor calls them); Conn may dial.
type Transport interface {
	// Send queues frame f on c, body writing its payload after the
	// header (under c's lock: it must not block). An error means the
	// frame was not queued.
	Send(c *Conn, f Frame, body func(w *spi.Writer) error) error
	// Conn returns the connection to member id at address, dialling it
	// (once, however many ask at the same time) when there is none;
	// ctx bounds the wait.
	Conn(ctx context.Context, id, address string) (*Conn, error)
	// Connected returns the established connection to member id, or nil.
	Connected(id string) *Conn
	// Known reports whether a connection to member id is established or
	// being dialled.
	Known(id string) bool
	// Accept serves a connection accepted from the network (the hello
	// exchange, then frames). It returns at once.
	Accept(nc net.Conn)
	// CloseMember closes the connections to member id with err.
	CloseMember(id string, err error)
	// Each calls f for every open connection (not under a lock).
	Each(f func(c *Conn))
	// Tick is called periodically (Config.TickPeriod): it times frame
	// bodies and wakes stuck readers.
	Tick()
	// Close closes every connection and refuses new ones; Wait then
	// waits for the transport's goroutines.
	Close()
	Wait()
}

// Frame describes a frame for Send. Kind and CallID go into its header;
// Held lets the writer's wake-up wait for other callers (HeldWrites). The
// rest only describes the frame, for a wrapper's fault rules.
type Frame struct {
	Kind   uint8
	CallID uint64
	Held   bool // a frame a caller waits on: see HeldWrites

	Service   string
	Partition int
	Op        spi.Operation
}

// Handler receives what arrives on a Stream's connections: the operation
// service.
type Handler interface {
	// Opened is called once per connection, after the hello exchange and
	// before any frame is read or can be sent: it may set c.Value.
	Opened(c *Conn)
	// Frame handles one frame received on c: its header, and r reading its
	// payload (valid only during the call). It is called on c's reader
	// goroutine, one frame at a time, except for frames a wrapper
	// delivers late from a goroutine of its own (with a reader of their
	// own). When wait is false it must not block: it returns
	// ErrWouldWait, having done nothing, rather than wait for room in a
	// queue, and is called again with wait true. Any other error closes
	// the connection.
	Frame(c *Conn, h Header, r *spi.Reader, wait bool) error
	// Closed is called once when c closes, with why. It must not block.
	Closed(c *Conn, err error)
}

// Config configures a Stream.
type Config struct {
	// Local is this member's hello. A peer whose hello differs in
	// protocol version or cluster name is refused (spi.ErrClusterMismatch).
	Local Hello
	// Dial opens a connection to another member's operation port.
	Dial    func(ctx context.Context, address string) (net.Conn, error)
	Handler Handler
	Logger  *slog.Logger
	// FrameBodyTimeout bounds how long a frame may take to arrive once its
	// first bytes have: a connection that sends part of a frame and not
	// the rest in time is closed (a connection idle between frames is
	// not). 0: 10s.
	FrameBodyTimeout time.Duration
	// TickPeriod is how often Tick is called; 0: 1s.
	TickPeriod time.Duration
	// Member, when set, tells whether a member ID is in the cluster: a
	// connection whose peer it has not known for UnknownPeerGrace is
	// closed (a process that speaks the protocol is not a member for it).
	Member func(id string) bool
	// UnknownPeerGrace: see Member; 0: DefaultUnknownPeerGrace.
	UnknownPeerGrace time.Duration
	// Reject, when set, is told of every connection refused or cut for
	// its input, with a Reject* reason and the peer's network address,
	// instead of the transport logging each one (the node engine counts
	// them and rate-limits its lines per address).
	Reject func(reason, remote string, err error)
	// Reachable, when set, tells whether the member whose operation
	// address (its hello's Address) is address may be reached: a
	// connection to or from one it refuses is closed as it opens, after
	// the hellos, and CloseUnreachable closes the open ones after its
	// answers change. A test facility: it cuts the network between
	// groups of members (nodeengine.WithNetworkFilter).
	Reachable func(address string) bool
}

// Reasons given to Config.Reject.
const (
	RejectHello       = "bad_hello"        // no hello, or not a Partita hello, within HandshakeTimeout
	RejectCluster     = "cluster_mismatch" // a hello of another cluster name or protocol version
	RejectFrame       = "bad_frame"        // a malformed frame after the hello
	RejectSlowFrame   = "slow_frame"       // a frame not received whole within FrameBodyTimeout
	RejectUnknownPeer = "unknown_peer"     // a peer that is not a member, for UnknownPeerGrace
)

// RejectReasons lists the Reject* reasons.
var RejectReasons = []string{RejectHello, RejectCluster, RejectFrame, RejectSlowFrame, RejectUnknownPeer}

// DefaultUnknownPeerGrace is how long a connection may speak for a member
// ID the cluster does not know (Config.Member): long enough for a joining
// member's news to reach every member by gossip.
const DefaultUnknownPeerGrace = 10 * time.Second

// HandshakeTimeout bounds the hello exchange on a new connection.
const HandshakeTimeout = 5 * time.Second

// Stream is the Transport over a stream network. Its connections are
// registered by member ID: one is dialled per member and shared by every
// sender, and an accepted one is used to reach its peer unless there is
// one already.
type Stream struct {
	cfg       Config
	log       *slog.Logger
	bodyTicks uint64 // FrameBodyTimeout in ticks
	peerTicks uint64 // UnknownPeerGrace in ticks
	closed    atomic.Bool
	wg        sync.WaitGroup
	gate      Gate // Pause

	mu    sync.Mutex
	peers map[string]*peer // by member ID: the connection used to reach it
	all   map[*Conn]struct{}
}

var _ Transport = (*Stream)(nil)

// peer is the connection used to reach one member; dialled once, shared
// by every sender to that member.
type peer struct {
	ready chan struct{} // closed when c or err is set
	c     *Conn
	err   error
}

// holds reports whether the peer's dial finished with c.
func (p *peer) holds(c *Conn) bool {
	select {
	case <-p.ready:
		return p.c == c
	default:
		return false // still dialling: p.c is not ours to read yet
	}
}

// NewStream returns a Stream; it dials and accepts until Close.
func NewStream(cfg Config) *Stream {
	if cfg.FrameBodyTimeout <= 0 {
		cfg.FrameBodyTimeout = 10 * time.Second
	}
	if cfg.TickPeriod <= 0 {
		cfg.TickPeriod = time.Second
	}
	if cfg.UnknownPeerGrace <= 0 {
		cfg.UnknownPeerGrace = DefaultUnknownPeerGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = func(ctx context.Context, address string) (net.Conn, error) { return d.DialContext(ctx, "tcp", address) }
	}
	return &Stream{
		cfg:       cfg,
		log:       cfg.Logger,
		bodyTicks: uint64((cfg.FrameBodyTimeout + cfg.TickPeriod - 1) / cfg.TickPeriod),
		peerTicks: uint64((cfg.UnknownPeerGrace + cfg.TickPeriod - 1) / cfg.TickPeriod),
		peers:     make(map[string]*peer),
		all:       make(map[*Conn]struct{}),
	}
}

// Send implements Transport.
func (t *Stream) Send(c *Conn, f Frame, body func(w *spi.Writer) error) error {
	var h *HeldWrites
	if f.Held {
		h = &Callers
	}
	return c.send(h, f.Kind, f.CallID, body)
}

// Accept implements Transport.
func (t *Stream) Accept(nc net.Conn) {
	if t.closed.Load() {
		nc.Close()
		return
	}
	t.wg.Add(1)
	nc = takeTurns(nc)
	go func() {
		defer t.wg.Done()
		br := bufio.NewReaderSize(nc, 64<<10)
		nc.SetDeadline(time.Now().Add(HandshakeTimeout))
		h, err := ReadHello(br)
		if err == nil {
			err = t.cfg.Local.check(h)
		}
		if err != nil {
			reason := RejectHello
			if errors.Is(err, spi.ErrClusterMismatch) {
				reason = RejectCluster
			}
			t.reject(reason, nc.RemoteAddr().String(), "refusing connection", err)
			nc.Write(AppendError(nil, 0, err))
			nc.Close()
			return
		}
		if t.cfg.Reachable != nil && !t.cfg.Reachable(h.Address) {
			nc.Close() // the dialler sees its handshake fail
			return
		}
		if _, err := nc.Write(AppendHello(nil, t.cfg.Local)); err != nil {
			nc.Close()
			return
		}
		nc.SetDeadline(time.Time{})
		c, _ := t.open(nc, h)
		if c == nil {
			return
		}
		t.route(c) // reach the peer through it unless we already can
		c.readLoop(br)
	}()
}

// dial connects to member id and exchanges hellos.
func (t *Stream) dial(ctx context.Context, id, address string) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	nc, err := t.cfg.Dial(dctx, address)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s (%s): %w", spi.ErrMemberLeft, id, address, err)
	}
	nc = takeTurns(nc)
	if dl, ok := dctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if _, err := nc.Write(AppendHello(nil, t.cfg.Local)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("%w: hello to %s: %w", spi.ErrMemberLeft, address, err)
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	h, err := ReadHello(br)
	if err == nil {
		err = t.cfg.Local.check(h)
	}
	if err == nil && h.ID != id {
		err = fmt.Errorf("%w: %s answered as member %s, expected %s (restarted?)", spi.ErrMemberLeft, address, h.ID, id)
	}
	if err != nil {
		nc.Close()
		var re *spi.RemoteError
		if errors.As(err, &re) || errors.Is(err, spi.ErrClusterMismatch) {
			t.log.Error("member refused our connection", "member", id, "address", address, "error", err)
			return nil, err
		}
		return nil, fmt.Errorf("%w: handshake with %s: %w", spi.ErrMemberLeft, address, err)
	}
	nc.SetDeadline(time.Time{})
	c, err := t.open(nc, h)
	if c == nil {
		return nil, err
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		c.readLoop(br)
	}()
	return c, nil
}

// open registers a connection whose hellos were exchanged and starts its
// writer; nil and why (spi.ErrShutdown, or a Reachable that refuses the
// peer) when it closed nc instead.
func (t *Stream) open(nc net.Conn, h Hello) (*Conn, error) {
	c := &Conn{t: t, nc: nc, remote: h, wake: make(chan struct{}, 1), done: make(chan struct{})}
	t.cfg.Handler.Opened(c)
	t.mu.Lock()
	var err error
	switch {
	case t.closed.Load():
		err = spi.ErrShutdown
	case t.cfg.Reachable != nil && !t.cfg.Reachable(h.Address):
		// Under t.mu: CloseUnreachable, which runs after Reachable's
		// answers change, either finds c registered or c sees the change.
		err = unreachable(h.Address)
	}
	if err != nil {
		t.mu.Unlock()
		nc.Close()
		return nil, err
	}
	t.all[c] = struct{}{}
	t.mu.Unlock()
	c.wg.Add(1)
	go c.writeLoop()
	return c, nil
}

// unreachable is the error of a connection to or from address that
// Config.Reachable refuses.
func unreachable(address string) error {
	return fmt.Errorf("%w: network to %s cut (Reachable)", spi.ErrMemberLeft, address)
}

// CloseUnreachable closes the connections to the members Config.Reachable
// now refuses, with spi.ErrMemberLeft on both ends (the calls waiting on
// them fail and are retried); without Reachable it does nothing.
func (t *Stream) CloseUnreachable() {
	if t.cfg.Reachable == nil {
		return
	}
	var victims []*Conn
	t.Each(func(c *Conn) {
		if !t.cfg.Reachable(c.remote.Address) {
			victims = append(victims, c)
		}
	})
	for _, c := range victims {
		c.Close(unreachable(c.remote.Address))
	}
}

// Open registers a connection whose hellos were exchanged elsewhere, as
// the route to its peer unless there is one, and starts its writer but
// no reader: frames reach it through Handle. Tests and fuzzers use it to
// feed frames to a Handler.
func (t *Stream) Open(nc net.Conn, h Hello) (*Conn, error) {
	c, err := t.open(nc, h)
	if c == nil {
		return nil, err
	}
	t.route(c)
	return c, nil
}

// route makes c the connection to its peer unless there is one.
func (t *Stream) route(c *Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.peers[c.remote.ID]; !ok {
		p := &peer{ready: make(chan struct{}), c: c}
		close(p.ready)
		t.peers[c.remote.ID] = p
	}
}

// forget unregisters a closed connection.
func (t *Stream) forget(c *Conn) {
	t.mu.Lock()
	delete(t.all, c)
	if p, ok := t.peers[c.remote.ID]; ok && p.holds(c) {
		delete(t.peers, c.remote.ID)
	}
	t.mu.Unlock()
}

// Connected implements Transport.
func (t *Stream) Connected(id string) *Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		select {
		case <-p.ready:
			return p.c
		default:
		}
	}
	return nil
}

// Known implements Transport.
func (t *Stream) Known(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.peers[id]
	return ok
}

// Conn implements Transport.
func (t *Stream) Conn(ctx context.Context, id, address string) (*Conn, error) {
	t.mu.Lock()
	p, ok := t.peers[id]
	if !ok {
		p = &peer{ready: make(chan struct{})}
		t.peers[id] = p
		t.mu.Unlock()
		p.c, p.err = t.dial(ctx, id, address)
		close(p.ready)
		if p.err != nil {
			t.mu.Lock()
			if t.peers[id] == p {
				delete(t.peers, id)
			}
			t.mu.Unlock()
		}
		return p.c, p.err
	}
	t.mu.Unlock()
	select {
	case <-p.ready:
		return p.c, p.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for a connection to %s: %w", spi.ErrTimeout, address, ctx.Err())
	}
}

// CloseMember implements Transport.
func (t *Stream) CloseMember(id string, err error) {
	var victims []*Conn
	t.Each(func(c *Conn) {
		if c.remote.ID == id {
			victims = append(victims, c)
		}
	})
	for _, c := range victims {
		c.Close(err)
	}
}

// Each implements Transport.
func (t *Stream) Each(f func(c *Conn)) {
	t.mu.Lock()
	conns := make([]*Conn, 0, len(t.all))
	for c := range t.all {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		f(c)
	}
}

// Tick implements Transport: it pokes the connections that read frames
// themselves (see turnConn), and closes those on which a frame has been
// partly received for longer than FrameBodyTimeout.
func (t *Stream) Tick() {
	var late, strangers []*Conn
	t.mu.Lock()
	for c := range t.all {
		if t.cfg.Member != nil {
			if t.cfg.Member(c.remote.ID) {
				c.unknownTicks = 0
			} else if c.unknownTicks++; c.unknownTicks > t.peerTicks {
				strangers = append(strangers, c)
			}
		}
		if fr, ok := c.nc.(frameReader); ok {
			fr.pokeIfStuck()
			if fr.bodyOverdue(t.bodyTicks) {
				late = append(late, c)
			}
		}
	}
	t.mu.Unlock()
	for _, c := range late {
		err := fmt.Errorf("%w: %s sent part of a frame and not the rest within %v", errBodyTimeout, c.remote.Address, t.cfg.FrameBodyTimeout)
		t.reject(RejectSlowFrame, c.RemoteAddr(), "closing connection", err)
		c.Close(fmt.Errorf("%w: %w", spi.ErrMemberLeft, err))
	}
	for _, c := range strangers {
		err := fmt.Errorf("%w: %s speaks as member %s, which is not in the cluster (for %v)", spi.ErrNoSuchMember, c.remote.Address, c.remote.ID, t.cfg.UnknownPeerGrace)
		t.reject(RejectUnknownPeer, c.RemoteAddr(), "closing connection", err)
		c.Close(fmt.Errorf("%w: %w", spi.ErrMemberLeft, err))
	}
	Callers.Release() // a count left behind delays writers a tick, never more
}

// reject reports a connection refused or cut for its input.
func (t *Stream) reject(reason, remote, msg string, err error) {
	if t.cfg.Reject != nil {
		t.cfg.Reject(reason, remote, err)
		return
	}
	t.log.Warn(msg, "remote", remote, "reason", reason, "error", err)
}

// Close implements Transport.
func (t *Stream) Close() {
	t.mu.Lock()
	t.closed.Store(true)
	t.mu.Unlock()
	t.Each(func(c *Conn) { c.Close(spi.ErrShutdown) })
}

// Wait implements Transport.
func (t *Stream) Wait() { t.wg.Wait() }
