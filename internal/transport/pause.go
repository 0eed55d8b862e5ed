package transport

import (
	"sync"
	"sync/atomic"
)

// Gate holds goroutines back while it is paused: a test's freeze of a
// member (nodeengine's Node.Pause), not a production facility. The zero
// Gate is open. Pauses nest: it opens again once every Pause has been
// resumed. Any goroutine may use it; Paused costs one atomic load.
type Gate struct {
	mu     sync.Mutex
	n      int                           // pauses in force
	closed atomic.Pointer[chan struct{}] // nil while open; closed when it opens
}

// Pause closes the gate until resume is called (more than once is
// harmless).
func (g *Gate) Pause() (resume func()) {
	g.mu.Lock()
	if g.n++; g.n == 1 {
		ch := make(chan struct{})
		g.closed.Store(&ch)
	}
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.n--; g.n == 0 {
				close(*g.closed.Swap(nil))
			}
		})
	}
}

// Paused returns nil while the gate is open, else a channel closed when
// it opens: the caller waits on it (and on whatever else ends its wait).
func (g *Gate) Paused() <-chan struct{} {
	if ch := g.closed.Load(); ch != nil {
		return *ch
	}
	return nil
}

// Pause stops the stream's connections until resume is called, as if
// this member's process were frozen: no frame is handed to the Handler
// (the readers stop before the next one, and what the peers send waits
// in the sockets' buffers) and no frame is written (Send still queues,
// and the writers write it all on resume). Dials and accepts are the
// network's: a frozen member's node engine holds those itself. A closing
// connection ends its waits, so Close needs no resume. For test kits (see
// Gate).
func (t *Stream) Pause() (resume func()) { return t.gate.Pause() }

// thawed waits while the stream is paused; false if c closed first.
func (c *Conn) thawed() bool {
	ch := c.t.gate.Paused()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-c.done:
		return false
	}
}
