package mergepolicy_test

import (
	"math"
	"testing"

	"github.com/partita-go/partita/spi"
	"github.com/partita-go/partita/spi/mergepolicy"
)

type result struct {
	value any
	keep  bool
}

func merge(p spi.MergePolicy, merging, existing any, exists bool) result {
	v, keep := p.Merge(merging, existing, exists)
	return result{v, keep}
}

func TestStandardPolicies(t *testing.T) {
	for _, tc := range []struct {
		p                 spi.MergePolicy
		name              string
		both, onlyMerging result
	}{
		{mergepolicy.PutIfAbsent{}, "put-if-absent", result{"old", true}, result{"new", true}},
		{mergepolicy.PassThrough{}, "pass-through", result{"new", true}, result{"new", true}},
		{mergepolicy.Discard{}, "discard", result{"old", true}, result{nil, false}},
		{mergepolicy.HigherValue{}, "higher-value", result{"old", true}, result{"new", true}},
	} {
		if got := tc.p.Name(); got != tc.name {
			t.Errorf("%T.Name() = %q, want %q", tc.p, got, tc.name)
		}
		if got := merge(tc.p, "new", "old", true); got != tc.both {
			t.Errorf("%s: both sides hold it: got %v, want %v", tc.name, got, tc.both)
		}
		if got := merge(tc.p, "new", nil, false); got != tc.onlyMerging {
			t.Errorf("%s: only the merging side holds it: got %v, want %v", tc.name, got, tc.onlyMerging)
		}
	}
	if n := len(mergepolicy.Standard()); n != 4 {
		t.Fatalf("Standard() has %d policies, want 4", n)
	}
}

type valuer int64

func (v valuer) MergeValue() int64 { return int64(v) }

type myInt int32

func TestHigherValue(t *testing.T) {
	hv := mergepolicy.HigherValue{}
	for _, tc := range []struct {
		merging, existing, want any
	}{
		{int64(5), int64(3), int64(5)},
		{int64(3), int64(5), int64(5)},
		{int64(4), int64(4), int64(4)},
		{3, 2, 3},
		{uint8(200), int8(-1), uint8(200)},
		{int64(-1), uint64(math.MaxUint64), uint64(math.MaxUint64)},
		{uint64(math.MaxUint64), int64(math.MaxInt64), uint64(math.MaxUint64)},
		{int64(math.MaxInt64), uint64(1 << 62), int64(math.MaxInt64)},
		{2.5, 2, 2.5},
		{float32(1.5), uint16(2), uint16(2)},
		{math.NaN(), 1.0, 1.0},
		{myInt(7), int64(6), myInt(7)},
		{"b", "a", "b"},
		{"a", "b", "b"},
		{"b", 1, 1},                       // not comparable: existing
		{struct{}{}, "x", "x"},            // not comparable: existing
		{valuer(9), valuer(8), valuer(9)}, // by MergeValue
		{valuer(9), int64(10), int64(10)}, // a Valuer and a number: existing
		{nil, int64(1), int64(1)},
	} {
		got, keep := hv.Merge(tc.merging, tc.existing, true)
		if !keep || got != tc.want {
			t.Errorf("HigherValue(%#v, %#v) = %#v, %v; want %#v", tc.merging, tc.existing, got, keep, tc.want)
		}
	}
	// The existing value wins a tie: same value, another type.
	if got, _ := hv.Merge(int32(4), int64(4), true); got != int64(4) {
		t.Errorf("tie kept %#v, want the existing int64(4)", got)
	}
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b any
		c    int
		ok   bool
	}{
		{1, 2, -1, true},
		{uint(2), 1, 1, true},
		{-1, uint(0), -1, true},
		{"x", "x", 0, true},
		{1, "1", 0, false},
		{math.NaN(), math.NaN(), 0, false},
		{valuer(1), valuer(1), 0, true},
		{[]int{1}, []int{2}, 0, false},
	} {
		c, ok := mergepolicy.Compare(tc.a, tc.b)
		if c != tc.c || ok != tc.ok {
			t.Errorf("Compare(%#v, %#v) = %d, %v; want %d, %v", tc.a, tc.b, c, ok, tc.c, tc.ok)
		}
	}
}
