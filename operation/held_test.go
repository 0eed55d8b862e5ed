package operation

import (
	"runtime"
	"sync"
	"testing"
)

func woken(c *conn) bool {
	select {
	case <-c.wake:
		return true
	default:
		return false
	}
}

func fakeConn() *conn { return &conn{wake: make(chan struct{}, 1)} }

// A request is held while another caller has its answer and has not run,
// and its writer is woken once that caller has taken it.
func TestHeldUntilRunnableCallersRan(t *testing.T) {
	var h heldWrites
	c := fakeConn()
	if h.hold(c) {
		t.Fatal("held with no other caller about to run")
	}
	h.runnable.Add(2) // two callers handed their answers
	h.resumed()       // the first runs ...
	if !h.hold(c) {   // ... and sends its next request
		t.Fatal("not held while another caller is about to run")
	}
	if woken(c) {
		t.Fatal("writer woken while held")
	}
	h.resumed() // the second runs: nobody left
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
	var h heldWrites
	c := fakeConn()
	h.runnable.Add(1) // X ahead of us
	if !h.hold(c) {
		t.Fatal("not held")
	}
	h.runnable.Add(1) // Y answered after we queued
	h.resumed()       // X ran
	if !woken(c) {
		t.Fatal("writer still held after the caller ahead of it ran")
	}
}

// At most holdLimit requests are held.
func TestHeldLimit(t *testing.T) {
	var h heldWrites
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

// A caller that gives up after its answer was delivered takes it anyway,
// so the runnable count does not drift; one that gives up first is not
// counted when the late answer arrives.
func TestCallAbandonKeepsCountExact(t *testing.T) {
	var h heldWrites
	cl := newCall(nil)
	cl.held = &h
	cl.complete(1, nil)
	if h.runnable.Load() != 1 {
		t.Fatal("delivery not counted")
	}
	if cl.abandon() {
		t.Fatal("abandon succeeded after delivery")
	}
	<-cl.done
	cl.taken()
	if h.runnable.Load() != 0 {
		t.Fatal("count not restored")
	}
	cl2 := newCall(nil)
	cl2.held = &h
	if !cl2.abandon() {
		t.Fatal("abandon failed before delivery")
	}
	cl2.complete(nil, nil)
	if h.runnable.Load() != 0 {
		t.Fatal("late answer to an abandoned call counted")
	}
}

// Callers on several threads, each handed an answer, running, and queuing
// a request: once all have finished, no writer is left held.
func TestHeldNeverLeftBehind(t *testing.T) {
	for iter := range 2000 {
		var h heldWrites
		conns := []*conn{fakeConn(), fakeConn(), fakeConn()}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := range 8 {
			wg.Go(func() {
				<-start
				for i := range 20 {
					h.runnable.Add(1) // answered
					if (i+g)%3 == 0 {
						runtime.Gosched()
					}
					h.resumed() // runs
					c := conns[(i+g)%len(conns)]
					if !h.hold(c) { // and sends its next request
						c.wakeWriter()
						h.release()
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

// A backup sent by an operation running in place on its caller's
// goroutine is held like that caller's request (the caller parks right
// after it); one sent from anywhere else wakes the writer at once.
func TestCallersBackupIsHeldLikeItsRequest(t *testing.T) {
	held.runnable.Add(1) // another caller has its answer and has not run
	ran := false
	t.Cleanup(func() {
		if !ran { // leave the process-wide count as it was
			held.resumed()
		}
	})
	svc := &serviceEntry{id: 7}
	send := func(byCaller bool) *conn {
		c := fakeConn()
		tk := task{svc: svc, pid: 3, byCaller: byCaller, key: invKey{Origin: 1, Seq: 1}}
		if err := c.sendBackup(nil, tk, 2, 1, 1, 0, &echoOp{S: "x"}); err != nil || len(c.out) == 0 {
			t.Fatalf("byCaller %v: no frame queued: %v", byCaller, err)
		}
		return c
	}
	other, caller := send(false), send(true)
	if !woken(other) {
		t.Error("a backup sent off the caller's goroutine was held")
	}
	if woken(caller) {
		t.Error("the caller's backup woke its writer while another caller is about to run")
	}
	held.resumed() // that caller runs
	ran = true
	if !woken(caller) {
		t.Error("the caller's backup still held after the caller ahead ran")
	}
}
