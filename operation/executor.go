package operation

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/operation/replica"
	"github.com/partita-go/partita/spi"
)

// task is one unit of work for an executor goroutine: an operation to run
// (with where its answer goes) or a plain function (RunOnPartition).
type task struct {
	op     spi.Operation
	svc    *serviceEntry
	pid    int
	caller string
	local  *call           // answer to a local invocation, or
	conn   *transport.Conn // answer on this connection
	callID uint64          // under this call id (0: no answer)
	fn     func()          // instead of op
	// For a backup: the replica index it is for and the version the
	// primary stamped it with.
	replica int
	version int64
	key     invKey // the invocation, for exactly-once
	retry   bool   // not the invocation's first attempt
	// byCaller: run in place on the invoking caller's goroutine, which
	// parks right after; its backups' frames may be held like its
	// requests (see transport.HeldWrites).
	byCaller bool
	resp     []byte // a backup: the primary's encoded response
	// callerCall, on a backup, is the call id of the invocation that the
	// backup answers (see sendBackups): this member's own when callerID
	// is empty, else member callerID's.
	callerCall uint64
	callerID   string
	st         *opStats
	// queued is when a sampled task entered its queue (unix nanoseconds;
	// 0: not sampled, see sampled).
	queued int64
}

// executor is one goroutine with its queue. Partition p always runs on
// partition executor p % N, one task at a time (a non-blocking operation
// may run in its place: see runInline), so per-partition state needs no
// lock.
type executor struct {
	s     *Service
	index int // partition executors: 0..N-1; generic executors: -1
	queue chan task
	opctx spi.OpContext // reused: an OpContext is valid only during Run
	reps  []Replica     // scratch for a partition's backups
	roles []int         // scratch: each replica's backup number (backupRoles)
	rd    spi.Reader    // scratch for decoding responses
	wr    spi.Writer    // scratch for encoding responses
	// pending counts a partition executor's tasks from before they are
	// queued until they are done; mu is held around each task. runInline
	// runs a task in the executor's place only when it can take pending
	// from 0, and holds mu meanwhile.
	pending atomic.Int32
	mu      sync.Mutex
}

func (e *executor) loop(wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		select {
		case t := <-e.queue: // fast path: one channel, no select lock
			if e.s.closed.Load() {
				// Shutting down: what is still queued does not run, and
				// its caller is told so (the select below sees quit).
				e.s.finish(t, nil, spi.ErrShutdown)
				e.count(-1)
			} else {
				e.runLocked(t)
			}
			continue
		default:
		}
		select {
		case t := <-e.queue:
			e.runLocked(t)
		case <-e.s.quit:
			// Fail what is still queued so no caller waits forever.
			for {
				select {
				case t := <-e.queue:
					e.s.finish(t, nil, spi.ErrShutdown)
					e.count(-1)
				default:
					return
				}
			}
		}
	}
}

// runLocked runs a task taken from the queue.
func (e *executor) runLocked(t task) {
	e.mu.Lock()
	e.run(t)
	e.mu.Unlock()
	e.count(-1)
}

// count adds d to a partition executor's pending count (queued: +1,
// done or not queued after all: -1). Generic executors share one queue
// and keep no count.
func (e *executor) count(d int32) {
	if e.index >= 0 {
		e.pending.Add(d)
	}
}

func (e *executor) run(t task) {
	var start time.Time // set for sampled tasks only
	if t.queued != 0 {
		start = time.Now()
		w := since(t.queued, start.UnixNano())
		if e.index >= 0 {
			e.s.m.waitPartition.Observe(w)
		} else {
			e.s.m.waitGeneric.Observe(w)
		}
	}
	if t.fn != nil {
		e.safely(func() error { t.fn(); return nil })
		return
	}
	if t.replica > 0 {
		e.s.runBackup(e, t, start)
		return
	}
	_, exempt := t.op.(OwnerCheckExempt)
	if t.pid >= 0 && !exempt {
		if err := e.s.checkOwner(t.pid); err != nil {
			e.s.finish(t, nil, err)
			return
		}
	}
	bo, backupAware := t.op.(spi.BackupAwareOperation)
	if backupAware && t.retry && t.pid >= 0 {
		if b, ok, busy := e.s.lookup(t.pid, t.key); busy {
			e.s.finish(t, nil, fmt.Errorf("%w: partition %d", spi.ErrInProgress, t.pid))
			return
		} else if ok && len(b) == 0 {
			// It ran, and a synchronous backup refused it or never
			// acknowledged it (Record.Unconfirm): its first attempt was
			// answered that its outcome is unknown, and so is this one.
			e.s.finish(t, nil, fmt.Errorf("%w: partition %d: a retry of an invocation whose run is not acknowledged here (a synchronous backup refused it or never acknowledged it, or a merge carried it over from another cluster)",
				spi.ErrIndeterminate, t.pid))
			return
		} else if ok {
			// A retry of an invocation that already ran here, or on the
			// primary this member took over from.
			resp, err := decodeResponse(&e.rd, t.op, b)
			e.s.answer(t, resp, err)
			return
		} else if !e.s.replicas[t.pid].Record().Complete(monoNow()) {
			// Not found in a record that may lack it: it may have run.
			e.s.finish(t, nil, fmt.Errorf("%w: partition %d: a retry not found in an exactly-once record that holds only the newest %d invocations",
				spi.ErrIndeterminate, t.pid, replica.MaxCarried))
			return
		}
	}
	if !exempt {
		if err := e.s.checkProtection(t.svc, t.op); err != nil {
			e.s.finish(t, nil, err)
			return
		}
	}
	c := &e.opctx
	*c = spi.OpContext{Engine: e.s.cfg.Engine, Service: t.svc.instance, PartitionID: t.pid, Caller: t.caller, Executor: e.index}
	if t.pid >= 0 {
		c.Invocation = t.key
		// Past the lookup above: a retry the record does not hold.
		c.Retried = backupAware && t.retry && !t.key.Zero()
	}
	err := e.runOp(&t, c, start)
	var resp any
	if err == nil {
		if ro, ok := t.op.(spi.ResponseOperation); ok {
			resp = ro.Response()
		}
	}
	*c = spi.OpContext{}
	if err == nil && t.pid >= 0 && backupAware && bo.ShouldBackup() {
		enc, eerr := encodeResponse(&e.wr, t.op, resp)
		if eerr != nil {
			e.s.finish(t, nil, eerr)
			return
		}
		t.resp = enc // e's scratch: sendBackups keeps a copy if it needs one
		// Recorded after the backups left: no retry can run on this
		// executor in between, and a retry must wait until they are
		// acknowledged (busy).
		busy, berr := e.s.sendBackups(e, t, bo, resp)
		if berr != nil {
			e.s.finish(t, nil, berr)
			return
		}
		e.s.record(t.pid, t.key, enc, monoNow(), busy)
		if busy != nil {
			return // the last synchronous ack finishes the task
		}
	}
	if t.pid >= 0 && (!exempt || waitsForWrites(t.op)) {
		// No synchronous backups of its own: not before the writes it may
		// have seen are (readgate.go).
		e.s.answer(t, resp, err)
		return
	}
	e.s.finish(t, resp, err)
}

// runOp runs t's operation with c, counted in t's metrics (and timed
// from start, when t is sampled).
func (e *executor) runOp(t *task, c *spi.OpContext, start time.Time) error {
	err := e.safely(func() error { return t.op.Run(c) })
	if st := t.st; st != nil {
		st.runs.Inc()
		if !start.IsZero() {
			st.run.Observe(time.Since(start).Seconds())
		}
		if err != nil {
			st.runErrors.Inc()
		}
	}
	return err
}

// safely runs f and turns a panic into an error, so one bad operation
// cannot take the member down.
func (e *executor) safely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			e.s.log.Error("operation panicked", "executor", e.index, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("operation panicked: %v", r)
		}
	}()
	return f()
}

// waitsForWrites reports whether an engine operation's answer waits like
// a read's (asked only of the exempt ones, off the common path).
func waitsForWrites(op spi.Operation) bool {
	_, ok := op.(WaitsForWrites)
	return ok
}
