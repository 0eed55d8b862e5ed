package transport

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/partita-go/partita/spi"
)

// Network is an in-memory stream network, the twin of TCP for tests: Dial
// reaches the accept function listening at an address over a synchronous
// net.Pipe, with no sockets and no ports. A Stream runs on it unchanged
// (Config.Dial = n.Dial, Listen(address, s.Accept)).
type Network struct {
	mu        sync.Mutex
	listeners map[string]func(net.Conn)
}

// NewNetwork returns an empty network.
func NewNetwork() *Network { return &Network{listeners: make(map[string]func(net.Conn))} }

// Listen makes Dial(address) hand one end of a new pipe to accept, until
// the returned stop is called.
func (n *Network) Listen(address string, accept func(net.Conn)) (stop func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.listeners[address] = accept
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.listeners, address)
	}
}

// Dial connects to the listener at address; with none there it fails as
// a refused TCP connection would.
func (n *Network) Dial(ctx context.Context, address string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	accept := n.listeners[address]
	n.mu.Unlock()
	if accept == nil {
		return nil, fmt.Errorf("%w: in-memory dial %s: nothing listens there", spi.ErrMemberLeft, address)
	}
	a, b := net.Pipe()
	accept(b)
	return a, nil
}
