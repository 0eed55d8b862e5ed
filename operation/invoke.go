package operation

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

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

func (s *Service) invoke(ctx context.Context, service string, op spi.Operation, pid int, member string) (any, error) {
	svc := s.byName[service]
	if svc == nil {
		return nil, fmt.Errorf("%w: %q is not enabled on this member", spi.ErrUnknownService, service)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.InvocationTimeout)
		defer cancel()
	}
	st := svc.stats(op)
	first := time.Now()
	resp, err := s.attempts(ctx, svc, st, op, pid, member, first)
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

// attempts sends op until it is answered, fails for good or ctx ends.
func (s *Service) attempts(ctx context.Context, svc *serviceEntry, st *opStats, op spi.Operation, pid int, member string, first time.Time) (any, error) {
	pause := s.cfg.RetryPause
	var key invKey
	if pid >= 0 {
		key = invKey{origin: s.origin, seq: s.seq.Add(1)}
	}
	mayHaveRun := false // an attempt went out and its answer was lost
	for n := 0; ; n++ {
		if n > 0 && st != nil {
			st.retries.Inc()
		}
		var sent bool
		resp, err := s.attempt(ctx, svc, st, op, pid, member, key, n > 0, &sent)
		if err == nil || !spi.IsRetryable(err) {
			return resp, err
		}
		if s.closed.Load() {
			return nil, spi.ErrShutdown
		}
		mayHaveRun = mayHaveRun || (sent && errors.Is(err, spi.ErrMemberLeft))
		if mayHaveRun && time.Since(first) > s.cfg.DedupWindow {
			// The record that would recognise a retry may be gone.
			return nil, fmt.Errorf("%w: %s %T on partition %d: %w", spi.ErrIndeterminate, svc.name, op, pid, err)
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

// attempt sends op once to the member that should run it.
func (s *Service) attempt(ctx context.Context, svc *serviceEntry, st *opStats, op spi.Operation, pid int, member string, key invKey, retry bool, sent *bool) (any, error) {
	if s.closed.Load() {
		return nil, spi.ErrShutdown
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", spi.ErrTimeout, err)
	}
	var id, address string
	if member == "" {
		var ok bool
		if id, address, ok = s.cfg.Routing.Owner(pid); !ok {
			return nil, spi.ErrNotReady
		}
	} else {
		id = member
		if id != s.cfg.LocalID {
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
		if err := s.enqueue(ctx, t); err != nil {
			return nil, err
		}
		*sent = true
		return s.wait(ctx, cl, nil, 0)
	}
	typeID, ok := svc.typeIDs[reflect.TypeOf(op)]
	if !ok {
		return nil, fmt.Errorf("%w: %T is not among the operation types of service %q (see spi.OperationProvider)", spi.ErrUnknownOperation, op, svc.name)
	}
	if s.cfg.Hook != nil {
		m := Message{From: s.cfg.LocalID, To: id, Service: svc.name, Partition: pid, Op: op}
		if v := s.cfg.Hook(m); !v.pass() {
			if err := v.apply(ctx, m); err != nil {
				return nil, err
			}
		}
	}
	c, err := s.connTo(ctx, id, address)
	if err != nil {
		return nil, err
	}
	callID, err := c.sendRequest(cl, svc, typeID, pid, key, retry)
	if err != nil {
		return nil, err
	}
	*sent = true
	resp, err := s.wait(ctx, cl, c, callID)
	if err == nil && s.cfg.Hook != nil {
		m := Message{From: s.cfg.LocalID, To: id, Service: svc.name, Partition: pid, Op: op, Response: true}
		if v := s.cfg.Hook(m); !v.pass() {
			if herr := v.apply(ctx, m); herr != nil {
				return nil, herr
			}
		}
	}
	return resp, err
}

func (s *Service) wait(ctx context.Context, cl *call, c *conn, callID uint64) (any, error) {
	select {
	case <-cl.done:
		return cl.result()
	case <-ctx.Done():
		select {
		case <-cl.done: // answered just in time
			return cl.result()
		default:
		}
		// Abandoned: a late answer may still arrive, so the call is not
		// recycled.
		if c != nil {
			c.forget(callID)
		}
		return nil, fmt.Errorf("%w: %w", spi.ErrTimeout, ctx.Err())
	}
}
