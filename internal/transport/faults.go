package transport

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/partita-go/partita/spi"
)

// Message is a fault rule's view of a frame: a request, a backup or a
// backup's forwarded answer leaving From for To, or (Response) the
// successful answer to a request of From's arriving from To.
type Message struct {
	From, To  string // member IDs: the request's sender and receiver
	Frame     uint8  // KindRequest, KindBackup or KindAnswer
	Service   string
	Partition int // -1: generic
	// Op is the operation: the request's, the backup operation of a
	// backup or forwarded answer.
	Op spi.Operation
	// Response is set when the rule sees the answer arriving back at the
	// caller (From) instead of the request leaving it.
	Response bool
}

// Kind names the message for fault rules: a backup is
// "backup/<Go type>", a forwarded answer "answer/<Go type>" (of the backup
// operation); a request is named by its operation's MessageKind() when it
// has one (the engine's operations: "table.publish"...), else
// "<service>/<Go type>".
func (m Message) Kind() string {
	switch m.Frame {
	case KindBackup:
		return fmt.Sprintf("backup/%T", m.Op)
	case KindAnswer:
		return fmt.Sprintf("answer/%T", m.Op)
	}
	if k, ok := m.Op.(interface{ MessageKind() string }); ok {
		return k.MessageKind()
	}
	return fmt.Sprintf("%s/%T", m.Service, m.Op)
}

// Verdict is a fault rule's decision about one message. The zero Verdict
// lets it through untouched. A held or delayed message lets the frames
// after it pass: that is how messages are reordered.
type Verdict struct {
	// Hold, when not nil, holds the message until it is closed (or its
	// connection closes).
	Hold <-chan struct{}
	// Delay holds the message this long (after Hold).
	Delay time.Duration
	// Drop loses the message (after Hold and Delay): a dropped request or
	// synchronous backup fails its sender's call with spi.ErrMemberLeft,
	// as a broken connection would; a dropped answer fails the caller's
	// call so, after the operation ran; a dropped asynchronous backup or
	// forwarded answer is simply lost.
	Drop bool
	// Cut closes the message's connection (after Hold and Delay) instead
	// of sending it: every call waiting on it fails with
	// spi.ErrMemberLeft, on both ends.
	Cut bool
}

func (v Verdict) pass() bool { return v.Hold == nil && v.Delay == 0 && !v.Drop && !v.Cut }

// Faults is a Transport that wraps a Stream and asks a rule the fate of
// every request, backup and forwarded answer before it is sent, and of
// every successful answer to a request when it arrives. It is also the
// Stream's Handler, in front of the real one. Tests install it (through
// the operation service's Hook); it costs nothing when absent.
type Faults struct {
	*Stream
	local string
	rule  func(Message) Verdict
	h     Handler // the real one

	mu       sync.Mutex
	requests map[callRef]*request // requests sent, until answered
	quit     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

type callRef struct {
	c  *Conn
	id uint64
}

// request is a request sent through Faults, for the rules about its
// answers: the primary's and, for a backed-up operation, its backup's.
// The first answer is put to the rule; the later ones get its verdict.
type request struct {
	m       Message
	decided bool
	v       Verdict
}

var (
	_ Transport = (*Faults)(nil)
	_ Handler   = (*Faults)(nil)
)

// NewFaults returns a wrapper that asks rule about the messages of member
// local and hands what arrives to h. Give it to NewStream as the Handler,
// then Wrap the Stream.
func NewFaults(local string, rule func(Message) Verdict, h Handler) *Faults {
	return &Faults{local: local, rule: rule, h: h, requests: make(map[callRef]*request), quit: make(chan struct{})}
}

// Wrap makes f send through s.
func (f *Faults) Wrap(s *Stream) { f.Stream = s }

// Send implements Transport.
func (f *Faults) Send(c *Conn, fr Frame, body func(w *spi.Writer) error) error {
	switch fr.Kind {
	case KindRequest, KindBackup, KindAnswer:
	default:
		return f.Stream.Send(c, fr, body)
	}
	m := Message{From: f.local, To: c.remote.ID, Frame: fr.Kind, Service: fr.Service, Partition: fr.Partition, Op: fr.Op}
	if fr.Kind == KindRequest && fr.CallID != 0 {
		f.mu.Lock()
		f.requests[callRef{c, fr.CallID}] = &request{m: m}
		f.mu.Unlock()
	}
	v := f.rule(m)
	switch {
	case v.pass():
		return f.Stream.Send(c, fr, body)
	case v.Hold == nil && v.Delay == 0:
		f.forget(c, fr.CallID)
		return f.lose(c, v, m)
	}
	// Encode it now (body may refer to what changes after we return),
	// send it later.
	var w spi.Writer
	if err := body(&w); err != nil {
		return err
	}
	payload := w.Bytes()
	fr.Held = false
	f.later(c, v, func() {
		err := f.lose(c, v, m)
		if err == nil {
			err = f.Stream.Send(c, fr, func(w *spi.Writer) error {
				w.SetBuffer(append(w.Bytes(), payload...))
				return nil
			})
		}
		if err != nil && fr.CallID != 0 {
			f.fail(c, fr.CallID, err)
		}
	})
	return nil
}

// lose carries out a Drop or a Cut: the error the sender sees, or nil to
// send the message after all.
func (f *Faults) lose(c *Conn, v Verdict, m Message) error {
	switch {
	case v.Cut:
		// Not on this goroutine: it may be c's reader, which a Close
		// waits for.
		err := fmt.Errorf("%w: connection cut by a fault rule at %s", spi.ErrMemberLeft, m.Kind())
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			c.Close(err)
		}()
		return err
	case v.Drop:
		return fmt.Errorf("%w: %s dropped by a fault rule", spi.ErrMemberLeft, m.Kind())
	}
	return nil
}

// later runs fn once v's hold and delay are over, on a goroutine of its
// own; not at all if c or f closes first.
func (f *Faults) later(c *Conn, v Verdict, fn func()) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-c.Done():
			case <-f.quit:
			case <-ctx.Done():
			}
			cancel()
		}()
		if v.Hold != nil {
			select {
			case <-v.Hold:
			case <-ctx.Done():
				return
			}
		}
		if v.Delay > 0 {
			t := time.NewTimer(v.Delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
		fn()
	}()
}

// fail completes call id on c with err, as an error frame would.
func (f *Faults) fail(c *Conn, id uint64, err error) {
	var w spi.Writer
	WriteError(&w, err)
	f.h.Frame(c, Header{Kind: KindError, CallID: id}, spi.NewReader(w.Bytes()), true)
}

// forget drops the record of request id on c.
func (f *Faults) forget(c *Conn, id uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.requests, callRef{c, id})
}

// verdict returns the rule's verdict on an answer to request id sent on
// c, the same for every answer to it; false when the request was not
// sent through f. A request whose answers pass is forgotten.
func (f *Faults) verdict(c *Conn, id uint64) (Message, Verdict, bool) {
	f.mu.Lock()
	r, ok := f.requests[callRef{c, id}]
	f.mu.Unlock()
	if !ok {
		return Message{}, Verdict{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !r.decided {
		r.m.Response = true
		r.v, r.decided = f.rule(r.m), true
	}
	if r.v.pass() {
		delete(f.requests, callRef{c, id})
	}
	return r.m, r.v, true
}

// Opened implements Handler.
func (f *Faults) Opened(c *Conn) { f.h.Opened(c) }

// Frame implements Handler: the successful answers to a request sent
// through f (the primary's response, and a backup's forwarded answer,
// which arrives on another connection) are put to the rule.
func (f *Faults) Frame(c *Conn, h Header, r *spi.Reader, wait bool) error {
	call := c // the connection the request was sent on
	switch h.Kind {
	case KindResponse:
	case KindAnswer:
		primary := spi.NewReader(r.Rest()).ReadString()
		if call = f.Connected(primary); call == nil {
			return f.h.Frame(c, h, r, wait)
		}
	case KindError:
		f.forget(c, h.CallID)
		return f.h.Frame(c, h, r, wait)
	default:
		return f.h.Frame(c, h, r, wait)
	}
	m, v, ok := f.verdict(call, h.CallID)
	if !ok || v.pass() {
		return f.h.Frame(c, h, r, wait)
	}
	payload := append([]byte(nil), r.Rest()...)
	f.later(c, v, func() {
		if err := f.lose(call, v, m); err != nil {
			if !v.Cut {
				f.fail(call, h.CallID, fmt.Errorf("%w: the answer to %s was dropped by a fault rule", spi.ErrMemberLeft, m.Kind()))
			}
			return
		}
		f.h.Frame(c, h, spi.NewReader(payload), true)
	})
	return nil
}

// Closed implements Handler.
func (f *Faults) Closed(c *Conn, err error) {
	f.mu.Lock()
	for k := range f.requests {
		if k.c == c {
			delete(f.requests, k)
		}
	}
	f.mu.Unlock()
	f.h.Closed(c, err)
}

// Close implements Transport: held messages are dropped.
func (f *Faults) Close() {
	f.once.Do(func() { close(f.quit) })
	f.Stream.Close()
}

// Wait implements Transport.
func (f *Faults) Wait() {
	f.Stream.Wait()
	f.wg.Wait()
}
