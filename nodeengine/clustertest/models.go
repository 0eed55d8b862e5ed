package clustertest

import "fmt"

// CounterInc is the input of a counter's increment: add Delta to counter
// Name; the call returns the counter's new value (an int64).
type CounterInc struct {
	Name  string
	Delta int64
}

// CounterGet is the input of a counter's read: the call returns the value
// of counter Name (an int64).
type CounterGet struct {
	Name string
}

func (in CounterInc) String() string { return fmt.Sprintf("%s.inc(%d)", in.Name, in.Delta) }
func (in CounterGet) String() string { return in.Name + ".get()" }

// CounterModel is the model of named int64 counters that start at 0, each
// checked on its own: CounterInc returns the new value, CounterGet the
// value. Record the counter's calls with inputs CounterInc and CounterGet
// and int64 outputs.
var CounterModel = Model{
	Key: func(in any) string {
		switch in := in.(type) {
		case CounterInc:
			return in.Name
		case CounterGet:
			return in.Name
		}
		panic(fmt.Sprintf("clustertest.CounterModel: input %T is neither CounterInc nor CounterGet", in))
	},
	Init: func() any { return int64(0) },
	Step: func(state, in, out any) (bool, any) {
		v := state.(int64)
		_, unknown := out.(Unknown)
		switch in := in.(type) {
		case CounterInc:
			return unknown || out == v+in.Delta, v + in.Delta
		case CounterGet:
			return unknown || out == v, v
		}
		return false, v
	},
	ReadOnly: func(in any) bool { _, get := in.(CounterGet); return get },
	Describe: func(in, out any) string {
		if _, ok := out.(Unknown); ok {
			return fmt.Sprintf("%v -> ?", in)
		}
		return fmt.Sprintf("%v -> %v", in, out)
	},
}

// CounterSplitModel is the model of the same counters across network
// splits, for non-negative increments: each side of a split counts on its
// own and the merge adds both sides' increments up, so reads miss the
// other side's increments until then and no single order explains every
// answer (CounterModel's check fails by design). What still holds, and
// what this model checks, is that no answer exceeds the increments that
// may have run before it: CounterInc returns at most the sum of the
// increments linearized so far, itself included, CounterGet at most that
// sum, and neither less than 0. An increment counted twice, or a value
// made up, shows as an answer above the sum. (The final values after the
// merge are checked apart: between the acknowledged increments and the
// acknowledged plus failed ones.)
var CounterSplitModel = Model{
	Key:  CounterModel.Key,
	Init: CounterModel.Init,
	Step: func(state, in, out any) (bool, any) {
		v := state.(int64)
		got, known := out.(int64)
		switch in := in.(type) {
		case CounterInc:
			return in.Delta >= 0 && (!known || 0 <= got && got <= v+in.Delta), v + in.Delta
		case CounterGet:
			return !known || 0 <= got && got <= v, v
		}
		return false, v
	},
	ReadOnly: CounterModel.ReadOnly,
	Describe: CounterModel.Describe,
}
