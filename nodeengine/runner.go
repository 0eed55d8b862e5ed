package nodeengine

import (
	"context"
	"sync"
	"time"
)

// runner owns the goroutines a node starts: its loops and the short-lived
// work its parts spawn (table pushes, replica syncs, resolutions). Any
// goroutine may spawn; Node.teardown alone calls halt, then wait. Its
// context ends when the node stops.
type runner struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// mu and stopping keep wg.Add from racing with wg.Wait.
	mu       sync.Mutex
	stopping bool
}

func newRunner(ctx context.Context) *runner {
	r := &runner{}
	r.ctx, r.cancel = context.WithCancel(ctx)
	return r
}

// spawn runs f on a goroutine the node waits for at shutdown, unless the
// node is stopping (then it reports false and f does not run).
func (r *runner) spawn(f func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return false
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
	return true
}

// stop returns a channel closed when the node stops.
func (r *runner) stop() <-chan struct{} { return r.ctx.Done() }

// stopContext returns a context that ends after d or when the node stops.
func (r *runner) stopContext(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.ctx, d)
}

// backOff waits *pause before a retry and doubles it, up to a second; it
// reports false, at once, when the node stops.
func (r *runner) backOff(pause *time.Duration) bool {
	t := time.NewTimer(*pause)
	defer t.Stop()
	select {
	case <-r.stop():
		return false
	case <-t.C:
	}
	*pause = min(2**pause, time.Second)
	return true
}

// halt refuses further spawns and ends the context.
func (r *runner) halt() {
	r.mu.Lock()
	r.stopping = true // no goroutine joins wg once Wait may run
	r.mu.Unlock()
	r.cancel()
}

// wait returns once every goroutine spawned has returned (after halt).
func (r *runner) wait() { r.wg.Wait() }
