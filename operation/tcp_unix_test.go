//go:build unix

package operation

import (
	"bufio"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// tcpDialer returns a Config.Dial that connects to to over loopback TCP,
// so both ends are turnConns and read with readFrames.
func tcpDialer(t *testing.T, to func() *Service) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, _ string) (net.Conn, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		acc := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			acc <- c
		}()
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		b := <-acc
		if b == nil {
			d.Close()
			return nil, errors.New("accept failed")
		}
		to().HandleConn(b)
		return d, nil
	}
}

// readFrames runs handle inside RawConn.Read, which holds
// the descriptor's read lock, and (*poll.FD).Close waits until every
// reference is dropped. So conn.close (MemberLeft, Shutdown, the writer
// on a write error) blocked for as long as the reader's handle did: here
// handleRequest waits for room in a full executor queue. Now a frame that
// would wait is handled again off the socket (transport.ErrWouldWait).
func TestMemberLeftDoesNotWaitForTheReadersHandle(t *testing.T) {
	var p *Service
	p = New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1,
		QueueSize: 1, Routing: threeRouting{"p"}, InvocationTimeout: 30 * time.Second})
	if err := p.Register("svc", nil, backedTypes()); err != nil {
		t.Fatal(err)
	}
	p.Start()
	c := New(Config{ClusterName: "dev", LocalID: "c", LocalAddress: "c:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: threeRouting{"c"}, RetryPause: time.Millisecond, InvocationTimeout: 30 * time.Second,
		Dial: tcpDialer(t, func() *Service { return p })})
	if err := c.Register("svc", nil, backedTypes()); err != nil {
		t.Fatal(err)
	}
	c.Start()
	block := make(chan struct{})
	released := false
	release := func() {
		if !released {
			released = true
			close(block)
		}
	}
	defer func() { release(); c.Shutdown(); p.Shutdown() }()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Invoke(ctx, "svc", &echoOp{S: "warm"}, 1); err != nil { // connects
		t.Fatal(err)
	}
	p.RunOnPartition(1, func() { <-block }) // p's only executor is busy
	for i := 0; i < 3; i++ {                // one fills the queue, the next one holds p's reader
		go c.Invoke(ctx, "svc", &echoOp{S: "x"}, 1)
	}
	waitParked(t, "(*Service).enqueue", "(*Service).handleRequest", "readFrames")

	left := make(chan struct{})
	go func() {
		p.MemberLeft("c")
		close(left)
	}()
	select {
	case <-left:
	case <-time.After(3 * time.Second):
		release() // let the test end
		<-left
		t.Fatal("MemberLeft waited for the reader's handle (a full executor queue) to return")
	}
}

// A request sent in the same write as the hello is read by
// readHello's bufio.Reader and must reach readFrames as pre.
func TestRequestReadWithTheHelloIsServed(t *testing.T) {
	p := New(Config{ClusterName: "dev", LocalID: "p", LocalAddress: "p:1", PartitionCount: 7, PartitionThreads: 1,
		Routing: threeRouting{"p"}})
	if err := p.Register("svc", nil, backedTypes()); err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Shutdown()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			p.HandleConn(c)
		}
	}()
	q, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	out := transport.AppendHello(nil, transport.Hello{Version: ProtocolVersion, Cluster: "dev", ID: "q", Address: "q:1"})
	for i := uint64(1); i <= 3; i++ {
		var start int
		out, start = transport.BeginFrame(out, transport.KindRequest, i)
		w := spi.NewWriter(nil)
		w.WriteUint32(p.byName["svc"].id)
		w.WriteUint16(1)
		w.WriteVarint(1)
		w.WriteUint64(7)
		w.WriteUvarint(i)
		w.WriteBool(false)
		(&echoOp{S: "hi"}).WriteData(w)
		out = append(out, w.Bytes()...)
		transport.EndFrame(out, start)
	}
	if _, err := q.Write(out); err != nil {
		t.Fatal(err)
	}
	q.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(q)
	if _, err := transport.ReadHello(br); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 3; i++ {
		body, err := transport.ReadFrame(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		h, payload, err := transport.ParseHeader(body)
		if err != nil || h.Kind != transport.KindResponse || h.CallID != i {
			t.Fatalf("frame %d: kind %d call %d, %v", i, h.Kind, h.CallID, err)
		}
		if v, err := readValue(spi.NewReader(payload), nil); v != "hi" || err != nil {
			t.Fatalf("response %v, %v", v, err)
		}
	}
}
