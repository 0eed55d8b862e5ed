package nodeengine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/partita-go/partita/internal/transport"
)

// The member's port (this file): memberlist's UDP packets and a TCP
// listener shared by memberlist streams and operation connections, with
// its accept loop, its caps on connections that have not said what they
// are, and the counting of rejected input. The dialler's first byte says
// which protocol follows; the operation protocol itself is
// internal/transport's.
const (
	selectMemberlist byte = 'M'
	selectOperations byte = 'P'

	selectorTimeout  = 5 * time.Second
	udpPacketBufSize = 65536

	// An accept that fails for want of resources (file descriptors,
	// buffers) is retried after a pause doubling from acceptPauseMin to
	// acceptPauseMax.
	acceptPauseMin = 5 * time.Millisecond
	acceptPauseMax = time.Second
)

// muxTransport implements memberlist.Transport on the member's port and
// hands operation connections to ops.
type muxTransport struct {
	log      *slog.Logger
	tcp      *net.TCPListener
	udp      *net.UDPConn
	addr     *net.TCPAddr
	ops      func(net.Conn)
	probes   func(net.Conn) // split-brain probes ('S'), served on route's goroutine
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup

	// acceptErr is why the listener cannot accept connections now (nil
	// while it can): readiness reports it.
	acceptErr atomic.Pointer[string]

	// Inbound connections that have not sent their selector yet, in all
	// and by remote address, and their caps (set by serve).
	limits      inboundLimits
	pendMu      sync.Mutex
	pending     int
	pendingFrom map[netip.Addr]int

	rejected *prometheus.CounterVec // partita_rejected_input_total{reason}
	rejLog   rejectLog

	// reach, when not nil, tells which members' ports may be reached
	// (WithNetworkFilter, a test facility): packets to and from the others
	// are dropped, dials to them fail. Set before serve.
	reach func(remoteAddr string) bool
	// refused, when not nil, is told of every dial that addr's host
	// answered "connection refused" (Node.portRefused). Set before serve.
	refused func(addr string)

	// frozen is paused while the member is frozen (Node.Pause, a test
	// facility): the port neither sends nor receives (see thawed).
	frozen transport.Gate
}

// errUnreachable is why a dial to a member that the network filter
// (WithNetworkFilter) cuts off fails.
var errUnreachable = errors.New("unreachable: the network filter cuts this member off (a test's network split)")

// inboundLimits caps the inbound connections that have not yet sent their
// selector (network.max-pending-connections and
// network.max-pending-per-address).
type inboundLimits struct {
	pending, perAddress int
}

// Reasons of partita_rejected_input_total.
const (
	rejectBadSelector     = "bad_selector"
	rejectNoSelector      = "no_selector"
	rejectTooManyPending  = "too_many_pending"
	rejectTooManyFromAddr = "too_many_from_address"
)

// rejectBadPacket: input memberlist could not decode (a UDP packet or a
// stream after the 'M' selector), seen in its log lines (see logWriter).
const rejectBadPacket = "bad_packet"

// rejectReasons: the listener's, memberlist's, then the operation
// transport's (transport.RejectReasons).
var rejectReasons = append([]string{rejectBadSelector, rejectNoSelector, rejectTooManyPending, rejectTooManyFromAddr, rejectBadPacket},
	transport.RejectReasons...)

func newRejectedMetric() *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "partita_rejected_input_total",
		Help: "Inbound connections this member closed before they reached memberlist or the operation service, by reason.",
	}, []string{"reason"})
	for _, r := range rejectReasons {
		v.WithLabelValues(r)
	}
	return v
}

var _ memberlist.NodeAwareTransport = (*muxTransport)(nil)

// listen binds TCP and UDP on one port of bind ("host:port"), trying the
// next port up to tries times when auto-increment is on. Port 0 picks a free
// port.
func listen(bind string, autoIncrement bool, tries int, log *slog.Logger) (*muxTransport, error) {
	host, portStr, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("bind address %q: %w", bind, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("bind address %q: bad port", bind)
	}
	if !autoIncrement || port == 0 {
		tries = 1
	}
	if port == 0 {
		tries = 20 // a free TCP port may be taken for UDP: pick again
	}
	var lastErr error
	for i := 0; i < tries; i++ {
		p := port
		if port != 0 {
			p = port + i
		}
		t, err := listenOn(host, p)
		if err == nil {
			t.log = log
			return t, nil
		}
		lastErr = err
	}
	if port != 0 && tries > 1 {
		return nil, fmt.Errorf("no free port in %s:%d..%d: %w", host, port, port+tries-1, lastErr)
	}
	return nil, lastErr
}

func listenOn(host string, port int) (*muxTransport, error) {
	tcp, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	ta := tcp.Addr().(*net.TCPAddr)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ta.IP, Port: ta.Port})
	if err != nil {
		tcp.Close()
		return nil, fmt.Errorf("udp port %d: %w", ta.Port, err)
	}
	_ = udp.SetReadBuffer(2 << 20)
	return &muxTransport{
		tcp: tcp.(*net.TCPListener), udp: udp, addr: ta,
		packetCh: make(chan *memberlist.Packet, 256),
		streamCh: make(chan net.Conn, 16),
		done:     make(chan struct{}),
	}, nil
}

// Address returns the bound host:port.
func (t *muxTransport) Address() string { return t.addr.String() }

// serve starts the accept and packet loops; ops receives operation
// connections.
func (t *muxTransport) serve(ops func(net.Conn), limits inboundLimits, rejected *prometheus.CounterVec) {
	t.ops = ops
	t.limits = limits
	t.pendingFrom = make(map[netip.Addr]int)
	t.rejected = rejected
	t.wg.Add(2)
	go t.acceptLoop()
	go t.packetLoop()
}

func (t *muxTransport) acceptLoop() {
	defer t.wg.Done()
	var (
		pause    time.Duration
		failed   int       // accepts failed since the last one that worked
		loggedAt time.Time // last "cannot accept" line
	)
	for {
		if !t.thawed(nil) { // frozen: connections wait in the backlog
			return
		}
		c, err := t.tcp.Accept()
		if err == nil {
			if failed > 0 {
				t.acceptErr.Store(nil)
				t.log.Info("accepting connections again", "failedAccepts", failed)
				failed, pause = 0, 0
			}
			ip := remoteIP(c)
			if reason := t.admit(ip); reason != "" {
				c.Close()
				t.reject(reason, ip, "closing connection: too many connections that have not said what they are",
					"pending", t.limits.pending, "perAddress", t.limits.perAddress)
				continue
			}
			t.wg.Add(1)
			go t.route(c, ip)
			continue
		}
		select {
		case <-t.done:
			return
		default:
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		reason := "cannot accept connections: " + acceptCause(err)
		t.acceptErr.Store(&reason)
		if !transientAcceptError(err) {
			t.log.Error("accept failed; no more connections on this port", "error", err)
			return
		}
		failed++
		if failed == 1 || time.Since(loggedAt) >= time.Minute {
			loggedAt = time.Now()
			t.log.Warn("cannot accept connections; retrying", "error", err, "failedAccepts", failed)
		}
		pause = min(max(2*pause, acceptPauseMin), acceptPauseMax)
		timer := time.NewTimer(pause)
		select {
		case <-timer.C:
		case <-t.done:
			timer.Stop()
			return
		}
		if descriptorsFree(err) {
			// The next Accept may wait for a connection that never comes
			// (those queued meanwhile were taken, or gave up): the port
			// can accept again, so it says so now, not at the next one.
			t.acceptErr.Store(nil)
			t.log.Info("accepting connections again: file descriptors are free", "failedAccepts", failed)
			failed, pause = 0, 0
		}
	}
}

// descriptorsFree reports, after an accept failed with err for want of
// file descriptors, whether the process can open one now.
func descriptorsFree(err error) bool {
	if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) {
		return false
	}
	f, oerr := os.Open(os.DevNull)
	if oerr != nil {
		return false
	}
	f.Close()
	return true
}

// transientAcceptError tells whether a failed accept may work later: the
// process or system is out of file descriptors or buffers, the peer gave
// up before its connection was accepted, or the error says so itself.
func transientAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED,
		syscall.ENOBUFS, syscall.ENOMEM, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		//lint:ignore SA1019 Temporary is what the standard library's own
		// accept loops (net/http) still use to tell these errors apart.
		return ne.Timeout() || ne.Temporary()
	}
	return false
}

// acceptCause is the system's words for a failed accept ("too many open
// files"), without the operation and addresses around them.
func acceptCause(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// acceptProblem returns why the listener cannot accept connections, or ""
// while it can.
func (t *muxTransport) acceptProblem() string {
	if r := t.acceptErr.Load(); r != nil {
		return *r
	}
	return ""
}

// remoteIP is c's remote IP address (IPv4 unmapped); the zero Addr if it
// is not TCP.
func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admit counts a new connection from ip as pending, or returns the reason
// of partita_rejected_input_total it is over a cap for.
func (t *muxTransport) admit(ip netip.Addr) string {
	t.pendMu.Lock()
	defer t.pendMu.Unlock()
	if t.pending >= t.limits.pending {
		return rejectTooManyPending
	}
	if t.pendingFrom[ip] >= t.limits.perAddress {
		return rejectTooManyFromAddr
	}
	t.pending++
	t.pendingFrom[ip]++
	return ""
}

// release ends a connection's pending time: it sent its selector, or it
// was closed.
func (t *muxTransport) release(ip netip.Addr) {
	t.pendMu.Lock()
	defer t.pendMu.Unlock()
	t.pending--
	if k := t.pendingFrom[ip] - 1; k > 0 {
		t.pendingFrom[ip] = k
	} else {
		delete(t.pendingFrom, ip)
	}
}

// reject counts rejected input from ip and logs it at warn, at most once a
// minute per remote address (see rejectLog).
func (t *muxTransport) reject(reason string, ip netip.Addr, msg string, args ...any) {
	t.rejected.WithLabelValues(reason).Inc()
	if suppressed, ok := t.rejLog.allow(ip, time.Now()); ok {
		args = append(args, "remote", ip.String(), "reason", reason)
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		t.log.Warn(msg, args...)
	}
}

// rejectConn counts and logs (rate-limited) a connection the operation
// transport refused or cut for its input (transport.Config.Reject).
func (t *muxTransport) rejectConn(reason, remote string, err error) {
	ip := netip.Addr{}
	if ap, perr := netip.ParseAddrPort(remote); perr == nil {
		ip = ap.Addr()
	}
	t.reject(reason, ip, rejectMessages[reason], "error", err)
}

// rejectMessages are the log messages of the operation transport's
// rejections, by reason.
var rejectMessages = map[string]string{
	transport.RejectHello:       "refusing connection: it did not start with a Partita hello",
	transport.RejectCluster:     "refusing connection from another cluster or protocol version",
	transport.RejectFrame:       "closing connection after a malformed frame",
	transport.RejectSlowFrame:   "closing connection: a frame did not arrive whole in time",
	transport.RejectUnknownPeer: "closing connection from a process that is not a member of the cluster",
}

// rejectInput counts and logs (rate-limited) input from remote that
// memberlist could not decode; line is memberlist's own.
func (t *muxTransport) rejectInput(remote, line string) {
	ip := netip.Addr{}
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		ip = ap.Addr()
	}
	t.reject(rejectBadPacket, ip, "ignoring input memberlist could not decode", "detail", line)
}

// rejectLog rate-limits the warn lines about rejected input: the first
// from a remote address is logged, then at most one a minute from it,
// telling how many were suppressed since the last.
type rejectLog struct {
	mu   sync.Mutex
	from map[netip.Addr]*rejectLogEntry
}

type rejectLogEntry struct {
	logged     time.Time
	suppressed int
}

const (
	rejectLogEvery = time.Minute
	// rejectLogMax bounds the addresses remembered: when it is reached,
	// those quiet for a minute are forgotten, and while it still is, lines
	// about new addresses are dropped (the metric still counts them).
	rejectLogMax = 4096
)

// allow tells whether a line about ip may be logged at now, and how many
// were suppressed before it.
func (l *rejectLog) allow(ip netip.Addr, now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.from[ip]
	if e == nil {
		if l.from == nil {
			l.from = make(map[netip.Addr]*rejectLogEntry)
		}
		if len(l.from) >= rejectLogMax {
			for a, e := range l.from {
				if now.Sub(e.logged) >= rejectLogEvery {
					delete(l.from, a)
				}
			}
			if len(l.from) >= rejectLogMax {
				return 0, false
			}
		}
		l.from[ip] = &rejectLogEntry{logged: now}
		return 0, true
	}
	if now.Sub(e.logged) < rejectLogEvery {
		e.suppressed++
		return 0, false
	}
	suppressed, e.logged, e.suppressed = e.suppressed, now, 0
	return suppressed, true
}

// route reads the selector byte and hands the connection on.
func (t *muxTransport) route(c net.Conn, ip netip.Addr) {
	defer t.wg.Done()
	var b [1]byte
	c.SetReadDeadline(time.Now().Add(selectorTimeout))
	_, err := c.Read(b[:])
	t.release(ip)
	if err != nil {
		c.Close()
		select {
		case <-t.done:
		default:
			// A port check (connect, close) lands here too: counted, not
			// logged.
			t.rejected.WithLabelValues(rejectNoSelector).Inc()
		}
		return
	}
	c.SetReadDeadline(time.Time{})
	if !t.thawed(nil) { // accepted as the member froze
		c.Close()
		return
	}
	switch b[0] {
	case selectMemberlist:
		select {
		case t.streamCh <- frozenConn{c, t}:
		case <-t.done:
			c.Close()
		}
	case selectOperations:
		t.ops(c)
	case selectSplitBrain:
		if t.probes == nil {
			c.Close()
			return
		}
		t.probes(c)
	default:
		c.Close()
		t.reject(rejectBadSelector, ip, "closing connection: not a Partita member (bad protocol selector)",
			"byte", fmt.Sprintf("%#x", b[0]))
	}
}

func (t *muxTransport) packetLoop() {
	defer t.wg.Done()
	for {
		buf := make([]byte, udpPacketBufSize)
		n, addr, err := t.udp.ReadFrom(buf)
		ts := time.Now()
		if err != nil {
			select {
			case <-t.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			t.log.Debug("udp read failed", "error", err)
			continue
		}
		if n < 1 {
			continue
		}
		if t.reach != nil && !t.reach(addr.String()) {
			continue // cut off: each member sends from its port
		}
		if t.frozen.Paused() != nil {
			// Read as the member froze: it reaches memberlist once the
			// member runs again, as what waits in the socket's buffer.
			if !t.thawed(nil) {
				return
			}
			ts = time.Now()
		}
		select {
		case t.packetCh <- &memberlist.Packet{Buf: buf[:n], From: addr, Timestamp: ts}:
		case <-t.done:
			return
		}
	}
}

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *muxTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	ip := t.addr.IP
	if ip.IsUnspecified() {
		return nil, 0, fmt.Errorf("bind address %s is unspecified: bind to a concrete IP", t.addr)
	}
	return ip, t.addr.Port, nil
}

// WriteTo implements memberlist.Transport.
func (t *muxTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if !t.thawed(nil) {
		return time.Time{}, net.ErrClosed
	}
	if t.reach != nil && !t.reach(addr) {
		return time.Now(), nil // lost on the way, as UDP may be
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.udp.WriteTo(b, ua)
	return time.Now(), err
}

// PacketCh implements memberlist.Transport.
func (t *muxTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout implements memberlist.Transport.
func (t *muxTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.dial(context.Background(), addr, timeout, selectMemberlist)
	if err != nil {
		return nil, err
	}
	return frozenConn{c, t}, nil
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *muxTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, addr.Addr)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *muxTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(addr.Addr, timeout)
}

// StreamCh implements memberlist.Transport.
func (t *muxTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown closes the sockets and waits for the loops.
func (t *muxTransport) Shutdown() error {
	t.once.Do(func() {
		close(t.done)
		t.tcp.Close()
		t.udp.Close()
	})
	t.wg.Wait()
	return nil
}

// memberlistPort is the member port as one memberlist instance sees it:
// a merge replaces the instance, and the port stays open (its Shutdown is
// the node's, in teardown).
type memberlistPort struct{ *muxTransport }

// Shutdown implements memberlist.Transport: the port outlives memberlist.
func (memberlistPort) Shutdown() error { return nil }

// dial dials the member port at addr and writes the protocol selector,
// unless the network filter cuts addr off (then it fails at once, and
// also when it cut addr off while dialling). While the member is frozen
// (Node.Pause) it waits until it runs again, or ctx ends.
func (t *muxTransport) dial(ctx context.Context, addr string, timeout time.Duration, sel byte) (net.Conn, error) {
	if !t.thawed(ctx) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(addr), Err: cmp.Or(ctx.Err(), net.ErrClosed)}
	}
	if t.reach != nil && !t.reach(addr) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(addr), Err: errUnreachable}
	}
	c, err := dialSelect(ctx, addr, timeout, sel)
	if err == nil && t.reach != nil && !t.reach(addr) {
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(addr), Err: errUnreachable}
	}
	if t.refused != nil && errors.Is(err, syscall.ECONNREFUSED) {
		t.refused(addr)
	}
	return c, err
}

// refuses reports whether addr's host refuses a connection to it now:
// nothing listens on that port. It is false when the connection opens
// (then closed at once), or fails in any other way: a timeout, a cut
// network (the test filter included), or this member frozen.
func (t *muxTransport) refuses(ctx context.Context, addr string, timeout time.Duration) bool {
	if !t.thawed(ctx) || t.reach != nil && !t.reach(addr) {
		return false
	}
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// tcpAddr is addr as a net.Addr for errors (nil if it does not parse).
func tcpAddr(addr string) net.Addr {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	return nil
}

// dialSelect dials addr and writes the protocol selector.
func dialSelect(ctx context.Context, addr string, timeout time.Duration, sel byte) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if _, err := c.Write([]byte{sel}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
