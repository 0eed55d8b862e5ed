package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// DefaultGroup is the multicast group and port used when [Config.Group] is
// empty (the same as Hazelcast's multicast join).
const DefaultGroup = "224.2.2.3:54327"

// DefaultInterval is the beacon period used when [Config.Interval] is zero.
const DefaultInterval = time.Second

const (
	// peerBuffer is the capacity of the Peers channel.
	peerBuffer = 128
	// maxPeers bounds the set of remembered peers, so that a flood of
	// beacons with made-up addresses cannot exhaust memory.
	maxPeers = 4096
	// maxMismatches bounds the set of (address, cluster) pairs already
	// logged as belonging to another cluster.
	maxMismatches = 1024
	// readErrorBackoff is how long the receive loop waits after an
	// unexpected read error before reading again.
	readErrorBackoff = 100 * time.Millisecond
)

// Config configures a [Discoverer].
type Config struct {
	// Group is the IPv4 multicast group and port, e.g. "224.2.2.3:54327";
	// empty means [DefaultGroup].
	Group string
	// Cluster is the cluster name: only beacons of this cluster are
	// reported. If Self.Cluster is set it must be equal.
	Cluster string
	// Self is what this member announces; its Cluster is set from Cluster.
	// Address and ID are required.
	Self Beacon
	// Interval is the beacon period; zero means [DefaultInterval].
	Interval time.Duration
	// Interface is the network interface to send and receive on; nil
	// means the system default (chosen by the routing table).
	Interface *net.Interface
	// Logger receives log output; nil discards it.
	Logger *slog.Logger
}

// Discoverer sends beacons every Interval and reports the peers of the same
// cluster it hears, never itself (by ID). Beacons of another cluster are
// ignored, with one Info log line per (address, cluster) naming both cluster
// names. Its methods are safe for concurrent use.
type Discoverer struct {
	group    *net.UDPAddr
	cluster  string
	self     Beacon
	payload  []byte
	interval time.Duration
	iface    *net.Interface
	log      *slog.Logger

	recvConn *net.UDPConn // joined to the group
	sendConn *net.UDPConn // sends beacons to the group

	peersCh chan Beacon

	mu         sync.Mutex
	peers      map[string]Beacon   // by address
	mismatches map[string]struct{} // address + "\x00" + cluster, already logged
	peersFull  bool                // the peers-full warning was logged

	// Counters, for logs and tests.
	sent     atomic.Int64 // beacons sent
	received atomic.Int64 // valid beacons received, including our own
	ignored  atomic.Int64 // valid beacons of another cluster
	invalid  atomic.Int64 // datagrams that were not valid beacons
	dropped  atomic.Int64 // new peers not delivered because Peers was full

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// newDiscoverer validates cfg and builds a Discoverer without opening any
// socket.
func newDiscoverer(cfg Config) (*Discoverer, error) {
	groupStr := cfg.Group
	if groupStr == "" {
		groupStr = DefaultGroup
	}
	group, err := net.ResolveUDPAddr("udp4", groupStr)
	if err != nil {
		return nil, fmt.Errorf("discovery: multicast group %q: %w", groupStr, err)
	}
	if group.IP.To4() == nil || !group.IP.IsMulticast() {
		return nil, fmt.Errorf("discovery: group %q is not an IPv4 multicast address", groupStr)
	}
	if group.Port == 0 {
		return nil, fmt.Errorf("discovery: multicast group %q: port must not be 0", groupStr)
	}
	if cfg.Self.Cluster != "" && cfg.Self.Cluster != cfg.Cluster {
		return nil, fmt.Errorf("discovery: Self.Cluster %q differs from Cluster %q", cfg.Self.Cluster, cfg.Cluster)
	}
	self := cfg.Self
	self.Cluster = cfg.Cluster
	payload := self.Marshal()
	if _, err := UnmarshalBeacon(payload); err != nil {
		return nil, fmt.Errorf("discovery: own beacon %+v cannot be sent: %w", self, err)
	}
	interval := cfg.Interval
	switch {
	case interval == 0:
		interval = DefaultInterval
	case interval < 0:
		return nil, fmt.Errorf("discovery: negative interval %v", interval)
	}
	if cfg.Interface != nil && cfg.Interface.Flags&net.FlagMulticast == 0 {
		return nil, fmt.Errorf("discovery: multicast group %s: interface %s does not support multicast", group, cfg.Interface.Name)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Discoverer{
		group:      group,
		cluster:    cfg.Cluster,
		self:       self,
		payload:    payload,
		interval:   interval,
		iface:      cfg.Interface,
		log:        logger.With("component", "discovery", "group", group.String()),
		peersCh:    make(chan Beacon, peerBuffer),
		peers:      make(map[string]Beacon),
		mismatches: make(map[string]struct{}),
		done:       make(chan struct{}),
	}, nil
}

// Start validates cfg, opens the sockets, sends the first beacon and starts
// the send and receive goroutines. If multicast is unusable (no route to the
// group, the interface cannot join it, ...) it returns an error naming the
// group and the cause. Call [Discoverer.Close] to stop it.
func Start(cfg Config) (*Discoverer, error) {
	d, err := newDiscoverer(cfg)
	if err != nil {
		return nil, err
	}
	if err := d.open(); err != nil {
		d.closeSockets()
		return nil, err
	}
	// Send the first beacon synchronously: it is the cheapest way to learn
	// that multicast does not work here, and peers hear us at once.
	if err := d.send(); err != nil {
		d.closeSockets()
		return nil, fmt.Errorf("discovery: multicast group %s unusable%s: send beacon: %w", d.group, d.onIface(), err)
	}
	d.wg.Add(2)
	go d.receiveLoop()
	go d.sendLoop()
	d.log.Info("multicast discovery started",
		"cluster", d.cluster, "address", d.self.Address, "id", d.self.ID,
		"interface", d.ifaceName(), "interval", d.interval)
	return d, nil
}

// open opens the receiving and the sending socket.
func (d *Discoverer) open() error {
	rc, err := net.ListenMulticastUDP("udp4", d.iface, d.group)
	if err != nil {
		return fmt.Errorf("discovery: multicast group %s unusable%s: join: %w", d.group, d.onIface(), err)
	}
	d.recvConn = rc

	sc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return fmt.Errorf("discovery: multicast group %s: open send socket: %w", d.group, err)
	}
	d.sendConn = sc
	pc := ipv4.NewPacketConn(sc)
	if err := pc.SetMulticastTTL(1); err != nil {
		return fmt.Errorf("discovery: multicast group %s: set multicast TTL: %w", d.group, err)
	}
	// Members on the same host must hear each other.
	if err := pc.SetMulticastLoopback(true); err != nil {
		return fmt.Errorf("discovery: multicast group %s: enable multicast loopback: %w", d.group, err)
	}
	if d.iface != nil {
		if err := pc.SetMulticastInterface(d.iface); err != nil {
			return fmt.Errorf("discovery: multicast group %s unusable%s: set multicast interface: %w", d.group, d.onIface(), err)
		}
	}
	return nil
}

func (d *Discoverer) ifaceName() string {
	if d.iface == nil {
		return "default"
	}
	return d.iface.Name
}

func (d *Discoverer) onIface() string {
	if d.iface == nil {
		return ""
	}
	return " on interface " + d.iface.Name
}

// send sends one beacon to the group.
func (d *Discoverer) send() error {
	if _, err := d.sendConn.WriteToUDP(d.payload, d.group); err != nil {
		return err
	}
	d.sent.Add(1)
	return nil
}

// sendLoop sends a beacon every interval until Close.
func (d *Discoverer) sendLoop() {
	defer d.wg.Done()
	t := time.NewTicker(d.interval)
	defer t.Stop()
	var lastErr string // logged once per distinct error, not once per tick
	for {
		select {
		case <-d.done:
			return
		case <-t.C:
		}
		err := d.send()
		switch {
		case err != nil && isClosed(err):
			return
		case err != nil && err.Error() != lastErr:
			lastErr = err.Error()
			d.log.Warn("cannot send multicast beacon", "error", err)
		case err == nil && lastErr != "":
			lastErr = ""
			d.log.Info("sending multicast beacons again")
		}
	}
}

// receiveLoop reads datagrams from the group until Close.
func (d *Discoverer) receiveLoop() {
	defer d.wg.Done()
	// One byte more than the maximum, so that an oversized datagram is
	// seen as such (it arrives truncated) and rejected.
	buf := make([]byte, MaxBeaconSize+1)
	for {
		n, from, err := d.recvConn.ReadFromUDP(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			d.log.Warn("cannot read multicast beacon", "error", err)
			t := time.NewTimer(readErrorBackoff)
			select {
			case <-d.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		d.handlePacket(buf[:n], from)
	}
}

// isClosed reports whether err comes from using a closed socket.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed)
}

// handlePacket processes one received datagram.
func (d *Discoverer) handlePacket(p []byte, from *net.UDPAddr) {
	b, err := UnmarshalBeacon(p)
	if err != nil {
		d.invalid.Add(1)
		d.log.Debug("ignoring invalid multicast datagram", "from", from.String(), "error", err)
		return
	}
	d.received.Add(1)
	if b.ID == d.self.ID {
		return // our own beacon, looped back
	}
	if b.Cluster != d.cluster {
		d.ignored.Add(1)
		d.noteMismatch(b)
		return
	}
	d.addPeer(b, from)
}

// noteMismatch logs a beacon of another cluster once per (address, cluster).
func (d *Discoverer) noteMismatch(b Beacon) {
	key := b.Address + "\x00" + b.Cluster
	d.mu.Lock()
	_, seen := d.mismatches[key]
	if !seen && len(d.mismatches) < maxMismatches {
		d.mismatches[key] = struct{}{}
	} else {
		seen = true
	}
	d.mu.Unlock()
	if !seen {
		d.log.Info(fmt.Sprintf("ignoring multicast beacon from %s: cluster %q, ours is %q", b.Address, b.Cluster, d.cluster),
			"peer", b.Address, "peer_id", b.ID, "peer_cluster", b.Cluster, "cluster", d.cluster)
	}
}

// addPeer records a peer of our cluster and announces it on Peers the first
// time its address is seen.
func (d *Discoverer) addPeer(b Beacon, from *net.UDPAddr) {
	d.mu.Lock()
	old, known := d.peers[b.Address]
	full := !known && len(d.peers) >= maxPeers
	warnFull := full && !d.peersFull
	if full {
		d.peersFull = true
	} else {
		// A known address may come back with a new ID (the member
		// restarted): keep the latest, but do not announce it again.
		d.peers[b.Address] = b
	}
	d.mu.Unlock()

	switch {
	case warnFull:
		d.log.Warn("too many multicast peers, ignoring new ones", "limit", maxPeers, "peer", b.Address)
	case full:
	case !known:
		d.log.Info("discovered member via multicast", "peer", b.Address, "peer_id", b.ID, "from", from.String())
		select {
		case d.peersCh <- b:
		default:
			// Never block the receive loop; Discovered still has it.
			d.dropped.Add(1)
		}
	case old.ID != b.ID:
		d.log.Info("multicast peer changed member id", "peer", b.Address, "old_id", old.ID, "peer_id", b.ID)
	}
}

// Peers returns a channel that receives each newly seen peer address once.
// The channel is buffered; when it is full, new peers are not sent on it
// (but [Discoverer.Discovered] still reports them). It is closed by
// [Discoverer.Close].
func (d *Discoverer) Peers() <-chan Beacon {
	return d.peersCh
}

// Discovered returns all peers seen so far, one per address, sorted by
// address. For an address heard with several member IDs, the latest wins.
func (d *Discoverer) Discovered() []Beacon {
	d.mu.Lock()
	out := make([]Beacon, 0, len(d.peers))
	for _, b := range d.peers {
		out = append(out, b)
	}
	d.mu.Unlock()
	slices.SortFunc(out, func(a, b Beacon) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// Close stops sending and receiving: it closes the sockets, waits for all
// goroutines to end and then closes the Peers channel. It is idempotent: later
// calls return the first call's result.
func (d *Discoverer) Close() error {
	d.closeOnce.Do(func() {
		close(d.done)
		d.closeErr = d.closeSockets()
		d.wg.Wait()
		close(d.peersCh)
		d.log.Debug("multicast discovery stopped",
			"sent", d.sent.Load(), "received", d.received.Load(),
			"ignored", d.ignored.Load(), "invalid", d.invalid.Load(), "dropped", d.dropped.Load())
	})
	return d.closeErr
}

// closeSockets closes whichever sockets are open.
func (d *Discoverer) closeSockets() error {
	var errs []error
	if d.recvConn != nil {
		if err := d.recvConn.Close(); err != nil && !isClosed(err) {
			errs = append(errs, err)
		}
	}
	if d.sendConn != nil {
		if err := d.sendConn.Close(); err != nil && !isClosed(err) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("discovery: close: %w", errors.Join(errs...))
	}
	return nil
}

// Discover starts a [Discoverer], waits until ctx ends or at least one peer
// is seen, stops it and returns the peers it saw (possibly none). Ending ctx
// is not an error: it means no peer answered in time, and the caller forms a
// cluster alone. An error comes from [Start] (nothing was discovered) or,
// rarely, from closing the sockets (the peers are returned all the same).
func Discover(ctx context.Context, cfg Config) ([]Beacon, error) {
	d, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
	case <-d.Peers():
	}
	if err := d.Close(); err != nil {
		return d.Discovered(), err
	}
	return d.Discovered(), nil
}
