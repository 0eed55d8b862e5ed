package clustertest

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Model is the sequential specification a history is checked against:
// what one object of the service does when its calls run one at a time.
// Check asks whether the calls of a history, which overlapped in time,
// can be put in one order, each at an instant between its call and its
// return, in which every output is the one Step allows (linearizability).
// See CounterModel for one, and the package example for a model written
// in a few lines.
//
// The functions must be pure: Step returns a new state, it never changes
// the one it is given.
type Model struct {
	// Key names the object an input acts on. The calls of each object
	// are checked on their own (porcupine's partitions), which is much
	// faster than one history of every object. Nil: one object.
	Key func(input any) string
	// Init returns the state of an object before its first call.
	Init func() any
	// Step applies input, whose call returned output, to state: it
	// returns whether output is what the object answers in that state,
	// and the state after the call. For a call that failed, output is
	// Unknown: accept it and return the state as if the call had
	// happened (the checker also tries it as never having happened).
	Step func(state, input, output any) (ok bool, next any)
	// Equal compares two states; nil: ==, which needs comparable states.
	Equal func(a, b any) bool
	// ReadOnly, optional, tells the calls that change no state: a failed
	// one says nothing and is left out of the check (each failed call
	// that stays in multiplies the orders the checker may have to try).
	ReadOnly func(input any) bool
	// Describe, optional, shows a call in the visualisation, for example
	// "inc(2) -> 7".
	Describe func(input, output any) string
}

// porcupine returns the model in porcupine's terms, partitioned by Key.
func (m Model) porcupine() porcupine.Model {
	pm := porcupine.Model{Init: m.Init, Step: m.Step, Equal: m.Equal}
	if m.Key != nil {
		pm.Partition = func(h []porcupine.Operation) [][]porcupine.Operation { return partition(m, h) }
	}
	pm.DescribeOperation = func(in, out any) string {
		if m.Describe != nil {
			return m.Describe(in, out)
		}
		if _, ok := out.(Unknown); ok {
			return fmt.Sprintf("%v -> ?", in)
		}
		return fmt.Sprintf("%v -> %v", in, out)
	}
	return pm
}

// partition splits h by object, in the order of the keys.
func partition(m Model, h []porcupine.Operation) [][]porcupine.Operation {
	if m.Key == nil {
		return [][]porcupine.Operation{h}
	}
	by := map[string][]porcupine.Operation{}
	for _, op := range h {
		k := m.Key(op.Input)
		by[k] = append(by[k], op)
	}
	keys := make([]string, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([][]porcupine.Operation, len(keys))
	for i, k := range keys {
		out[i] = by[k]
	}
	return out
}

// ErrUndecided is returned by Check when its context ended before the
// checker decided: no violation was found, and none was ruled out.
var ErrUndecided = errors.New("clustertest: linearizability check undecided within its time")

// NotLinearizableError is Check's error for a history that is not
// linearizable.
type NotLinearizableError struct {
	// Keys are the objects whose calls are not linearizable (Model.Key;
	// "" for a model with no Key).
	Keys []string
	// Calls is the number of calls of those objects.
	Calls int

	model porcupine.Model
	info  porcupine.LinearizationInfo
}

func (e *NotLinearizableError) Error() string {
	return fmt.Sprintf("history not linearizable: objects %q (%d calls)", e.Keys, e.Calls)
}

// WriteHTML writes porcupine's visualisation of the objects' calls to w:
// the longest orders of them that the model accepts, and the calls that
// could not come next.
func (e *NotLinearizableError) WriteHTML(w io.Writer) error {
	return porcupine.Visualize(e.model, e.info, w)
}

// Check checks history h (Recorder.Operations) against model m, until ctx
// ends. It returns nil when h is linearizable, a *NotLinearizableError
// when it is not, or ErrUndecided when ctx ended first.
func Check(ctx context.Context, m Model, h []porcupine.Operation) error {
	pm := m.porcupine()
	if m.ReadOnly != nil {
		h = slices.DeleteFunc(slices.Clone(h), func(op porcupine.Operation) bool {
			_, unknown := op.Output.(Unknown)
			return unknown && m.ReadOnly(op.Input)
		})
	}
	bad := &NotLinearizableError{model: pm}
	var failing []porcupine.Operation
	// Object by object, so that the error names the objects that fail.
	for _, ops := range partition(m, h) {
		res := porcupine.CheckOperationsTimeout(pm, ops, timeLeft(ctx))
		if res == porcupine.Unknown || (res == porcupine.Ok && ctx.Err() != nil) {
			return ErrUndecided
		}
		if res == porcupine.Illegal {
			key := ""
			if m.Key != nil {
				key = m.Key(ops[0].Input)
			}
			bad.Keys = append(bad.Keys, key)
			failing = append(failing, ops...)
		}
	}
	if len(bad.Keys) == 0 {
		return nil
	}
	bad.Calls = len(failing)
	// Again, with the data the visualisation draws. Without time left
	// it is drawn from what the checker found so far.
	_, bad.info = porcupine.CheckOperationsVerbose(pm, failing, max(timeLeft(ctx), time.Second))
	return bad
}

// timeLeft is ctx's time left for porcupine (0 is no limit for it).
func timeLeft(ctx context.Context) time.Duration {
	d, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	return max(time.Until(d), time.Millisecond)
}

// CheckTimeout bounds CheckLinearizable's search of a history of up to
// 100,000 calls; a longer one gets a second more per 10,000 calls beyond
// (checkBudget): a soak's history of millions of calls takes minutes.
const CheckTimeout = time.Minute

// checkBudget is CheckLinearizable's time for a history of n calls.
func checkBudget(n int) time.Duration {
	return CheckTimeout + time.Duration(max(n-100_000, 0)/10_000)*time.Second
}

// CheckLinearizable checks history h against model m (see Check) within
// its budget (CheckTimeout, more for a long history) and fails t when h
// is not linearizable, naming the file
// where it wrote porcupine's visualisation of the failing objects: the
// test's artifact directory when go test runs with -artifacts (see
// testing.T.ArtifactDir), else a new directory under os.TempDir that
// outlives the test. An undecided check is logged, not failed. It
// returns Check's error.
func CheckLinearizable(t testing.TB, m Model, h []porcupine.Operation) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), checkBudget(len(h)))
	defer cancel()
	start := time.Now()
	err := Check(ctx, m, h)
	var bad *NotLinearizableError
	switch {
	case err == nil:
		t.Logf("linearizable: %d calls checked in %v", len(h), time.Since(start).Round(time.Millisecond))
	case errors.As(err, &bad):
		file, werr := writeVisualisation(t, bad)
		if werr != nil {
			t.Errorf("%v; %d calls in all; visualisation not written: %v", err, len(h), werr)
		} else {
			t.Errorf("%v; %d calls in all; visualisation: %s", err, len(h), file)
		}
	default:
		t.Logf("%d calls: %v (after %v): no violation found", len(h), err, time.Since(start).Round(time.Millisecond))
	}
	return err
}

// writeVisualisation writes e's HTML for test t and returns its path.
func writeVisualisation(t testing.TB, e *NotLinearizableError) (string, error) {
	var dir string
	if f := flag.Lookup("test.artifacts"); f != nil && f.Value.String() == "true" {
		dir = t.ArtifactDir()
	} else {
		// ArtifactDir without -artifacts is removed with the test.
		var err error
		if dir, err = os.MkdirTemp("", "linearizability-"+fileSafe(t.Name())+"-"); err != nil {
			return "", err
		}
	}
	path := filepath.Join(dir, "linearizability.html")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	werr := e.WriteHTML(f)
	return path, cmp.Or(werr, f.Close())
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func fileSafe(s string) string { return strings.Trim(unsafeChars.ReplaceAllString(s, "_"), "_") }
