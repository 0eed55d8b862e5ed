package operation

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/partita-go/partita/spi"
)

// Answers held behind unacknowledged writes. A write with synchronous
// backups answers only once they are acknowledged (backupRun), but it has
// changed the primary's state at once: an operation of the same
// partition that runs after it (a read, or any operation answered without
// synchronous backups of its own) sees that change. Answered at once, it
// would let its caller observe a write that can still be lost with the
// primary, and a later write could then return the same value again. So
// such an answer is held until every synchronous-backup run registered on
// its partition before it ran is done (acknowledged, or given up for good:
// the run's writer is answered then as well). If one of those writes is
// not acknowledged (its outcome is unknown to its caller: it may be lost),
// the answers held behind it when it ends fail the same way instead of
// showing it. (An operation that runs after that is answered as usual: the
// write is on the primary, like any write given up as unconfirmed.)
//
// A write with synchronous backups of its own needs no such wait: a
// backup replica applies backups strictly in version order (or installs a
// full copy covering them), so its acknowledgement of version v vouches
// for every earlier version on that replica as well.
//
// Runs complete out of order, on connection readers, and a hot partition
// may never be without a run in flight, so a read waits for the runs
// before it, not for a quiet moment. A partition's runs are counted in
// barriers: the runs registered since the last answer was held, and the
// answers held behind them. An answer is held in the open barrier, which
// then takes no more runs (the next run opens a new one); a barrier is
// released once its runs are done and the barrier before it is released.
// Nothing is allocated, and no lock is taken, while no answer is held:
// registering a run is one atomic add, finishing it one atomic add and one
// atomic load, and an answer checks one atomic count.

// readGate is one partition's barriers; the fields belong to the
// partition's executor.
type readGate struct {
	open *barrier // the barrier new runs join; nil before the first run
	// held lists the barriers that held answers, oldest first (some may
	// be released already), for failing them when the partition's
	// replica is dropped or the member shuts down.
	held []*barrier
}

// barrier is a partition's runs registered between two held answers, and
// the answers held behind them.
type barrier struct {
	// n counts the barrier's runs not done, plus one while the barrier
	// before it is not released. It only grows on the partition's
	// executor (a run registered), and only while the barrier is open.
	n atomic.Int32
	// waiting: answers or next may be set; whoever sees n reach zero
	// releases then.
	waiting atomic.Bool
	next    atomic.Pointer[barrier] // taken once, by whoever releases
	mu      sync.Mutex
	answers []heldAnswer // under mu
	sealed  bool         // takes no more runs (the executor's)
}

// heldAnswer is an answer waiting for its barrier.
type heldAnswer struct {
	t    task
	resp any
	err  error
}

// register counts a synchronous-backup run of partition p, before its
// backups leave (executor p), and returns its barrier; done(b) must
// follow.
func (g *readGate) register(s *Service) *barrier {
	b := g.open
	if b == nil || b.sealed {
		nb := new(barrier)
		if b != nil {
			nb.n.Store(1) // until b is released
			b.next.Store(nb)
			b.waiting.Store(true)
			if b.n.Load() == 0 {
				b.release(s) // released already: nb no longer waits for it
			}
		}
		g.open, b = nb, nb
	}
	b.n.Add(1)
	return b
}

// notAcked fails the answers held behind a run of b that ended without
// acknowledgement (err, its writer's answer), before its runDone (any
// goroutine): those of b and of the barriers after it, which all ran
// after the write. None of them is released yet (each waits for b), so
// the chain is whole. Answers held after this returns ran after the
// write was given up, and are delivered as usual.
func (b *barrier) notAcked(s *Service, err error) {
	for ; b != nil; b = b.next.Load() {
		b.mu.Lock()
		answers := b.answers
		b.answers = nil
		b.mu.Unlock()
		for _, a := range answers {
			s.failUnacked(a, err)
		}
	}
}

// runDone counts one run of b done (any goroutine).
func (b *barrier) runDone(s *Service) {
	if b.n.Add(-1) == 0 && b.waiting.Load() {
		b.release(s)
	}
}

// release delivers b's held answers and counts b released in the
// barrier after it, releasing that one in turn if it has nothing else to
// wait for. Several goroutines may call it once b.n is zero; each answer
// and the next barrier are taken once.
func (b *barrier) release(s *Service) {
	for b != nil {
		b.mu.Lock()
		answers := b.answers
		b.answers = nil
		b.mu.Unlock()
		for _, a := range answers {
			s.deliverHeld(a)
		}
		next := b.next.Swap(nil)
		if next == nil || next.n.Add(-1) != 0 || !next.waiting.Load() {
			return
		}
		b = next
	}
}

// answer delivers the outcome of t, an operation that ran on partition
// t.pid's primary and has no synchronous backups of its own to wait for:
// at once when no synchronous-backup run of the partition is unfinished,
// else once the ones registered before it are done (executor t.pid).
func (s *Service) answer(t task, resp any, err error) {
	if t.pid >= 0 {
		if b := s.gates[t.pid].open; b != nil && b.n.Load() != 0 && (t.local != nil || t.conn != nil && t.callID != 0) {
			s.hold(b, t, resp, err)
			return
		}
	}
	s.finish(t, resp, err)
}

// hold parks t's answer in b, the open barrier of its partition, unless
// b was released meanwhile (executor t.pid).
func (s *Service) hold(b *barrier, t task, resp any, err error) {
	s.m.answersHeld.Inc()
	b.mu.Lock()
	b.answers = append(b.answers, heldAnswer{t: t, resp: resp, err: err})
	b.mu.Unlock()
	if !b.sealed {
		b.sealed = true
		g := &s.gates[t.pid]
		// Drop the released barriers at the front of the list.
		i := 0
		for i < len(g.held) && g.held[i].n.Load() == 0 {
			i++
		}
		g.held = append(g.held[:0], g.held[i:]...)
		g.held = append(g.held, b)
	}
	// Set before n is read again, as a run's finish decrements n before
	// it reads waiting: one of the two sees the other (sequentially
	// consistent atomics) and releases.
	b.waiting.Store(true)
	if b.n.Load() == 0 {
		b.release(s)
	}
}

// deliverHeld sends a held answer once its barrier is released. A member
// that is shutting down, or whose connections are closing
// (CloseConnections), answers as backupRun.done does for the writes: a
// local caller gets ErrShutdown, a remote one no answer (it sees its
// connection break and retries). The connections close one by one: the
// write's backup failing as its connection closes must not release a
// read's answer on one still open (it would show a write that is lost).
func (s *Service) deliverHeld(a heldAnswer) {
	if s.goingAway() {
		if a.t.local != nil {
			a.t.local.complete(nil, spi.ErrShutdown)
		}
		return
	}
	s.finish(a.t, a.resp, a.err)
}

// failUnacked fails a held answer whose operation ran after a write that
// was not acknowledged (err, its writer's answer): its outcome is unknown
// as the write's is (not retried by Invoke: its caller decides, and a read
// called again runs again). Going away, it is answered as any held answer
// then (deliverHeld).
func (s *Service) failUnacked(a heldAnswer, err error) {
	if s.goingAway() {
		s.deliverHeld(a)
		return
	}
	s.finish(a.t, nil, fmt.Errorf("%w: partition %d: it ran after a write that was not acknowledged; the write's error: %v", spi.ErrIndeterminate, a.t.pid, err))
}

// failHeld fails the answers held on partition p with err (executor p,
// or Shutdown once the executors stopped): the partition's replica is
// dropped, or the member stops. Their barriers are released as usual
// once their runs are done, with nothing left to deliver.
func (s *Service) failHeld(p int, err error) {
	g := &s.gates[p]
	for _, b := range g.held {
		b.mu.Lock()
		answers := b.answers
		b.answers = nil
		b.mu.Unlock()
		for _, a := range answers {
			if s.goingAway() {
				s.deliverHeld(a) // as any held answer at shutdown
			} else {
				s.finish(a.t, nil, err)
			}
		}
	}
	clear(g.held)
	g.held = g.held[:0]
}
