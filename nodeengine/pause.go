package nodeengine

import (
	"context"
	"net"
	"sync"
)

// Pause freezes this member until resume is called, as a stop-the-world
// GC pause or a stopped VM freezes a process: a facility for test kits
// (clustertest's Cluster.Pause and its nemesis), not for production.
//
// While it is frozen:
//   - its port neither sends nor receives: memberlist's packets and stream
//     dials wait (its probe, gossip and push-pull goroutines stall in
//     them), the streams it has open stop, and what the others send stays
//     in the sockets' buffers and backlog, reaching memberlist once the
//     member runs again, late and stale, as it would a stopped process;
//     split-brain probes neither go out nor get answers;
//   - its operation connections read no frame and write none (what is
//     sent meanwhile is queued), and no member is dialled;
//   - every partition and generic executor finishes the task it runs,
//     then waits: no operation, backup or engine task runs.
//
// What goes on: timers already set run out on their own clocks
// (memberlist's suspicion of other members, the invocation and backup
// deadlines), the engine's background goroutines run, their work waiting
// on the frozen parts, and so do the HTTP endpoints. A pause longer than
// failure detection gets the member declared dead by the others: once it
// runs again it finds itself outside their cluster and rejoins as a merge
// of one (docs/architecture.md, "Split brain").
//
// Pauses nest: the member runs again once every resume has been called;
// calling a resume more than once is harmless. Shutdown ends every pause
// first (the member thaws, then leaves gracefully); Terminate does not:
// the member dies frozen, sending nothing it held. Before Start and once
// stopped, Pause does nothing. Any goroutine may call it; it returns at
// once (unless an executor's queue is full: then once there is room).
func (n *Node) Pause() (resume func()) {
	p := &n.pause
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.over || n.state.Load() != stateRunning {
		return func() {}
	}
	if p.n++; p.n == 1 {
		p.port = n.tr.frozen.Pause()
		p.conns = n.ops.PauseConnections()
		p.executors = n.ops.PauseExecutors()
		n.log.Warn("member frozen (Pause, a test's fault): its network, memberlist and executors stop")
	}
	var once sync.Once
	return func() { once.Do(n.unpause) }
}

// pauses is the member's freeze (Node.Pause).
type pauses struct {
	mu   sync.Mutex
	n    int  // pauses in force
	over bool // the member stopped: no more pauses
	// The resumes of the port, the operation connections and the
	// executors, while n > 0.
	port, conns, executors func()
}

// unpause ends one pause; the last one thaws the member.
func (n *Node) unpause() {
	p := &n.pause
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 { // ended by Shutdown or Terminate
		return
	}
	if p.n--; p.n == 0 {
		p.thaw()
		n.log.Warn("member runs again after a Pause")
	}
}

// endPauses ends every pause as the member stops, and refuses new ones.
// Shutdown thaws the member; Terminate (kill) only lets its executors go,
// so that its shutdown, which waits for their tasks, ends: its port and
// connections stay frozen until they close, and nothing they held is
// sent.
func (n *Node) endPauses(kill bool) {
	p := &n.pause
	p.mu.Lock()
	defer p.mu.Unlock()
	p.over = true
	if p.n == 0 {
		return
	}
	p.n = 0
	if kill {
		p.executors()
		return
	}
	p.thaw()
}

// thaw resumes every part (under p.mu).
func (p *pauses) thaw() {
	p.executors()
	p.conns()
	p.port()
	p.port, p.conns, p.executors = nil, nil, nil
}

// thawed waits while the port is frozen (Node.Pause); false if the port
// shut down or ctx (nil: none) ended first.
func (t *muxTransport) thawed(ctx context.Context) bool {
	ch := t.frozen.Paused()
	if ch == nil {
		return true
	}
	var stop <-chan struct{}
	if ctx != nil {
		stop = ctx.Done()
	}
	select {
	case <-ch:
		return true
	case <-t.done:
		return false
	case <-stop:
		return false
	}
}

// frozenConn is a memberlist stream on the member port: its reads and
// writes wait while the member is frozen (a read under way when it froze
// returns what arrives, as it does in a process stopped in the kernel).
type frozenConn struct {
	net.Conn
	t *muxTransport
}

func (c frozenConn) Read(b []byte) (int, error) {
	if !c.t.thawed(nil) {
		return 0, net.ErrClosed
	}
	return c.Conn.Read(b)
}

func (c frozenConn) Write(b []byte) (int, error) {
	if !c.t.thawed(nil) {
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}
