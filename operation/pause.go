package operation

import (
	"context"
	"sync"
)

// Freezing a member, for test kits (nodeengine's Node.Pause, which
// freezes the member as a stop-the-world GC pause or a stopped VM would):
// the executors and the member-to-member connections stop separately, so
// that a member killed while frozen can let its executors go (its
// shutdown waits for tasks) and still send nothing.

// PauseExecutors stops every partition and generic executor until resume
// is called (more than once is harmless): each finishes the task it runs,
// then waits in a task of its own, so that nothing queued after it runs
// and no operation runs in an executor's place (runInline finds the
// executor busy). Shutdown ends the waits. It returns once the tasks are
// queued (waiting for room in a full queue); before Start it does
// nothing. Pauses do not nest: the caller counts them.
func (s *Service) PauseExecutors() (resume func()) {
	release := make(chan struct{})
	var once sync.Once
	resume = func() { once.Do(func() { close(release) }) }
	if !s.running.Load() || s.closed.Load() {
		return resume
	}
	wait := func() {
		select {
		case <-release:
		case <-s.quit:
		}
	}
	// Partition p runs on executor p % PartitionThreads.
	for p := range min(s.cfg.PartitionThreads, s.cfg.PartitionCount) {
		s.enqueue(context.Background(), task{pid: p, fn: wait}) // fails only on Shutdown
	}
	// The generic executors share one queue: each takes one task and,
	// waiting in it, no other.
	for range s.cfg.GenericThreads {
		s.enqueue(context.Background(), task{pid: -1, fn: wait})
	}
	return resume
}

// PauseConnections stops this member's connections to the others until
// resume is called: no frame is read or written (see transport's
// Stream.Pause). Shutdown closes them paused; what they held is lost.
func (s *Service) PauseConnections() (resume func()) { return s.stream.Pause() }
