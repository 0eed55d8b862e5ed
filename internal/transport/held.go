package transport

import (
	"slices"
	"sync"
	"sync/atomic"
)

// HeldWrites holds back the writers' wake-ups for the requests of callers
// while other callers have been handed their answers and not yet run. A
// connection's writer runs as soon as the goroutine that woke it parks
// (the Go scheduler runs a goroutine readied by a channel next), so when
// one reader hands answers to several callers, each of them would
// otherwise wake the writer, park, and have its next request written
// alone: one syscall per request. Held back, the requests of the callers
// woken together leave in one write per connection.
//
// A request is held until the callers that were runnable when it was
// queued have run (as many resumes), or none is left to run, or
// holdLimit requests are held, whichever comes first; a caller that finds
// no other runnable wakes its writer at once.
//
// There is one for the process (Callers), not one per member: the callers
// of every member in the process share the scheduler's cores, and a
// runnable caller of any of them delays the writers just the same.
//
// Every Delivered is matched by a Resumed once the caller has taken its
// answer, so runnable counts callers that are about to run. Should a
// count ever be left behind, Release (called on every tick of the
// operation service's coarse clock) wakes the writers: one period of
// delay, never a hang.
type HeldWrites struct {
	runnable atomic.Int32  // callers handed an answer they have not taken
	resumes  atomic.Uint64 // answers taken, ever
	due      atomic.Uint64 // release when resumes reaches it (0: none held)
	n        atomic.Int32  // requests held since the last release
	listed   atomic.Bool   // conns is not empty
	mu       sync.Mutex
	conns    []*Conn // whose writers were not woken
}

// holdLimit bounds the requests held back before the writers are woken.
const holdLimit = 16

// Callers is the process's HeldWrites, used for frames sent with
// Frame.Held.
var Callers HeldWrites

// Delivered counts a caller handed its answer, which will call Resumed
// once it has taken it.
func (h *HeldWrites) Delivered() { h.runnable.Add(1) }

// Runnable returns how many callers have been handed an answer and not
// taken it yet.
func (h *HeldWrites) Runnable() int32 { return h.runnable.Load() }

// Resumed counts a caller that has taken its answer.
func (h *HeldWrites) Resumed() {
	r := h.resumes.Add(1)
	if h.runnable.Add(-1) == 0 || r >= h.due.Load()-1 {
		h.Release()
	}
}

// hold records a request queued on c without waking c's writer, unless
// no other caller is about to run; it reports false when the caller must
// wake c itself.
func (h *HeldWrites) hold(c *Conn) bool {
	k := h.runnable.Load()
	if k <= 0 {
		return false
	}
	h.mu.Lock()
	if !slices.Contains(h.conns, c) {
		h.conns = append(h.conns, c)
	}
	h.listed.Store(true)
	if due := h.resumes.Load() + uint64(k); due < h.due.Load()-1 {
		h.due.Store(due + 1)
	}
	h.mu.Unlock()
	// Checked again after c is listed: a caller whose Resumed found no
	// one left, or the callers ahead all run, either saw the list or is
	// seen here.
	if h.n.Add(1) >= holdLimit || h.runnable.Load() == 0 || h.resumes.Load() >= h.due.Load()-1 {
		h.Release()
	}
	return true
}

// Release wakes the writers held back.
func (h *HeldWrites) Release() {
	if !h.listed.Load() {
		return
	}
	h.mu.Lock()
	for i, c := range h.conns {
		c.wakeWriter()
		h.conns[i] = nil
	}
	h.conns = h.conns[:0]
	h.listed.Store(false)
	h.n.Store(0)
	h.due.Store(0)
	h.mu.Unlock()
}
