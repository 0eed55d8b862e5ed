// Package discovery finds other Partita members with UDP multicast, the
// default way a seed member joins a cluster (like Hazelcast's multicast
// join).
//
// Every member periodically sends a small [Beacon] to a multicast group
// (by default [DefaultGroup]). A beacon names the sender's cluster, the
// address its membership layer listens on (host:port) and its member ID.
// A [Discoverer] listening on the same group reports the members of its own
// cluster that it hears; the node engine then calls memberlist Join on their
// addresses. Beacons of another cluster are ignored (and logged once per
// sender address and cluster), and a member never reports itself.
//
// [Discover] is the start-up helper: it listens for a bounded time and
// returns as soon as at least one peer is heard, so that a member either
// joins the peers it found or, when the context ends first, forms a cluster
// on its own.
//
// Goroutines: Start sends the first beacon on the caller's goroutine,
// then a Discoverer runs one goroutine that sends a beacon every interval
// and one that receives; its methods are safe for concurrent use. The
// node engine starts one for the member's lifetime when multicast join is
// enabled, waits briefly for a first peer during Node.Start, then joins
// later peers from a goroutine of its own, and closes it when the member
// stops. Close waits for the Discoverer's goroutines.
//
// Beacons are sent with a multicast TTL of 1 (they never leave the local
// network) and with multicast loopback enabled, so that members on the same
// host hear each other. Only IPv4 groups are supported.
//
// The wire format of a beacon is:
//
//	"PRTD"                       magic, 4 bytes
//	0x01                         version
//	uvarint len, bytes           cluster name
//	uvarint len, bytes           member address (host:port)
//	uvarint len, bytes           member ID
//
// with at most [MaxBeaconSize] bytes in all. Decoding is strict: anything
// else is rejected with an error wrapping [ErrInvalidBeacon].
package discovery
