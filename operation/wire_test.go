package operation

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoOp responds with its payload; it is the only type of service "echo".
type echoOp struct{ S string }

func (o *echoOp) Run(*spi.OpContext) error     { return nil }
func (o *echoOp) Response() any                { return o.S }
func (o *echoOp) WriteData(w *spi.Writer)      { w.WriteString(o.S) }
func (o *echoOp) ReadData(r *spi.Reader) error { o.S = r.ReadString(); return r.Err() }
func echoTypes() []spi.OperationType {
	return []spi.OperationType{{ID: 1, New: func() spi.Operation { return new(echoOp) }}}
}

type selfRouting struct{ id string }

func (r selfRouting) Owner(int) (string, string, bool)    { return r.id, "local", true }
func (r selfRouting) MemberAddress(string) (string, bool) { return "", false }
func (r selfRouting) Backups(int, []Replica) []Replica    { return nil }
func (r selfRouting) ReplicaIndex(int) int                { return 0 }

// newTestService starts a Service that owns every partition.
func newTestService(t testing.TB) *Service {
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 2, Routing: selfRouting{"self"}})
	if err := s.Register("echo", nil, echoTypes()); err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	return s
}

func TestValueRoundTrip(t *testing.T) {
	for _, v := range []any{nil, true, false, int64(-5), 42, uint64(1 << 60), 2.5, "s", []byte("b")} {
		w := spi.NewWriter(nil)
		if err := writeValue(w, v); err != nil {
			t.Fatal(err)
		}
		got, err := readValue(spi.NewReader(w.Bytes()), nil)
		if err != nil {
			t.Fatalf("%T: %v", v, err)
		}
		if b, ok := v.([]byte); ok {
			if !bytes.Equal(got.([]byte), b) {
				t.Fatalf("bytes: got %v", got)
			}
			continue
		}
		if got != v {
			t.Fatalf("got %#v, want %#v", got, v)
		}
	}
	if err := writeValue(spi.NewWriter(nil), struct{}{}); err == nil {
		t.Fatal("struct response accepted without a ResponseCodec")
	}
}

// pipeConn returns a conn of s over an in-memory pipe and the peer's end,
// whose output is drained so the writer never blocks.
func pipeConn(t testing.TB, s *Service) (*transport.Conn, net.Conn) {
	a, b := net.Pipe()
	c, err := s.stream.Open(a, transport.Hello{Version: ProtocolVersion, Cluster: "dev", ID: "peer", Address: "peer"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); io.Copy(io.Discard, b) }()
	t.Cleanup(func() { c.Close(spi.ErrShutdown); b.Close(); <-done })
	return c, b
}

func requestFrame(callID uint64, sid uint32, tid uint16, pid int64, data string) []byte {
	buf, start := transport.BeginFrame(nil, transport.KindRequest, callID)
	w := spi.Writer{}
	w.SetBuffer(buf)
	w.WriteUint32(sid)
	w.WriteUint16(tid)
	w.WriteVarint(pid)
	w.WriteUint64(7)
	w.WriteUvarint(callID)
	w.WriteBool(false)
	w.WriteString(data)
	buf = w.Bytes()
	transport.EndFrame(buf, start)
	return buf
}

// FuzzFrame feeds arbitrary bytes to the frame reader and handler of a
// live connection: nothing may panic, and a frame-level error must be an
// ErrProtocol (the connection is then closed by readLoop).
func FuzzFrame(f *testing.F) {
	s := newTestService(f)
	sid := s.byName["echo"].id
	f.Add(requestFrame(1, sid, 1, 3, "hello"))
	f.Add(requestFrame(2, sid, 9, 3, "unknown type"))
	f.Add(requestFrame(3, 12345, 1, 3, "unknown service"))
	f.Add(requestFrame(4, sid, 1, 99, "bad partition"))
	f.Add(transport.AppendError(nil, 5, spi.ErrWrongTarget))
	f.Add(transport.AppendHello(nil, transport.Hello{Version: 1, Cluster: "dev", ID: "x", Address: "y"}))
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 2})
	// A backup's forwarded answer (the fuzzed connection is also the one
	// to the "primary", with calls 7 and 9 pending on it): a value, a
	// codec's response, for no pending call, and cut short.
	answerFrame := func(callID uint64, primary string, value func(w *spi.Writer)) []byte {
		buf, start := transport.BeginFrame(nil, transport.KindAnswer, callID)
		w := &spi.Writer{}
		w.SetBuffer(buf)
		w.WriteString(primary)
		value(w)
		buf = w.Bytes()
		transport.EndFrame(buf, start)
		return buf
	}
	f.Add(answerFrame(9, "peer", func(w *spi.Writer) { writeValue(w, int64(42)) }))
	f.Add(answerFrame(7, "peer", func(w *spi.Writer) {
		w.WriteUint8(tagCustom)
		(&codecBackedOp{}).WriteResponse(w, pair{1, 2})
	}))
	f.Add(answerFrame(5, "nobody", func(w *spi.Writer) { writeValue(w, "x") }))
	short, start := transport.BeginFrame(nil, transport.KindAnswer, 8)
	short = append(short, 100, 'p') // a 100-byte member id, cut short
	transport.EndFrame(short, start)
	f.Add(short)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _ := pipeConn(t, s) // also the route to "peer"
		h := &transport.HeldWrites{}
		pending := []*call{newCall(&codecBackedOp{}), newCall(&backedOp{})}
		l := linkOf(c)
		l.mu.Lock()
		for i, cl := range pending {
			cl.held = h
			l.pending[uint64(7+2*i)] = cl
		}
		l.mu.Unlock()
		br := bufio.NewReader(bytes.NewReader(data))
		var buf []byte
		for {
			var err error
			buf, err = transport.ReadFrame(br, buf)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, spi.ErrProtocol) {
					t.Fatalf("readFrame error %v is not EOF or ErrProtocol", err)
				}
				return
			}
			if err := c.Handle(buf); err != nil {
				if !errors.Is(err, spi.ErrProtocol) {
					t.Fatalf("handle error %v is not ErrProtocol", err)
				}
				return
			}
		}
	})
}

func TestLocalInvokeAndUnknowns(t *testing.T) {
	s := newTestService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := s.Invoke(ctx, "echo", &echoOp{S: "hi"}, 3)
	if err != nil || v != "hi" {
		t.Fatalf("Invoke = %v, %v", v, err)
	}
	if _, err := s.Invoke(ctx, "nope", &echoOp{}, 3); !errors.Is(err, spi.ErrUnknownService) {
		t.Fatalf("unknown service: %v", err)
	}
	if _, err := s.Invoke(ctx, "echo", &echoOp{}, 7); err == nil {
		t.Fatal("partition out of range accepted")
	}
}
