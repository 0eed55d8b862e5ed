package transport

import (
	"runtime"
	"sync"
	"testing"

	"github.com/partita-go/partita/spi"
)

func woken(c *Conn) bool {
	select {
	case <-c.wake:
		return true
	default:
		return false
	}
}

func fakeConn() *Conn { return &Conn{wake: make(chan struct{}, 1)} }

// A request is held while another caller has its answer and has not run,
// and its writer is woken once that caller has taken it.
func TestHeldUntilRunnableCallersRan(t *testing.T) {
	var h HeldWrites
	c := fakeConn()
	if h.hold(c) {
		t.Fatal("held with no other caller about to run")
	}
	h.runnable.Add(2) // two callers handed their answers
	h.Resumed()       // the first runs ...
	if !h.hold(c) {   // ... and sends its next request
		t.Fatal("not held while another caller is about to run")
	}
	if woken(c) {
		t.Fatal("writer woken while held")
	}
	h.Resumed() // the second runs: nobody left
	if !woken(c) {
		t.Fatal("writer not woken when the last runnable caller ran")
	}
	if h.listed.Load() || h.n.Load() != 0 || h.due.Load() != 0 {
		t.Fatal("release left state behind")
	}
}

// Under a steady flow of answers (runnable never drops to zero) a request
// waits only for the callers that were runnable when it was queued.
func TestHeldOnlyForThoseAhead(t *testing.T) {
	var h HeldWrites
	c := fakeConn()
	h.runnable.Add(1) // X ahead of us
	if !h.hold(c) {
		t.Fatal("not held")
	}
	h.runnable.Add(1) // Y answered after we queued
	h.Resumed()       // X ran
	if !woken(c) {
		t.Fatal("writer still held after the caller ahead of it ran")
	}
}

// At most holdLimit requests are held.
func TestHeldLimit(t *testing.T) {
	var h HeldWrites
	c := fakeConn()
	h.runnable.Add(1000)
	for range holdLimit - 1 {
		h.hold(c)
	}
	if woken(c) {
		t.Fatalf("writer woken after %d holds", holdLimit-1)
	}
	h.hold(c)
	if !woken(c) {
		t.Fatal("writer not woken at the hold limit")
	}
}

// Callers on several threads, each handed an answer, running, and queuing
// a request: once all have finished, no writer is left held.
func TestHeldNeverLeftBehind(t *testing.T) {
	for iter := range 2000 {
		var h HeldWrites
		conns := []*Conn{fakeConn(), fakeConn(), fakeConn()}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := range 8 {
			wg.Go(func() {
				<-start
				for i := range 20 {
					h.Delivered() // answered
					if (i+g)%3 == 0 {
						runtime.Gosched()
					}
					h.Resumed() // runs
					c := conns[(i+g)%len(conns)]
					if !h.hold(c) { // and sends its next request
						c.wakeWriter()
						h.Release()
					}
				}
			})
		}
		close(start)
		wg.Wait()
		if h.runnable.Load() != 0 || h.listed.Load() || len(h.conns) != 0 {
			t.Fatalf("round %d: runnable %d, %d connections left held", iter, h.runnable.Load(), len(h.conns))
		}
	}
}

// A frame sent with Held is held like its caller's request (the caller
// parks right after it); one sent without wakes the writer at once.
func TestHeldFrameIsHeldLikeItsRequest(t *testing.T) {
	Callers.Delivered() // another caller has its answer and has not run
	ran := false
	t.Cleanup(func() {
		if !ran { // leave the process-wide count as it was
			Callers.Resumed()
		}
	})
	var s Stream
	send := func(held bool) *Conn {
		c := fakeConn()
		err := s.Send(c, Frame{Kind: KindBackup, Held: held}, func(w *spi.Writer) error {
			w.WriteString("x")
			return nil
		})
		if err != nil || len(c.out) == 0 {
			t.Fatalf("held %v: no frame queued: %v", held, err)
		}
		return c
	}
	other, caller := send(false), send(true)
	if !woken(other) {
		t.Error("a frame sent without Held was held")
	}
	if woken(caller) {
		t.Error("a Held frame woke its writer while another caller is about to run")
	}
	Callers.Resumed() // that caller runs
	ran = true
	if !woken(caller) {
		t.Error("the Held frame still held after the caller ahead ran")
	}
}
