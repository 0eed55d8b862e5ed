// Package mergepolicy holds the standard merge policies of split-brain
// healing (spi.MergePolicy, spi.SplitBrainHandlerService): put-if-absent
// (the default), pass-through, discard and higher-value. The config
// registers them by these names (config.RegisterMergePolicy), and a
// service entry picks one with `merge-policy:`; a service may register
// policies of its own next to them.
//
// Each policy decides for one entry at a time, given the merging side's
// value, the larger cluster's (existing) value, and whether the larger
// cluster has one. The policies are stateless values, safe for concurrent
// use; they neither change nor keep the values they are given.
package mergepolicy

import (
	"cmp"
	"math"
	"reflect"
	"strings"

	"github.com/partita-go/partita/spi"
)

// The names of the standard policies in the config (`merge-policy:`).
const (
	PutIfAbsentName = "put-if-absent"
	PassThroughName = "pass-through"
	DiscardName     = "discard"
	HigherValueName = "higher-value"
)

// Standard returns one value of each standard policy, in the order above.
func Standard() []spi.MergePolicy {
	return []spi.MergePolicy{PutIfAbsent{}, PassThrough{}, Discard{}, HigherValue{}}
}

var (
	_ spi.MergePolicy = PutIfAbsent{}
	_ spi.MergePolicy = PassThrough{}
	_ spi.MergePolicy = Discard{}
	_ spi.MergePolicy = HigherValue{}
)

// PutIfAbsent keeps the larger cluster's value when it has one, else takes
// the merging value: what the smaller side adds survives, what both sides
// hold is the larger side's. It is the default policy.
type PutIfAbsent struct{}

// Name implements spi.MergePolicy.
func (PutIfAbsent) Name() string { return PutIfAbsentName }

// Merge implements spi.MergePolicy.
func (PutIfAbsent) Merge(merging, existing any, exists bool) (any, bool) {
	if exists {
		return existing, true
	}
	return merging, true
}

// PassThrough always takes the merging value: the smaller side wins every
// entry it holds.
type PassThrough struct{}

// Name implements spi.MergePolicy.
func (PassThrough) Name() string { return PassThroughName }

// Merge implements spi.MergePolicy.
func (PassThrough) Merge(merging, _ any, _ bool) (any, bool) { return merging, true }

// Discard keeps the larger cluster's value and drops the merging one: the
// smaller side's data is lost, entries it alone held included.
type Discard struct{}

// Name implements spi.MergePolicy.
func (Discard) Name() string { return DiscardName }

// Merge implements spi.MergePolicy.
func (Discard) Merge(_, existing any, exists bool) (any, bool) { return existing, exists }

// Valuer is a value that HigherValue compares by MergeValue (the
// counter's state, for example, by the counter's value).
type Valuer interface {
	MergeValue() int64
}

// HigherValue keeps the greater of the two values, the larger cluster's
// on a tie, and takes the merging value when the larger cluster has none.
// Values compare naturally when both are numbers of Go's built-in kinds
// (any integer or float kind, named types included: integers exactly,
// mixed signed and unsigned too; a float against anything as float64,
// where a NaN is never greater), or both strings (bytewise), or both
// Valuers (by MergeValue). Values that do not compare that way (a string
// and a number, two structs) keep the larger cluster's value, as
// put-if-absent does.
type HigherValue struct{}

// Name implements spi.MergePolicy.
func (HigherValue) Name() string { return HigherValueName }

// Merge implements spi.MergePolicy.
func (HigherValue) Merge(merging, existing any, exists bool) (any, bool) {
	if !exists {
		return merging, true
	}
	if c, ok := Compare(merging, existing); ok && c > 0 {
		return merging, true
	}
	return existing, true
}

// Compare compares a and b as HigherValue does: -1, 0 or +1, and ok false
// when they do not compare (see HigherValue).
func Compare(a, b any) (int, bool) {
	if va, ok := a.(Valuer); ok {
		if vb, ok := b.(Valuer); ok {
			return cmp.Compare(va.MergeValue(), vb.MergeValue()), true
		}
		return 0, false
	}
	na, ka := classify(a)
	nb, kb := classify(b)
	switch {
	case ka == kindString && kb == kindString:
		return strings.Compare(na.s, nb.s), true
	case ka == kindNone || kb == kindNone || ka == kindString || kb == kindString:
		return 0, false
	case ka == kindFloat || kb == kindFloat:
		fa, fb := na.float(ka), nb.float(kb)
		if math.IsNaN(fa) || math.IsNaN(fb) {
			return 0, false
		}
		return cmp.Compare(fa, fb), true
	case ka == kindInt && kb == kindInt:
		return cmp.Compare(na.i, nb.i), true
	case ka == kindUint && kb == kindUint:
		return cmp.Compare(na.u, nb.u), true
	case ka == kindInt: // and b unsigned
		if na.i < 0 {
			return -1, true
		}
		return cmp.Compare(uint64(na.i), nb.u), true
	default: // a unsigned, b signed
		if nb.i < 0 {
			return 1, true
		}
		return cmp.Compare(na.u, uint64(nb.i)), true
	}
}

type kind uint8

const (
	kindNone kind = iota
	kindInt
	kindUint
	kindFloat
	kindString
)

// scalar is a value of one of the kinds HigherValue compares.
type scalar struct {
	i int64
	u uint64
	f float64
	s string
}

func (n scalar) float(k kind) float64 {
	switch k {
	case kindInt:
		return float64(n.i)
	case kindUint:
		return float64(n.u)
	}
	return n.f
}

// classify classifies v by its kind (so named types count too).
func classify(v any) (scalar, kind) {
	switch x := v.(type) { // the common cases without reflection
	case int64:
		return scalar{i: x}, kindInt
	case int:
		return scalar{i: int64(x)}, kindInt
	case string:
		return scalar{s: x}, kindString
	case nil:
		return scalar{}, kindNone
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return scalar{i: rv.Int()}, kindInt
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return scalar{u: rv.Uint()}, kindUint
	case reflect.Float32, reflect.Float64:
		return scalar{f: rv.Float()}, kindFloat
	case reflect.String:
		return scalar{s: rv.String()}, kindString
	}
	return scalar{}, kindNone
}
