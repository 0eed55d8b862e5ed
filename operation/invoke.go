package operation

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// maxRetryPause caps the back-off between attempts.
const maxRetryPause = 500 * time.Millisecond

// Invoke implements spi.OperationService.
func (s *Service) Invoke(ctx context.Context, service string, op spi.Operation, partitionID int) (any, error) {
	if partitionID < 0 || partitionID >= s.cfg.PartitionCount {
		return nil, fmt.Errorf("invoke %T: partition %d out of range 0..%d", op, partitionID, s.cfg.PartitionCount-1)
	}
	return s.invoke(ctx, service, op, partitionID, "")
}

// InvokeOnPartitionOf runs op on partition pid's executor of the given
// member, whoever owns the partition (the engine's migration steps).
func (s *Service) InvokeOnPartitionOf(ctx context.Context, service string, op spi.Operation, pid int, memberID string) (any, error) {
	if pid < 0 || pid >= s.cfg.PartitionCount {
		return nil, fmt.Errorf("invoke %T: partition %d out of range", op, pid)
	}
	return s.invoke(ctx, service, op, pid, memberID)
}

// InvokeOnMember implements spi.OperationService.
func (s *Service) InvokeOnMember(ctx context.Context, service string, op spi.Operation, memberID string) (any, error) {
	return s.invoke(ctx, service, op, -1, memberID)
}

// InvokeOnceAt sends op once to member memberID at address, which the
// routing may no longer know (the engine asks members that memberlist
// declared dead whether they still run), and waits for the answer until
// ctx ends or the invocation timeout passes. Nothing is retried: a
// refused connection or a member answering under another id fails at
// once.
func (s *Service) InvokeOnceAt(ctx context.Context, service string, op spi.Operation, memberID, address string) (any, error) {
	svc := s.byName[service]
	if svc == nil {
		return nil, fmt.Errorf("%w: %q is not enabled on this member", spi.ErrUnknownService, service)
	}
	var limit time.Time
	if _, ok := ctx.Deadline(); !ok {
		limit = time.Now().Add(s.cfg.InvocationTimeout)
	}
	var sent bool
	return s.attempt(ctx, limit, svc, svc.stats(op), op, -1, memberID, address, invKey{}, false, time.Time{}, &sent)
}

func (s *Service) invoke(ctx context.Context, service string, op spi.Operation, pid int, member string) (any, error) {
	svc := s.byName[service]
	if svc == nil {
		return nil, fmt.Errorf("%w: %q is not enabled on this member", spi.ErrUnknownService, service)
	}
	st := svc.stats(op)
	first := time.Now()
	var limit time.Time // zero: ctx has a deadline of its own
	if _, ok := ctx.Deadline(); !ok {
		// The invocation timeout, watched by the service's coarse clock
		// rather than a timer per invocation (see timeoutClock).
		limit = first.Add(s.cfg.InvocationTimeout)
	}
	resp, err := s.attempts(ctx, limit, svc, st, op, pid, member, first)
	if st != nil {
		st.inv.Observe(time.Since(first).Seconds())
		if err != nil {
			st.invErrors.Inc()
			if errors.Is(err, spi.ErrTimeout) {
				st.timeouts.Inc()
			}
		}
	}
	return resp, err
}

// attempts sends op until it is answered, fails for good, or ctx ends or
// limit passes (when not zero).
func (s *Service) attempts(ctx context.Context, limit time.Time, svc *serviceEntry, st *opStats, op spi.Operation, pid int, member string, first time.Time) (any, error) {
	pause := s.cfg.RetryPause
	var key invKey
	if pid >= 0 {
		key = invKey{Origin: s.origin, Seq: s.seq.Add(1)}
	}
	mayHaveRun := false  // an attempt went out and its answer was lost
	var sendBy time.Time // set once mayHaveRun: see errPastWindow
	var lastErr error
	indeterminate := func(err error) error {
		return fmt.Errorf("%w: %s %T on partition %d: %w", spi.ErrIndeterminate, svc.name, op, pid, err)
	}
	for n := 0; ; n++ {
		if n > 0 && st != nil {
			st.retries.Inc()
		}
		if !mayHaveRun {
			// This member's own side is too small: fail fast, send
			// nothing (the target would refuse it too). Not once an
			// attempt may have run: the refusal says nothing was applied,
			// which only the target's exactly-once record can tell.
			if err := s.checkProtection(svc, op); errors.Is(err, spi.ErrSplitBrainProtection) {
				return nil, err
			}
		}
		var sent bool
		// Marked a retry (looked up in the exactly-once record) only once
		// an earlier attempt may have run: one that was refused did not.
		resp, err := s.attempt(ctx, limit, svc, st, op, pid, member, "", key, mayHaveRun, sendBy, &sent)
		if errors.Is(err, errPastWindow) {
			return nil, indeterminate(lastErr)
		}
		if err == nil || !spi.IsRetryable(err) {
			return resp, err
		}
		if s.goingAway() {
			return nil, spi.ErrShutdown
		}
		lastErr = err
		if !mayHaveRun && sent && errors.Is(err, spi.ErrMemberLeft) {
			mayHaveRun, sendBy = true, first.Add(s.cfg.DedupWindow)
		}
		if mayHaveRun && time.Since(first)+pause > s.cfg.DedupWindow {
			// The record that would recognise a retry may be gone by
			// the time it is sent.
			return nil, indeterminate(err)
		}
		if !limit.IsZero() && time.Until(limit) < pause {
			return nil, fmt.Errorf("%w: %s %T on partition %d: invocation timeout %v: last attempt: %w", spi.ErrTimeout, svc.name, op, pid, s.cfg.InvocationTimeout, err)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: %s %T on partition %d: last attempt: %w", spi.ErrTimeout, svc.name, op, pid, err)
		case <-t.C:
		}
		pause = min(2*pause, maxRetryPause)
	}
}

// errPastWindow: a retry of an attempt that may have run was not sent,
// because the dedup window has passed since the invocation's first attempt
// (sendBy): the primary may have dropped the record that would recognise
// it. The window is checked again right before the send, since routing,
// dialling and fault hooks take time after the back-off pause.
var errPastWindow = errors.New("retry past the dedup window")

// attempt sends op once to the member that should run it (at address when
// not empty, else where the routing says); not after sendBy (when set:
// errPastWindow).
func (s *Service) attempt(ctx context.Context, limit time.Time, svc *serviceEntry, st *opStats, op spi.Operation, pid int, member, address string, key invKey, retry bool, sendBy time.Time, sent *bool) (any, error) {
	pastWindow := func() bool { return !sendBy.IsZero() && time.Now().After(sendBy) }
	if s.goingAway() {
		return nil, spi.ErrShutdown
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", spi.ErrTimeout, err)
	}
	var id string
	if member == "" {
		var ok bool
		if id, address, ok = s.cfg.Routing.Owner(pid); !ok {
			return nil, spi.ErrNotReady
		}
	} else {
		id = member
		if id != s.cfg.LocalID && address == "" {
			var ok bool
			if address, ok = s.cfg.Routing.MemberAddress(id); !ok {
				return nil, fmt.Errorf("%w: %s", spi.ErrNoSuchMember, id)
			}
		}
	}
	cl := newCall(op)
	if id == s.cfg.LocalID {
		// Local fast path: hand the operation itself to the executor.
		t := task{op: op, svc: svc, pid: pid, caller: s.cfg.LocalAddress, local: cl, key: key, retry: retry, st: st}
		if pastWindow() {
			return nil, errPastWindow
		}
		if s.runInline(t, true) {
			*sent = true
			return s.wait(ctx, limit, cl, nil, 0)
		}
		if err := s.enqueueUntil(ctx, limit, t); err != nil {
			return nil, err
		}
		*sent = true
		return s.wait(ctx, limit, cl, nil, 0)
	}
	typeID, ok := svc.typeIDs[reflect.TypeOf(op)]
	if !ok {
		return nil, fmt.Errorf("%w: %T is not among the operation types of service %q (see spi.OperationProvider)", spi.ErrUnknownOperation, op, svc.name)
	}
	c := s.tr.Connected(id)
	if c == nil {
		cctx, cancel := withLimit(ctx, limit)
		var err error
		c, err = s.tr.Conn(cctx, id, address)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if pastWindow() {
		return nil, errPastWindow
	}
	callID, err := s.sendRequest(c, cl, svc, typeID, pid, key, retry)
	if err != nil {
		return nil, err
	}
	*sent = true
	return s.wait(ctx, limit, cl, c, callID)
}

// wait waits for cl's answer until ctx ends or limit (when not zero)
// passes.
func (s *Service) wait(ctx context.Context, limit time.Time, cl *call, c *transport.Conn, callID uint64) (any, error) {
	done := ctx.Done() // nil for context.Background: never ready
	var err error
	for err == nil {
		var tick <-chan struct{} // nil, never ready, when ctx bounds the call
		if !limit.IsZero() {
			tick = s.clock.tick()
		}
		select {
		case <-cl.done:
			cl.taken()
			return cl.result()
		case <-done:
			err = fmt.Errorf("%w: %w", spi.ErrTimeout, ctx.Err())
		case <-tick:
			switch {
			case s.stopped.Load():
				// The executors are gone (an operation queued after they
				// drained will never run); the clock's channel stays
				// closed.
				err = spi.ErrShutdown
			case time.Now().After(limit):
				err = s.invocationTimeout()
			}
		}
	}
	if !cl.abandon() { // answered just in time
		<-cl.done
		cl.taken()
		return cl.result()
	}
	// Abandoned: a late answer may still arrive, so the call is not
	// recycled.
	if c != nil {
		forget(c, callID)
	}
	return nil, err
}

func (s *Service) invocationTimeout() error {
	return fmt.Errorf("%w: no answer within the invocation timeout (%v): %w", spi.ErrTimeout, s.cfg.InvocationTimeout, context.DeadlineExceeded)
}

// withLimit returns ctx bounded by limit, when limit is not zero.
func withLimit(ctx context.Context, limit time.Time) (context.Context, context.CancelFunc) {
	if limit.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, limit)
}

// timeoutClock is a coarse broadcast clock: every period it closes its
// current channel and makes a new one. An invocation whose context has no
// deadline waits on it to notice that its invocation timeout passed,
// instead of arming a timer of its own: a context.WithTimeout per call
// cost three allocations and a fifth of the caller's CPU time. A timeout
// is noticed up to one period late.
type timeoutClock struct {
	ch atomic.Pointer[chan struct{}]
}

// clockPeriod returns the clock's period for an invocation timeout: a
// sixteenth of it, between 1 ms and 100 ms.
func clockPeriod(timeout time.Duration) time.Duration {
	return min(max(timeout/16, time.Millisecond), 100*time.Millisecond)
}

// tick returns the channel closed at the next tick.
func (k *timeoutClock) tick() <-chan struct{} { return *k.ch.Load() }

func (k *timeoutClock) init() {
	ch := make(chan struct{})
	k.ch.Store(&ch)
}

// run ticks every period until quit is closed, calling onTick after each
// tick.
func (k *timeoutClock) run(period time.Duration, quit <-chan struct{}, onTick func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ch := make(chan struct{})
			close(*k.ch.Swap(&ch))
			onTick()
		case <-quit:
			return
		}
	}
}

// stop wakes every waiter for good: from now on tick returns a closed
// channel. Call it once run has returned.
func (k *timeoutClock) stop() {
	ch := make(chan struct{})
	close(ch)
	close(*k.ch.Swap(&ch))
}
