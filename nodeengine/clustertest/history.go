package clustertest

import (
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Recorder records the calls a test makes to a service, from many
// goroutines at once, as a history that Check and CheckLinearizable judge
// against a Model.
//
// Each call is recorded with the client that made it (a small number, one
// per goroutine that calls one thing at a time: porcupine draws a row per
// client), its input, its output, and the times it was called and
// returned, read from one monotonic clock. A call that failed may or may
// not have happened (an increment whose answer was lost may have been
// applied): it is recorded with the output Unknown and as returning at
// the end of the history, so that the checker may place it anywhere after
// its call, including after every other call, which is the same as never.
// This is porcupine's way for calls that never returned.
//
// The zero Recorder is not ready: use NewRecorder.
type Recorder struct {
	start time.Time // the clock: times are nanoseconds since start

	mu  sync.Mutex
	ops []record
}

// record is one call; end < 0 while it has not returned.
type record struct {
	client        int
	input, output any
	call, end     int64
	failed        error
}

// Unknown is the output of a call that failed: it may or may not have
// happened. A Model's Step must accept it for any input that may change
// the state, returning the state as if the call had happened (the checker
// also tries the call as never having happened, by placing it last).
type Unknown struct {
	// Err is the call's error, for the visualisation.
	Err string
}

// NewRecorder returns an empty recorder whose clock starts now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// now reads the recorder's clock: time.Since uses the monotonic reading
// of start, so that a wall-clock step cannot reorder calls.
func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// Call records one call by client with input: call runs it (from the
// goroutine of Call) and returns its output, or an error when it failed.
// Call returns what call returned. It may be called from many goroutines.
func (r *Recorder) Call(client int, input any, call func() (any, error)) (any, error) {
	i := r.begin(client, input)
	out, err := call()
	r.end(i, out, err)
	return out, err
}

// Record is Call for a call with a typed output, such as
// (*counter.Counter).Inc's int64:
//
//	v, err := clustertest.Record(rec, g, clustertest.CounterInc{Name: "c", Delta: 1},
//		func() (int64, error) { return ctr.Inc(ctx, 1) })
func Record[O any](r *Recorder, client int, input any, call func() (O, error)) (O, error) {
	i := r.begin(client, input)
	out, err := call()
	r.end(i, out, err)
	return out, err
}

func (r *Recorder) begin(client int, input any) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Read the clock under the lock, so that a call that begins after
	// another ended (in real time, as seen by any goroutine that saw the
	// end) never gets an earlier time.
	r.ops = append(r.ops, record{client: client, input: input, call: r.now(), end: -1})
	return len(r.ops) - 1
}

func (r *Recorder) end(i int, out any, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := &r.ops[i]
	o.end = r.now()
	if err != nil {
		o.failed = err
		return
	}
	o.output = out
}

// Len returns how many calls have begun.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// Failed returns how many calls returned an error so far.
func (r *Recorder) Failed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, o := range r.ops {
		if o.failed != nil {
			n++
		}
	}
	return n
}

// Operations returns the history so far as porcupine operations, in the
// order the calls began. A call that failed, or has not returned yet, has
// the output Unknown and returns after every other call (see Recorder).
func (r *Recorder) Operations() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := r.now()
	for _, o := range r.ops {
		last = max(last, o.end)
	}
	out := make([]porcupine.Operation, len(r.ops))
	for i, o := range r.ops {
		op := porcupine.Operation{ClientId: o.client, Input: o.input, Call: o.call, Output: o.output, Return: o.end}
		switch {
		case o.end < 0:
			op.Output, op.Return = Unknown{Err: "did not return"}, last+1
			op.Metadata = "did not return before the history was read"
		case o.failed != nil:
			op.Output, op.Return = Unknown{Err: o.failed.Error()}, last+1
			op.Metadata = "failed after " + time.Duration(o.end-o.call).String() + ": " + o.failed.Error()
		}
		out[i] = op
	}
	return out
}
