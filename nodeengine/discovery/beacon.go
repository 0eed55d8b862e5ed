package discovery

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
)

// MaxBeaconSize is the largest encoded beacon, in bytes, that is sent or
// accepted.
const MaxBeaconSize = 512

// BeaconVersion is the beacon format version written by [Beacon.Marshal]
// and the only one [UnmarshalBeacon] accepts.
const BeaconVersion = 1

// beaconMagic starts every beacon.
const beaconMagic = "PRTD"

// ErrInvalidBeacon is wrapped by every error [UnmarshalBeacon] returns.
var ErrInvalidBeacon = errors.New("invalid discovery beacon")

// Beacon is what a member announces on the multicast group.
type Beacon struct {
	// Cluster is the name of the cluster the member belongs to; members
	// only report beacons of their own cluster.
	Cluster string
	// Address is the host:port the member's membership layer listens on,
	// the address other members join.
	Address string
	// ID is the member's unique ID; a Discoverer never reports a beacon
	// carrying its own ID.
	ID string
}

// Marshal encodes the beacon in the wire format described in the package
// documentation. It does not check the result's size or the fields' content:
// [Start] rejects a beacon that [UnmarshalBeacon] would not accept.
func (b Beacon) Marshal() []byte {
	n := len(beaconMagic) + 1 +
		3*binary.MaxVarintLen64 + len(b.Cluster) + len(b.Address) + len(b.ID)
	p := make([]byte, 0, n)
	p = append(p, beaconMagic...)
	p = append(p, BeaconVersion)
	for _, s := range [...]string{b.Cluster, b.Address, b.ID} {
		p = binary.AppendUvarint(p, uint64(len(s)))
		p = append(p, s...)
	}
	return p
}

// UnmarshalBeacon decodes a beacon produced by [Beacon.Marshal]. It is strict:
// input longer than [MaxBeaconSize], a wrong magic or version, a truncated or
// non-minimal length, trailing bytes, an empty ID, or an address that is not
// host:port with a non-empty host and a port in 1..65535 are all rejected with
// an error wrapping [ErrInvalidBeacon]. It never panics.
func UnmarshalBeacon(p []byte) (Beacon, error) {
	if len(p) > MaxBeaconSize {
		return Beacon{}, fmt.Errorf("%w: %d bytes, more than the maximum %d", ErrInvalidBeacon, len(p), MaxBeaconSize)
	}
	if len(p) < len(beaconMagic)+1 {
		return Beacon{}, fmt.Errorf("%w: truncated header (%d bytes)", ErrInvalidBeacon, len(p))
	}
	if string(p[:len(beaconMagic)]) != beaconMagic {
		return Beacon{}, fmt.Errorf("%w: bad magic %q", ErrInvalidBeacon, p[:len(beaconMagic)])
	}
	if v := p[len(beaconMagic)]; v != BeaconVersion {
		return Beacon{}, fmt.Errorf("%w: unsupported version %d", ErrInvalidBeacon, v)
	}
	rest := p[len(beaconMagic)+1:]
	var fields [3]string
	for i, name := range [...]string{"cluster name", "address", "member id"} {
		s, r, err := readString(rest)
		if err != nil {
			return Beacon{}, fmt.Errorf("%w: %s: %v", ErrInvalidBeacon, name, err)
		}
		fields[i], rest = s, r
	}
	if len(rest) != 0 {
		return Beacon{}, fmt.Errorf("%w: %d trailing bytes", ErrInvalidBeacon, len(rest))
	}
	b := Beacon{Cluster: fields[0], Address: fields[1], ID: fields[2]}
	if err := b.validate(); err != nil {
		return Beacon{}, fmt.Errorf("%w: %v", ErrInvalidBeacon, err)
	}
	return b, nil
}

// readString reads one uvarint-length-prefixed string.
func readString(p []byte) (string, []byte, error) {
	n, k := binary.Uvarint(p)
	switch {
	case k == 0:
		return "", nil, errors.New("truncated length")
	case k < 0:
		return "", nil, errors.New("length overflows 64 bits")
	}
	var scratch [binary.MaxVarintLen64]byte
	if binary.PutUvarint(scratch[:], n) != k {
		return "", nil, errors.New("non-minimal length encoding")
	}
	p = p[k:]
	if n > uint64(len(p)) {
		return "", nil, fmt.Errorf("length %d exceeds the %d remaining bytes", n, len(p))
	}
	return string(p[:n]), p[n:], nil
}

// validate checks the field contents shared by decoding and [Start].
func (b Beacon) validate() error {
	if b.ID == "" {
		return errors.New("empty member id")
	}
	host, port, err := net.SplitHostPort(b.Address)
	if err != nil {
		return fmt.Errorf("address %q: %v", b.Address, err)
	}
	if host == "" {
		return fmt.Errorf("address %q: empty host", b.Address)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || strconv.FormatUint(n, 10) != port {
		return fmt.Errorf("address %q: bad port %q", b.Address, port)
	}
	return nil
}
