package clustertest_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// A model for a service of named registers, written in a few lines: a put
// sets a register and returns nothing, a get returns its value. Calls are
// recorded as a test makes them (here one after the other, for the
// example); a put that failed may or may not have happened.
func ExampleModel() {
	type put struct{ key, value string }
	type get struct{ key string }
	registers := clustertest.Model{
		Key: func(in any) string {
			if p, ok := in.(put); ok {
				return p.key
			}
			return in.(get).key
		},
		Init: func() any { return "" },
		Step: func(state, in, out any) (bool, any) {
			if p, ok := in.(put); ok {
				return true, p.value // a put always succeeds, known or not
			}
			_, unknown := out.(clustertest.Unknown)
			return unknown || out == state, state
		},
	}

	rec := clustertest.NewRecorder()
	rec.Call(0, put{"x", "a"}, func() (any, error) { return nil, nil })
	rec.Call(0, put{"x", "b"}, func() (any, error) { return nil, errors.New("connection lost") })
	rec.Call(1, get{"x"}, func() (any, error) { return "b", nil }) // the failed put happened
	rec.Call(1, get{"x"}, func() (any, error) { return "b", nil })
	fmt.Println(clustertest.Check(context.Background(), registers, rec.Operations()))

	rec.Call(1, get{"x"}, func() (any, error) { return "a", nil }) // back in time
	fmt.Println(clustertest.Check(context.Background(), registers, rec.Operations()))
	// Output:
	// <nil>
	// history not linearizable: objects ["x"] (5 calls)
}
