package operation

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
	dto "github.com/prometheus/client_model/go"
)

// Three operation services over pipes: "p" owns every partition, "b"
// holds its one backup replica, "c" holds none and calls. Unlike
// threeRouting, every member is known (so the backup may dial the caller).
type fwdRouting struct{ threeRouting }

func (fwdRouting) MemberAddress(id string) (string, bool) {
	switch id {
	case "p", "b", "c":
		return id + ":1", true
	}
	return "", false
}

type fwdCluster struct{ p, b, c *Service }

// newFwdCluster starts p, b and c (hooks by member id) and has c invoke
// once, until b holds a connection to c: b forwards answers only on an
// open connection, and the first one only makes it dial.
func newFwdCluster(t *testing.T, hooks map[string]func(Message) Verdict) *fwdCluster {
	k := &fwdCluster{}
	member := func(address string) *Service {
		switch address {
		case "p:1":
			return k.p
		case "b:1":
			return k.b
		}
		return k.c
	}
	start := func(id string) *Service {
		s := New(Config{ClusterName: "dev", LocalID: id, LocalAddress: id + ":1", PartitionCount: 7, PartitionThreads: 1,
			Routing: fwdRouting{threeRouting{id}}, RetryPause: time.Millisecond, Hook: hooks[id], InvocationTimeout: 5 * time.Second,
			Dial: func(ctx context.Context, address string) (net.Conn, error) {
				a, b := net.Pipe()
				member(address).HandleConn(b)
				return a, nil
			}})
		types := append(backedTypes(), spi.OperationType{ID: 3, New: func() spi.Operation { return new(codecBackedOp) }})
		if err := s.Register("svc", nil, types); err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(s.Shutdown)
		return s
	}
	k.p, k.b, k.c = start("p"), start("b"), start("c")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := k.c.Invoke(ctx, "svc", &backedOp{}, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return k.b.tr.Connected("c") != nil })
	return k
}

func forwardedAnswers(s *Service) float64 {
	var m dto.Metric
	s.m.backupAnswers.Write(&m)
	return m.GetCounter().GetValue()
}

type pair struct{ A, B int64 }

// codecBackedOp is a backed-up write whose response needs its codec.
type codecBackedOp struct{ backedOp }

func (o *codecBackedOp) Response() any { return pair{4, -9} }
func (o *codecBackedOp) WriteResponse(w *spi.Writer, v any) {
	p := v.(pair)
	w.WriteVarint(p.A)
	w.WriteVarint(p.B)
}
func (o *codecBackedOp) ReadResponse(r *spi.Reader) (any, error) {
	p := pair{r.ReadVarint(), r.ReadVarint()}
	return p, r.Err()
}

// A forwarded answer is decoded with the operation's response codec.
func TestForwardedAnswerUsesTheResponseCodec(t *testing.T) {
	k := newFwdCluster(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eventually(t, func() bool {
		v, err := k.c.Invoke(ctx, "svc", &codecBackedOp{}, 1)
		if err != nil || v != (pair{4, -9}) {
			t.Fatalf("Invoke = %#v, %v", v, err)
		}
		return forwardedAnswers(k.c) > 0 // the primary's answer may win a race
	})
}

// An answer frame cannot complete a backup's ack: a primary must not
// hear that a backup it has not applied was.
func TestAnswerFrameCannotCompleteABackupAck(t *testing.T) {
	k := newFwdCluster(t, nil)
	block := make(chan struct{})
	k.b.RunOnPartition(1, func() { <-block }) // b's next backup waits in its queue
	defer close(block)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := k.c.Invoke(ctx, "svc", &backedOp{}, 1)
		done <- err
	}()
	pb := k.p.tr.Connected("b")
	var ackID uint64
	lb := linkOf(pb)
	eventually(t, func() bool {
		lb.mu.Lock()
		defer lb.mu.Unlock()
		for id, cl := range lb.pending {
			if cl.then != nil {
				ackID = id
			}
		}
		return ackID != 0
	})
	// A peer of p sends an answer frame for the ack's call id, naming b.
	x, _ := pipeConn(t, k.p)
	frame, start := transport.BeginFrame(nil, transport.KindAnswer, ackID)
	w := &spi.Writer{}
	w.SetBuffer(frame)
	w.WriteString("b")
	writeValue(w, "forged")
	frame = w.Bytes()
	transport.EndFrame(frame, start)
	if err := x.Handle(frame[4:]); err != nil {
		t.Fatal(err)
	}
	lb.mu.Lock()
	_, pending := lb.pending[ackID]
	lb.mu.Unlock()
	if !pending {
		t.Fatal("an answer frame completed a backup's ack")
	}
	select {
	case err := <-done:
		t.Fatalf("the invocation was answered (%v) before its backup was applied", err)
	default:
	}
}

// A fault rule holding the answers b forwards to c holds that link only:
// b's ack and p's own answer still reach c.
func TestHeldForwardedAnswerDoesNotHoldThePrimarysAnswer(t *testing.T) {
	var on atomic.Bool
	hold := make(chan struct{})
	defer close(hold)
	k := newFwdCluster(t, map[string]func(Message) Verdict{"b": func(m Message) Verdict {
		if m.Frame == transport.KindAnswer && on.Load() {
			return Verdict{Hold: hold}
		}
		return Verdict{}
	}})
	on.Store(true)
	before := forwardedAnswers(k.c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if v, err := k.c.Invoke(ctx, "svc", &backedOp{}, 1); err != nil || v != "written" {
		t.Fatalf("Invoke = %v, %v; want the primary's answer", v, err)
	}
	if n := forwardedAnswers(k.c); n != before {
		t.Fatalf("%v forwarded answers completed calls while they were held", n-before)
	}
}

// A forwarded answer waits until its backup is applied: with one backup
// held, the next waits behind the gap on b, and neither b nor p answers
// its invocation meanwhile.
func TestForwardedAnswerWaitsBehindAGap(t *testing.T) {
	var n atomic.Int32
	hold := make(chan struct{})
	k := newFwdCluster(t, map[string]func(Message) Verdict{"p": func(m Message) Verdict {
		if m.Frame == transport.KindBackup && n.Add(1) == 2 { // the first is newFwdCluster's
			return Verdict{Hold: hold}
		}
		return Verdict{}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first := make(chan error, 1)
	go func() { _, err := k.c.Invoke(ctx, "svc", &backedOp{}, 1); first <- err }()
	eventually(t, func() bool { return n.Load() >= 2 })
	second := make(chan error, 1)
	go func() { _, err := k.c.Invoke(ctx, "svc", &backedOp{}, 1); second <- err }()
	// The second backup reaches b and waits there behind the held one.
	eventually(t, func() bool { return n.Load() >= 3 })
	eventually(t, func() bool {
		done := make(chan bool, 1)
		k.b.RunOnPartition(1, func() { done <- k.b.ReplicaPending(1) })
		return <-done
	})
	select {
	case err := <-second:
		t.Fatalf("second invocation answered (%v) while its backup waits behind a gap on b", err)
	default:
	}
	close(hold)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

// Only a backup applied on arrival forwards its answer: one acknowledged
// as already applied (a resend, or a version a sync covered) leaves the
// answer to the primary.
func TestAlreadyAppliedBackupDoesNotForward(t *testing.T) {
	k := newFwdCluster(t, nil)
	// A call of c's, pending on its connection to p, that a forwarded
	// answer would complete.
	cp := k.c.tr.Connected("p")
	cl := newCall(&backedOp{})
	cl.held = &transport.HeldWrites{}
	const callID = 1 << 40
	lp := linkOf(cp)
	lp.mu.Lock()
	lp.pending[callID] = cl
	lp.mu.Unlock()
	defer forget(cp, callID)

	resp, err := encodeResponse(&spi.Writer{}, &backedOp{}, "written")
	if err != nil {
		t.Fatal(err)
	}
	bp := k.b.tr.Connected("p")
	svc := k.b.byName["svc"]
	done := make(chan struct{})
	k.b.RunOnPartition(1, func() {
		defer close(done)
		stale := task{op: &echoOp{S: "backup"}, svc: svc, pid: 1, conn: bp, replica: 1,
			version: k.b.ReplicaVersion(1), resp: resp, callerCall: callID, callerID: "c"}
		k.b.runBackup(k.b.partition[1%len(k.b.partition)], stale, time.Time{})
	})
	<-done
	// Whatever b sent c has been read once a later forwarded answer has
	// been: c invokes until one completes a call.
	before := forwardedAnswers(k.c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eventually(t, func() bool {
		if _, err := k.c.Invoke(ctx, "svc", &backedOp{}, 1); err != nil {
			t.Fatal(err)
		}
		return forwardedAnswers(k.c) > before
	})
	select {
	case <-cl.done:
		t.Fatal("a backup acknowledged as already applied forwarded an answer")
	default:
	}
}
