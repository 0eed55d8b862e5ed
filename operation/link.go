package operation

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/partita-go/partita/internal/transport"
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
	// comes first; a delivery counts the caller in held until it has
	// taken the answer.
	state atomic.Uint32
	held  *transport.HeldWrites // &transport.Callers; tests use their own
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
	c.op, c.held = op, &transport.Callers
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
		c.held.Delivered() // before the caller can take it
	}
	c.done <- struct{}{}
}

// taken is called by the caller once it has the answer delivered to it.
func (c *call) taken() { c.held.Resumed() }

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

// link is the operation service's state of one connection (its
// transport.Conn's Value): the calls sent on it that wait for an answer.
type link struct {
	mu      sync.Mutex
	pending map[uint64]*call
	closed  bool
	err     error // why it closed
}

// linkOf returns c's link.
func linkOf(c *transport.Conn) *link { return c.Value.(*link) }

// Opened implements transport.Handler.
func (s *Service) Opened(c *transport.Conn) {
	c.Value = &link{pending: make(map[uint64]*call)}
}

// Closed implements transport.Handler: the calls waiting on c fail with
// err.
func (s *Service) Closed(c *transport.Conn, err error) {
	l := linkOf(c)
	l.mu.Lock()
	pending := l.pending
	l.pending, l.closed, l.err = nil, true, err
	l.mu.Unlock()
	for _, cl := range pending {
		cl.complete(nil, err)
	}
}

// register records cl as waiting for the answer to a new call id on c.
func (s *Service) register(c *transport.Conn, cl *call) (uint64, error) {
	id := s.nextCall.Add(1)
	l := linkOf(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, l.err
	}
	l.pending[id] = cl
	return id, nil
}

// take removes and returns pending call id on c (nil if none).
func take(c *transport.Conn, id uint64) *call {
	l := linkOf(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	cl := l.pending[id]
	delete(l.pending, id)
	return cl
}

// waiting reports whether call id is pending on c.
func waiting(c *transport.Conn, id uint64) bool {
	l := linkOf(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending[id] != nil
}

// takeAnswerable is take for a backup's forwarded answer: only a caller's
// call of a backed-up operation can be answered so, never a backup's ack
// (which would tell a primary that a backup it has not applied was).
func takeAnswerable(c *transport.Conn, id uint64) *call {
	l := linkOf(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	cl := l.pending[id]
	if cl == nil || cl.then != nil {
		return nil
	}
	if _, ok := cl.op.(spi.BackupAwareOperation); !ok {
		return nil
	}
	delete(l.pending, id)
	return cl
}

// forget drops a pending call and reports whether it was still pending
// (false: a completer, such as Closed, already took it).
func forget(c *transport.Conn, id uint64) bool { return take(c, id) != nil }

// expireBackups fails the synchronous backups whose ack is overdue
// (syncBackup.deadline): their replica may have taken them and never
// answer, as a replica stuck behind a sync would. Called on each tick.
func (s *Service) expireBackups() {
	now := s.ticks.Load()
	var late []*call
	s.tr.Each(func(c *transport.Conn) {
		l := linkOf(c)
		l.mu.Lock()
		for id, cl := range l.pending {
			if b, ok := cl.then.(*syncBackup); ok && now > b.deadline {
				delete(l.pending, id)
				late = append(late, cl)
			}
		}
		l.mu.Unlock()
	})
	for _, cl := range late {
		cl.complete(nil, fmt.Errorf("%w: no acknowledgement", spi.ErrTimeout))
	}
}

// MemberLeft closes the connections to a member that left the cluster;
// invocations waiting on it fail with ErrMemberLeft and are retried. The
// invocations it made that the partitions' records hold are pinned
// (pins.go).
func (s *Service) MemberLeft(id string) {
	s.tr.CloseMember(id, fmt.Errorf("%w: member %s left", spi.ErrMemberLeft, id))
	s.lost(id)
}

// CloseUnreachable closes the connections to the members Config.Reachable
// now refuses: invocations waiting on them fail with ErrMemberLeft and are
// retried, as when a member leaves. Without Reachable it does nothing.
func (s *Service) CloseUnreachable() { s.stream.CloseUnreachable() }

// PeerAddresses returns the operation addresses of the members this
// member has open connections with, one per connection (tests).
func (s *Service) PeerAddresses() []string {
	var out []string
	s.tr.Each(func(c *transport.Conn) {
		if !c.IsClosed() {
			out = append(out, c.Remote().Address)
		}
	})
	return out
}

// send queues a frame on c: through the fault-injecting wrapper when one
// is installed (tests), else straight to the stream. Both are concrete
// types so that body, built on the hot path, stays on the stack.
func (s *Service) send(c *transport.Conn, f transport.Frame, body func(w *spi.Writer) error) error {
	if s.faults != nil {
		return s.faults.Send(c, f, body)
	}
	return s.stream.Send(c, f, body)
}

// sendRequest registers cl under a new call id on c and queues the
// request.
func (s *Service) sendRequest(c *transport.Conn, cl *call, svc *serviceEntry, typeID uint16, pid int, key invKey, retry bool) (uint64, error) {
	id, err := s.register(c, cl)
	if err != nil {
		return 0, err
	}
	f := transport.Frame{Kind: transport.KindRequest, CallID: id, Held: true, Service: svc.name, Partition: pid, Op: cl.op}
	err = s.send(c, f, func(w *spi.Writer) error {
		w.WriteUint32(svc.id)
		w.WriteUint16(typeID)
		w.WriteVarint(int64(pid))
		w.WriteUint64(key.Origin)
		w.WriteUvarint(key.Seq)
		w.WriteBool(retry)
		cl.op.WriteData(w)
		return nil
	})
	if err != nil {
		if !forget(c, id) {
			// Closed completed the call already; its answer is waiting.
			return id, nil
		}
		return 0, err
	}
	return id, nil
}

// sendBackupOn queues a backup frame on c, registering cl for its ack
// when cl is not nil (a synchronous backup).
func (s *Service) sendBackupOn(c *transport.Conn, cl *call, t task, typeID uint16, replica int, version int64, callerCall uint64, op spi.Operation) error {
	var id uint64
	if cl != nil {
		var err error
		if id, err = s.register(c, cl); err != nil {
			return err
		}
	}
	f := transport.Frame{Kind: transport.KindBackup, CallID: id, Held: t.byCaller, Service: t.svc.name, Partition: t.pid, Op: op}
	err := s.send(c, f, func(w *spi.Writer) error {
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
		return nil
	})
	if err != nil && cl != nil && !forget(c, id) {
		return nil // Closed completed the call already: report it once
	}
	return err
}

// sendAnswer queues on c a backup's answer to call callID of the member
// at the other end, which it sent to primary (see sendBackups).
func (s *Service) sendAnswer(c *transport.Conn, t task) error {
	f := transport.Frame{Kind: transport.KindAnswer, CallID: t.callerCall, Service: t.svc.name, Partition: t.pid, Op: t.op}
	primary := t.conn.Remote().ID
	return s.send(c, f, func(w *spi.Writer) error {
		w.WriteString(primary)
		w.SetBuffer(append(w.Bytes(), t.resp...))
		return nil
	})
}

// sendResponse queues on c the answer to request callID received on it.
func (s *Service) sendResponse(c *transport.Conn, callID uint64, op spi.Operation, resp any, err error) {
	if err == nil {
		f := transport.Frame{Kind: transport.KindResponse, CallID: callID, Op: op}
		err = s.send(c, f, func(w *spi.Writer) error {
			if codec, ok := op.(spi.ResponseCodec); ok && resp != nil {
				w.WriteUint8(tagCustom)
				codec.WriteResponse(w, resp)
				return nil
			}
			return writeValue(w, resp)
		})
		if err == nil || c.IsClosed() {
			return
		}
		s.log.Error("cannot send response", "remote", c.Remote().Address, "error", err)
	}
	s.sendError(c, callID, err)
}

// sendError answers call callID on c with err.
func (s *Service) sendError(c *transport.Conn, callID uint64, err error) {
	s.send(c, transport.Frame{Kind: transport.KindError, CallID: callID}, func(w *spi.Writer) error {
		transport.WriteError(w, err)
		return nil
	})
}

// Frame implements transport.Handler: it handles one frame received on
// c. Unless wait, it returns transport.ErrWouldWait rather than wait for
// room in an executor's queue (the frame may then be handled again, from
// the start).
func (s *Service) Frame(c *transport.Conn, h transport.Header, r *spi.Reader, wait bool) error {
	switch h.Kind {
	case transport.KindRequest:
		return s.handleRequest(c, h.CallID, r, false, wait)
	case transport.KindBackup:
		return s.handleRequest(c, h.CallID, r, true, wait)
	case transport.KindResponse, transport.KindError:
		cl := take(c, h.CallID)
		if cl == nil {
			return nil // the caller gave up
		}
		if h.Kind == transport.KindError {
			cl.complete(nil, transport.DecodeError(r.Rest(), c.Remote().Address))
			return nil
		}
		codec, _ := cl.op.(spi.ResponseCodec)
		v, err := readValue(r, codec)
		if err != nil {
			err = fmt.Errorf("bad response from %s: %w", c.Remote().Address, err)
		}
		cl.complete(v, err)
	case transport.KindAnswer:
		primary := r.ReadString()
		if err := r.Err(); err != nil {
			return fmt.Errorf("%w: answer frame: %w", spi.ErrProtocol, err)
		}
		// The call is pending on the connection it was sent on: this
		// member's connection to the primary.
		var cl *call
		if pc := s.tr.Connected(primary); pc != nil {
			cl = takeAnswerable(pc, h.CallID)
		}
		if cl == nil {
			return nil // answered by the primary already, or the caller gave up
		}
		s.m.backupAnswers.Inc()
		rest := r.Rest()
		v, err := decodeResponse(r, cl.op, rest)
		if err != nil {
			err = fmt.Errorf("bad answer from %s: %w", c.Remote().Address, err)
		}
		cl.complete(v, err)
	default:
		return fmt.Errorf("%w: unexpected frame kind %d after hello", spi.ErrProtocol, h.Kind)
	}
	return nil
}

func (s *Service) handleRequest(c *transport.Conn, callID uint64, r *spi.Reader, backup, wait bool) error {
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
			s.log.Warn("rejecting backup", "remote", c.Remote().Address, "error", fail)
			s.sendError(c, callID, fail)
			return nil
		}
	} else {
		retry = r.ReadBool()
	}
	fail := func(err error) {
		s.log.Warn("rejecting request", "remote", c.Remote().Address, "error", err)
		if callID != 0 {
			s.sendError(c, callID, err)
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
	t := task{op: op, svc: svc, pid: int(pid), caller: c.Remote().Address, conn: c, callID: callID,
		replica: int(replica), version: int64(version), key: key, resp: resp, retry: retry, st: svc.statsByID[tid],
		callerCall: callerCall, callerID: callerID}
	if s.runInline(t, false) {
		return nil
	}
	if !wait {
		if s.tryEnqueue(t) {
			return nil
		}
		return transport.ErrWouldWait
	}
	// Blocking here pushes back on the sender through TCP.
	if err := s.enqueue(context.Background(), t); err != nil {
		s.finish(t, nil, err)
	}
	return nil
}

// HandleConn serves a connection accepted on the operation port (after the
// node engine's protocol selector byte). It returns at once; the
// connection's goroutines run until it closes.
func (s *Service) HandleConn(nc net.Conn) { s.tr.Accept(nc) }
