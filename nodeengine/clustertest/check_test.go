package clustertest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// op is one call of a hand-written history: [call, ret] in ticks.
func op(client int, in, out any, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret}
}

func TestCounterModelLinearizable(t *testing.T) {
	inc := func(d int64) clustertest.CounterInc { return clustertest.CounterInc{Name: "c", Delta: d} }
	get := clustertest.CounterGet{Name: "c"}
	unknown := clustertest.Unknown{Err: "lost"}
	const end = 1000 // a failed call returns after everything
	for _, tc := range []struct {
		name string
		h    []porcupine.Operation
		ok   bool
	}{
		{"sequential", []porcupine.Operation{op(0, inc(2), int64(2), 0, 1), op(0, get, int64(2), 2, 3)}, true},
		{"concurrent incs in either order", []porcupine.Operation{
			op(0, inc(1), int64(3), 0, 10), op(1, inc(2), int64(2), 1, 9), op(2, get, int64(3), 11, 12)}, true},
		{"read goes back in time", []porcupine.Operation{
			op(0, inc(1), int64(1), 0, 1), op(1, get, int64(1), 2, 3), op(2, get, int64(0), 4, 5)}, false},
		{"increment applied twice", []porcupine.Operation{op(0, inc(1), int64(2), 0, 1)}, false},
		{"acknowledged increment lost", []porcupine.Operation{
			op(0, inc(1), int64(1), 0, 1), op(0, get, int64(0), 2, 3)}, false},
		{"failed increment that happened", []porcupine.Operation{
			op(0, inc(5), unknown, 0, end), op(1, get, int64(5), 2, 3), op(1, inc(1), int64(6), 4, 5)}, true},
		{"failed increment that did not happen", []porcupine.Operation{
			op(0, inc(5), unknown, 0, end), op(1, get, int64(0), 2, 3), op(1, inc(1), int64(1), 4, 5)}, true},
		{"failed increment seen, then unseen", []porcupine.Operation{
			op(0, inc(5), unknown, 0, end), op(1, get, int64(5), 2, 3), op(1, get, int64(0), 4, 5)}, false},
		{"counters are independent", []porcupine.Operation{
			op(0, inc(1), int64(1), 0, 1), op(0, clustertest.CounterInc{Name: "d", Delta: 1}, int64(1), 2, 3)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := clustertest.Check(context.Background(), clustertest.CounterModel, tc.h)
			var bad *clustertest.NotLinearizableError
			switch {
			case tc.ok && err != nil:
				t.Fatalf("Check = %v, want linearizable", err)
			case !tc.ok && !errors.As(err, &bad):
				t.Fatalf("Check = %v, want not linearizable", err)
			case !tc.ok && (len(bad.Keys) != 1 || bad.Keys[0] != "c"):
				t.Fatalf("failing objects %q, want [c]", bad.Keys)
			}
		})
	}
}

// The split model accepts what a split does to a counter (each side's
// reads miss the other's increments, the merge adds both up) and flags
// what no split explains: an answer above the increments that may have
// run before it.
func TestCounterSplitModel(t *testing.T) {
	inc := func(d int64) clustertest.CounterInc { return clustertest.CounterInc{Name: "c", Delta: d} }
	get := clustertest.CounterGet{Name: "c"}
	unknown := clustertest.Unknown{Err: "lost"}
	const end = 1000
	for _, tc := range []struct {
		name string
		h    []porcupine.Operation
		ok   bool
	}{
		{"two sides count apart, then merge", []porcupine.Operation{
			op(0, inc(1), int64(1), 0, 1), // both sides at 1
			op(0, inc(2), int64(3), 2, 3), // side A
			op(1, inc(5), int64(6), 4, 5), // side B misses A's +2
			op(1, get, int64(1), 6, 7),    // a stale read on a third member
			op(2, get, int64(8), 8, 9)}, true},
		{"an increment counted twice", []porcupine.Operation{
			op(0, inc(1), int64(1), 0, 1), op(1, get, int64(2), 2, 3)}, false},
		{"a failed increment that may have run", []porcupine.Operation{
			op(0, inc(1), unknown, 0, end), op(1, get, int64(1), 2, 3)}, true},
		{"a negative increment", []porcupine.Operation{op(0, inc(-1), int64(-1), 0, 1)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := clustertest.Check(context.Background(), clustertest.CounterSplitModel, tc.h)
			var bad *clustertest.NotLinearizableError
			switch {
			case tc.ok && err != nil:
				t.Fatalf("Check = %v, want accepted", err)
			case !tc.ok && !errors.As(err, &bad):
				t.Fatalf("Check = %v, want flagged", err)
			}
		})
	}
}

// Calls recorded from many goroutines, with failures, check as
// linearizable when the service is: here counters under a mutex whose
// failed increments sometimes apply.
func TestRecorderConcurrentCalls(t *testing.T) {
	rec := clustertest.NewRecorder()
	var mu sync.Mutex
	values := make([]int64, 4)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				k := (g + i) % len(values)
				name := fmt.Sprint("c", k)
				if i%3 == 0 {
					clustertest.Record(rec, g, clustertest.CounterGet{Name: name}, func() (int64, error) {
						mu.Lock()
						defer mu.Unlock()
						if i%13 == 0 {
							return 0, errors.New("read failed")
						}
						return values[k], nil
					})
					continue
				}
				clustertest.Record(rec, g, clustertest.CounterInc{Name: name, Delta: 1}, func() (int64, error) {
					mu.Lock()
					defer mu.Unlock()
					values[k]++
					if i%29 == 1 { // applied, but the answer is lost
						return 0, errors.New("answer lost")
					}
					if i%31 == 2 { // refused before it applied
						values[k]--
						return 0, errors.New("refused")
					}
					return values[k], nil
				})
			}
		}()
	}
	wg.Wait()
	h := rec.Operations()
	if len(h) != 1600 || rec.Failed() == 0 {
		t.Fatalf("%d calls recorded, %d failed", len(h), rec.Failed())
	}
	for _, op := range h {
		if _, unknown := op.Output.(clustertest.Unknown); unknown != (op.Metadata != nil) || op.Return < op.Call {
			t.Fatalf("recorded %+v", op)
		}
	}
	if err := clustertest.CheckLinearizable(t, clustertest.CounterModel, h); err != nil {
		t.Fatal(err)
	}
}

// A failing check writes porcupine's visualisation and names it.
func TestCheckLinearizableWritesVisualisation(t *testing.T) {
	rec := &fakeT{TB: t}
	h := []porcupine.Operation{op(0, clustertest.CounterInc{Name: "c", Delta: 1}, int64(2), 0, 1)}
	if err := clustertest.CheckLinearizable(rec, clustertest.CounterModel, h); err == nil {
		t.Fatal("no error")
	}
	msg := rec.errors.String()
	i := strings.Index(msg, "visualisation: ")
	if i < 0 {
		t.Fatalf("failure %q names no file", msg)
	}
	file := strings.TrimSpace(msg[i+len("visualisation: "):])
	defer os.RemoveAll(strings.TrimSuffix(file, "/linearizability.html"))
	b, err := os.ReadFile(file)
	if err != nil || !strings.Contains(string(b), "c.inc(1)") {
		t.Fatalf("visualisation %s: %v, %d bytes", file, err, len(b))
	}
}

// fakeT records the errors of a check that is meant to fail.
type fakeT struct {
	testing.TB
	errors strings.Builder
}

func (f *fakeT) Errorf(format string, args ...any) {
	f.errors.WriteString(strings.TrimSpace(fmt.Sprintf(format, args...)) + "\n")
}
func (f *fakeT) Helper() {}

// An undecided check (its context ends first) is not a violation.
func TestCheckUndecided(t *testing.T) {
	var h []porcupine.Operation
	for i := range 2000 { // many concurrent reads of unknown increments
		h = append(h, op(i, clustertest.CounterInc{Name: "c", Delta: int64(i + 1)}, clustertest.Unknown{}, 0, 1<<40))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := clustertest.Check(ctx, clustertest.CounterModel, append(h, op(9999, clustertest.CounterGet{Name: "c"}, int64(-1), 2, 3)))
	if !errors.Is(err, clustertest.ErrUndecided) {
		t.Fatalf("Check = %v, want ErrUndecided", err)
	}
}
