package nodeengine

import (
	"net/netip"
	"testing"
	"time"
)

func TestRejectLogOncePerMinutePerAddress(t *testing.T) {
	var l rejectLog
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	t0 := time.Unix(1000, 0)
	if s, ok := l.allow(a, t0); !ok || s != 0 {
		t.Fatalf("first line from a: allow = %d, %v; want 0, true", s, ok)
	}
	for i := 0; i < 5; i++ {
		if _, ok := l.allow(a, t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatalf("line %d from a within the minute allowed", i+2)
		}
	}
	if s, ok := l.allow(b, t0.Add(time.Second)); !ok || s != 0 {
		t.Fatalf("first line from b: allow = %d, %v; want 0, true", s, ok)
	}
	if s, ok := l.allow(a, t0.Add(time.Minute)); !ok || s != 5 {
		t.Fatalf("a minute later: allow = %d, %v; want 5 suppressed, true", s, ok)
	}
	if _, ok := l.allow(a, t0.Add(time.Minute+time.Second)); ok {
		t.Fatal("line right after the minute's line allowed")
	}
}

func TestRejectLogBounded(t *testing.T) {
	var l rejectLog
	t0 := time.Unix(1000, 0)
	addr := func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	for i := 0; i < rejectLogMax; i++ {
		l.allow(addr(i), t0)
	}
	if _, ok := l.allow(addr(rejectLogMax), t0.Add(time.Second)); ok {
		t.Fatal("a new address logged while the map is full of recent ones")
	}
	if _, ok := l.allow(addr(rejectLogMax), t0.Add(time.Minute)); !ok {
		t.Fatal("a new address not logged once the old ones are a minute old")
	}
	if len(l.from) != 1 {
		t.Fatalf("%d addresses remembered, want 1 after the old ones were forgotten", len(l.from))
	}
}
