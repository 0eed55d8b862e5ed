package transport

import (
	"bufio"
	"fmt"

	"github.com/partita-go/partita/spi"
)

// Hello is the first frame on a connection, from each side: who speaks,
// for which cluster, in which protocol version.
type Hello struct {
	Version uint8
	Cluster string
	ID      string // member ID
	Address string // operation address
}

// AppendHello appends h as a KindHello frame.
func AppendHello(buf []byte, h Hello) []byte {
	buf, start := BeginFrame(buf, KindHello, 0)
	w := spi.Writer{}
	w.SetBuffer(append(buf, helloMagic...))
	w.WriteUint8(h.Version)
	w.WriteString(h.Cluster)
	w.WriteString(h.ID)
	w.WriteString(h.Address)
	buf = w.Bytes()
	_ = EndFrame(buf, start)
	return buf
}

// DecodeHello decodes a KindHello payload.
func DecodeHello(payload []byte) (Hello, error) {
	if len(payload) < len(helloMagic) || string(payload[:len(helloMagic)]) != helloMagic {
		return Hello{}, fmt.Errorf("%w: connection did not start with a Partita hello (bad magic)", spi.ErrProtocol)
	}
	r := spi.NewReader(payload[len(helloMagic):])
	h := Hello{Version: r.ReadUint8(), Cluster: r.ReadString(), ID: r.ReadString(), Address: r.ReadString()}
	if err := r.Err(); err != nil {
		return h, fmt.Errorf("bad hello: %w", err)
	}
	if r.Remaining() != 0 {
		return h, fmt.Errorf("%w: %d trailing bytes after hello", spi.ErrProtocol, r.Remaining())
	}
	return h, nil
}

// ReadHello reads the peer's hello, or the error frame it refused with.
func ReadHello(br *bufio.Reader) (Hello, error) {
	body, err := ReadFrame(br, nil)
	if err != nil {
		return Hello{}, fmt.Errorf("reading hello: %w", err)
	}
	h, payload, err := ParseHeader(body)
	if err != nil {
		return Hello{}, err
	}
	switch h.Kind {
	case KindHello:
		return DecodeHello(payload)
	case KindError:
		return Hello{}, DecodeError(payload, "peer")
	}
	return Hello{}, fmt.Errorf("%w: expected a hello frame, got kind %d", spi.ErrProtocol, h.Kind)
}

// check returns why a peer saying h cannot talk to local, or nil.
func (local Hello) check(h Hello) error {
	switch {
	case h.Version != local.Version:
		return fmt.Errorf("%w: member %s at %s speaks protocol version %d, this member speaks %d",
			spi.ErrClusterMismatch, h.ID, h.Address, h.Version, local.Version)
	case h.Cluster != local.Cluster:
		return fmt.Errorf("%w: member %s at %s belongs to cluster %q, this member to %q",
			spi.ErrClusterMismatch, h.ID, h.Address, h.Cluster, local.Cluster)
	}
	return nil
}
