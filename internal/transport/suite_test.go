package transport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/spi"
)

// The transport suite: every test runs over loopback TCP and over the
// in-memory Network, with and without the fault wrapper where it matters.

// network is one of the suite's networks: listen serves a Stream's
// accepted connections at an address it returns.
type network struct {
	name   string
	dial   func(ctx context.Context, address string) (net.Conn, error)
	listen func(t *testing.T, accept func(net.Conn)) string
}

func networks() []network {
	mem := NewNetwork()
	var d net.Dialer
	n := 0
	var mu sync.Mutex
	return []network{
		{name: "tcp",
			dial: func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) },
			listen: func(t *testing.T, accept func(net.Conn)) string {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				done := make(chan struct{})
				go func() {
					defer close(done)
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						accept(c)
					}
				}()
				t.Cleanup(func() { ln.Close(); <-done })
				return ln.Addr().String()
			}},
		{name: "memory", dial: mem.Dial,
			listen: func(t *testing.T, accept func(net.Conn)) string {
				mu.Lock()
				n++
				a := "mem:" + string(rune('a'+n))
				mu.Unlock()
				t.Cleanup(mem.Listen(a, accept))
				return a
			}},
	}
}

// got is a frame a recorder received.
type got struct {
	from    string
	kind    uint8
	callID  uint64
	payload string
}

// recorder is a Handler that records every frame and the closes, and
// answers each request that expects an answer (a call id) with a
// response carrying the request's payload.
type recorder struct {
	tr     func() Transport
	frames chan got
	closed chan error
}

func newRecorder() *recorder {
	return &recorder{frames: make(chan got, 64), closed: make(chan error, 8)}
}

func (r *recorder) Opened(*Conn) {}
func (r *recorder) Frame(c *Conn, h Header, rd *spi.Reader, wait bool) error {
	p := string(rd.Rest())
	r.frames <- got{c.Remote().ID, h.Kind, h.CallID, p}
	if h.Kind == KindRequest && h.CallID != 0 {
		return r.tr().Send(c, Frame{Kind: KindResponse, CallID: h.CallID}, func(w *spi.Writer) error {
			w.SetBuffer(append(w.Bytes(), p...))
			return nil
		})
	}
	return nil
}
func (r *recorder) Closed(c *Conn, err error) { r.closed <- err }

// member is one end of the suite: a Stream (maybe wrapped) at an address.
type member struct {
	id, addr string
	tr       Transport
	rec      *recorder
}

func startMember(t *testing.T, nw network, id, cluster string, rule func(Message) Verdict, opts ...func(*Config)) *member {
	m := &member{id: id, rec: newRecorder()}
	m.rec.tr = func() Transport { return m.tr }
	var h Handler = m.rec
	var f *Faults
	if rule != nil {
		f = NewFaults(id, rule, h)
		h = f
	}
	var s *Stream
	ready := make(chan struct{}) // s is set
	m.addr = nw.listen(t, func(nc net.Conn) { <-ready; s.Accept(nc) })
	cfg := Config{Local: Hello{Version: ProtocolVersion, Cluster: cluster, ID: id, Address: m.addr},
		Dial: nw.dial, Handler: h, FrameBodyTimeout: 300 * time.Millisecond, TickPeriod: 50 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	s = NewStream(cfg)
	m.tr = s
	if f != nil {
		f.Wrap(s)
		m.tr = f
	}
	close(ready)
	quit := make(chan struct{})
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-tk.C:
				m.tr.Tick()
			case <-quit:
				return
			}
		}
	}()
	t.Cleanup(func() { close(quit); <-ticked; m.tr.Close(); m.tr.Wait() })
	return m
}

func (m *member) connect(t *testing.T, to *member) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := m.tr.Conn(ctx, to.id, to.addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (m *member) send(c *Conn, kind uint8, id uint64, payload string) error {
	return m.tr.Send(c, Frame{Kind: kind, CallID: id, Service: "svc", Op: named(payload)}, func(w *spi.Writer) error {
		w.SetBuffer(append(w.Bytes(), payload...))
		return nil
	})
}

// named is an operation whose fault-rule kind is its name.
type named string

func (n named) Run(*spi.OpContext) error   { return nil }
func (n named) Response() any              { return nil }
func (n named) WriteData(*spi.Writer)      {}
func (n named) ReadData(*spi.Reader) error { return nil }
func (n named) MessageKind() string        { return string(n) }

func next(t *testing.T, ch <-chan got) got {
	t.Helper()
	return testkit.Recv(t, ch, "a frame")
}

func none(t *testing.T, ch <-chan got, within time.Duration) {
	t.Helper()
	select {
	case g := <-ch:
		t.Fatalf("unexpected frame %+v", g)
	case <-time.After(within):
	}
}

func forEach(t *testing.T, f func(t *testing.T, nw network)) {
	for _, nw := range networks() {
		t.Run(nw.name, func(t *testing.T) { f(t, nw) })
	}
}

// Frames go both ways on one connection, in order, and the accepted
// connection becomes the way back to the dialler.
func TestSuiteFramesBothWays(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		a, b := startMember(t, nw, "a", "dev", nil), startMember(t, nw, "b", "dev", nil)
		c := a.connect(t, b)
		for i := range 3 {
			if err := a.send(c, KindRequest, uint64(i+1), "ping"); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 3 {
			if g := next(t, b.rec.frames); g.from != "a" || g.kind != KindRequest || g.callID != uint64(i+1) || g.payload != "ping" {
				t.Fatalf("b got %+v", g)
			}
			if g := next(t, a.rec.frames); g.from != "b" || g.kind != KindResponse || g.callID != uint64(i+1) || g.payload != "ping" {
				t.Fatalf("a got %+v", g)
			}
		}
		if back := b.tr.Connected("a"); back == nil {
			t.Fatal("b has no connection back to a")
		}
	})
}

// A peer of another cluster or protocol version is refused with
// spi.ErrClusterMismatch, naming what differs; a peer answering under
// another member ID (restarted) is not taken for the one dialled.
func TestSuiteHelloRefusals(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		a, other := startMember(t, nw, "a", "dev", nil), startMember(t, nw, "x", "prod", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := a.tr.Conn(ctx, "x", other.addr)
		if !errors.Is(err, spi.ErrClusterMismatch) || !bytes.Contains([]byte(err.Error()), []byte(`"prod"`)) {
			t.Fatalf("dial to another cluster: %v", err)
		}
		b := startMember(t, nw, "b", "dev", nil)
		if _, err := a.tr.Conn(ctx, "not-b", b.addr); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("dial to a member answering as another: %v", err)
		}
		// Another protocol version, by hand.
		nc, err := nw.dial(ctx, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		nc.Write(AppendHello(nil, Hello{Version: ProtocolVersion + 1, Cluster: "dev", ID: "z", Address: "z"}))
		if _, err := ReadHello(bufioReader(nc)); !errors.Is(err, spi.ErrClusterMismatch) {
			t.Fatalf("hello of another protocol version: %v", err)
		}
	})
}

// Closing a member's connections tells both ends' handlers.
func TestSuiteCloseMember(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		a, b := startMember(t, nw, "a", "dev", nil), startMember(t, nw, "b", "dev", nil)
		c := a.connect(t, b)
		a.send(c, KindRequest, 1, "x")
		next(t, b.rec.frames)
		next(t, a.rec.frames)
		a.tr.CloseMember("b", spi.ErrMemberLeft)
		if err := testkit.Recv(t, a.rec.closed, "a's close"); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("a closed with %v", err)
		}
		testkit.Recv(t, b.rec.closed, "b's close")
		if err := a.send(c, KindRequest, 2, "x"); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("send on a closed connection: %v", err)
		}
		if a.tr.Connected("b") != nil {
			t.Fatal("a closed connection is still the way to b")
		}
	})
}

// A Stream whose Reachable cuts a peer off closes the open connections to
// it on CloseUnreachable (both ends see them close), refuses its
// connections after their hello, and fails its own dials to it; once
// Reachable lets it through, they connect again.
func TestSuiteReachable(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		var cut atomic.Bool
		a := startMember(t, nw, "a", "dev", nil)
		b := startMember(t, nw, "b", "dev", nil, func(c *Config) {
			c.Reachable = func(address string) bool { return !cut.Load() || address != a.addr }
		})
		c := a.connect(t, b)
		a.send(c, KindRequest, 1, "x")
		next(t, b.rec.frames) // b holds its end
		next(t, a.rec.frames)
		bs := b.tr.(*Stream)
		bs.CloseUnreachable() // nothing cut yet
		if a.tr.Connected("b") == nil {
			t.Fatal("CloseUnreachable closed a connection Reachable allows")
		}

		cut.Store(true)
		bs.CloseUnreachable()
		if err := testkit.Recv(t, b.rec.closed, "b's close"); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("b closed with %v; want ErrMemberLeft", err)
		}
		if err := testkit.Recv(t, a.rec.closed, "a's close"); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("a closed with %v; want ErrMemberLeft", err)
		}
		forgotten(t, a, "b") // Closed is told before the connection is forgotten
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := a.tr.Conn(ctx, "b", b.addr); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("a's dial to b, which cuts a off: %v; want ErrMemberLeft", err)
		}
		if _, err := b.tr.Conn(ctx, "a", a.addr); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("b's dial to a, which it cuts off: %v; want ErrMemberLeft", err)
		}
		// a, which cuts nobody off, took that connection and saw it close.
		testkit.Recv(t, a.rec.closed, "a's close of b's refused connection")
		forgotten(t, a, "b")

		cut.Store(false)
		ca := a.connect(t, b)
		a.send(ca, KindRequest, 2, "y")
		next(t, b.rec.frames)
		next(t, a.rec.frames)
		cb := b.connect(t, a)
		b.send(cb, KindRequest, 3, "z")
		next(t, a.rec.frames)
		next(t, b.rec.frames)
	})
}

// forgotten waits until m has no connection to member id, nor dials one.
func forgotten(t *testing.T, m *member, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for m.tr.Known(id) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still knows a connection to %s", m.id, id)
		}
		time.Sleep(time.Millisecond) // polling, not synchronisation
	}
}

// A peer that sends half a frame and stalls is cut after the body
// deadline; one idle between frames is not.
func TestSuiteHalfFrameIsCut(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		b := startMember(t, nw, "b", "dev", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		nc, err := nw.dial(ctx, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		go io.Copy(io.Discard, nc) // b's hello and answers
		nc.Write(AppendHello(nil, Hello{Version: ProtocolVersion, Cluster: "dev", ID: "slow", Address: "slow"}))
		frame := func(payload string) []byte {
			buf, start := BeginFrame(nil, KindRequest, 1)
			buf = append(buf, payload...)
			EndFrame(buf, start)
			return buf
		}
		time.Sleep(600 * time.Millisecond) // idle for twice the body deadline: allowed
		nc.Write(frame("after idling"))
		if g := next(t, b.rec.frames); g.payload != "after idling" {
			t.Fatalf("b got %+v", g)
		}
		half := frame("a frame that never ends")
		nc.Write(half[:10])
		err = testkit.Recv(t, b.rec.closed, "the stalled connection to be cut")
		if !errors.Is(err, errBodyTimeout) {
			t.Fatalf("closed with %v, want the body timeout", err)
		}
	})
}

// A peer that speaks the protocol but is not a member (Config.Member) is
// cut after the grace, and reported; a member's connection is not.
func TestSuiteUnknownPeerIsCut(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		rejected := make(chan string, 4)
		b := startMember(t, nw, "b", "dev", nil, func(c *Config) {
			c.Member = func(id string) bool { return id == "a" }
			c.UnknownPeerGrace = 200 * time.Millisecond
			c.Reject = func(reason, _ string, _ error) { rejected <- reason }
		})
		a, x := startMember(t, nw, "a", "dev", nil), startMember(t, nw, "x", "dev", nil)
		ca, cx := a.connect(t, b), x.connect(t, b)
		if r := testkit.Recv(t, rejected, "the stranger to be cut"); r != RejectUnknownPeer {
			t.Fatalf("rejected for %q, want %q", r, RejectUnknownPeer)
		}
		testkit.Recv(t, x.rec.closed, "the stranger's end to close")
		if err := x.send(cx, KindRequest, 1, "x"); err == nil {
			t.Fatal("the stranger's connection still takes frames")
		}
		if err := a.send(ca, KindRequest, 1, "a"); err != nil {
			t.Fatal(err)
		}
		if g := next(t, b.rec.frames); g.from != "a" {
			t.Fatalf("b got %+v", g)
		}
	})
}

// The fault wrapper: a dropped request fails its send with
// spi.ErrMemberLeft and never arrives; a held one arrives once released,
// after the frames sent behind it (reordered); a delayed one arrives late;
// a cut closes both ends.
func TestSuiteFaults(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		hold := make(chan struct{})
		rule := func(m Message) Verdict {
			switch m.Kind() {
			case "drop":
				return Verdict{Drop: true}
			case "hold":
				return Verdict{Hold: hold}
			case "delay":
				return Verdict{Delay: 100 * time.Millisecond}
			case "cut":
				return Verdict{Cut: true}
			}
			return Verdict{}
		}
		a, b := startMember(t, nw, "a", "dev", rule), startMember(t, nw, "b", "dev", nil)
		c := a.connect(t, b)
		if err := a.send(c, KindRequest, 0, "drop"); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("dropped send: %v", err)
		}
		if err := a.send(c, KindRequest, 0, "hold"); err != nil {
			t.Fatal(err)
		}
		if err := a.send(c, KindRequest, 0, "delay"); err != nil {
			t.Fatal(err)
		}
		a.send(c, KindRequest, 0, "plain")
		if g := next(t, b.rec.frames); g.payload != "plain" {
			t.Fatalf("first to arrive: %+v, want the plain frame", g)
		}
		if g := next(t, b.rec.frames); g.payload != "delay" {
			t.Fatalf("second to arrive: %+v, want the delayed frame", g)
		}
		none(t, b.rec.frames, 50*time.Millisecond)
		close(hold)
		if g := next(t, b.rec.frames); g.payload != "hold" {
			t.Fatalf("after the release: %+v, want the held frame", g)
		}
		if err := a.send(c, KindRequest, 0, "cut"); !errors.Is(err, spi.ErrMemberLeft) {
			t.Fatalf("cut send: %v", err)
		}
		testkit.Recv(t, a.rec.closed, "a's end to close")
		testkit.Recv(t, b.rec.closed, "b's end to close")
		none(t, b.rec.frames, 50*time.Millisecond)
	})
}

// A rule on answers: a dropped answer fails the caller's call with
// spi.ErrMemberLeft (the request was served); a held one is delivered
// once released.
func TestSuiteFaultsOnAnswers(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		hold := make(chan struct{})
		rule := func(m Message) Verdict {
			if !m.Response {
				return Verdict{}
			}
			switch m.Kind() {
			case "drop":
				return Verdict{Drop: true}
			case "hold":
				return Verdict{Hold: hold}
			}
			return Verdict{}
		}
		a, b := startMember(t, nw, "a", "dev", rule), startMember(t, nw, "b", "dev", nil)
		c := a.connect(t, b)
		a.send(c, KindRequest, 1, "drop")
		a.send(c, KindRequest, 2, "hold")
		a.send(c, KindRequest, 3, "plain")
		for range 3 {
			next(t, b.rec.frames) // b served all three
		}
		byCall := map[uint64]got{}
		for range 2 { // in either order: a rule's verdict is carried out off the reader
			g := next(t, a.rec.frames)
			byCall[g.callID] = g
		}
		if g := byCall[1]; g.kind != KindError || !errors.Is(DecodeError([]byte(g.payload), "b"), spi.ErrMemberLeft) {
			t.Fatalf("the dropped answer gave %+v", g)
		}
		if g := byCall[3]; g.kind != KindResponse || g.payload != "plain" {
			t.Fatalf("the plain answer gave %+v", g)
		}
		close(hold)
		if g := next(t, a.rec.frames); g.kind != KindResponse || g.callID != 2 || g.payload != "hold" {
			t.Fatalf("after the release %+v, want the held answer", g)
		}
	})
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// A paused Stream hands no frame to its Handler and writes none until it
// is resumed; then everything held arrives, in order. A connection closed
// during a pause ends its waits.
func TestSuitePause(t *testing.T) {
	forEach(t, func(t *testing.T, nw network) {
		a, b := startMember(t, nw, "a", "dev", nil), startMember(t, nw, "b", "dev", nil)
		c := a.connect(t, b)
		back := b.connect(t, a)
		resume := b.tr.(*Stream).Pause()
		for i := range 3 {
			if err := a.send(c, KindRequest, uint64(i+1), "in"); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.send(back, KindRequest, 0, "out"); err != nil { // queued
			t.Fatal(err)
		}
		none(t, b.rec.frames, 200*time.Millisecond)
		none(t, a.rec.frames, 0)
		resume()
		resume() // harmless
		for i := range 3 {
			if g := next(t, b.rec.frames); g.callID != uint64(i+1) {
				t.Fatalf("b got %+v; want request %d", g, i+1)
			}
		}
		// a gets b's queued frame (on b's connection to a) and the three
		// responses (on a's connection to b, in order): the two
		// connections are not ordered with each other.
		out, responses := false, 0
		for range 4 {
			switch g := next(t, a.rec.frames); {
			case g.kind == KindRequest && g.from == "b" && g.payload == "out" && !out:
				out = true
			case g.kind == KindResponse && g.callID == uint64(responses+1):
				responses++
			default:
				t.Fatalf("a got %+v; want b's frame written on resume, and the responses to 1, 2, 3 in order (%d so far)", g, responses)
			}
		}

		b.tr.(*Stream).Pause() // never resumed: Close ends it (Cleanup, goleak)
		a.send(c, KindRequest, 9, "held")
		b.send(back, KindRequest, 0, "held")
		none(t, b.rec.frames, 50*time.Millisecond)
	})
}

// Pauses nest: the gate opens once every one has been resumed.
func TestGateNests(t *testing.T) {
	var g Gate
	if g.Paused() != nil {
		t.Fatal("a zero Gate is paused")
	}
	r1 := g.Pause()
	ch := g.Paused()
	r2 := g.Pause()
	r1()
	r1()
	select {
	case <-ch:
		t.Fatal("opened with a pause still in force")
	default:
	}
	r2()
	select {
	case <-ch:
	default:
		t.Fatal("still closed after every resume")
	}
	if g.Paused() != nil {
		t.Fatal("paused after every resume")
	}
}
