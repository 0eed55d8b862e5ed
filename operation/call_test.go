package operation

import (
	"testing"

	"github.com/partita-go/partita/internal/transport"
)

// A caller that gives up after its answer was delivered takes it anyway,
// so the runnable count does not drift; one that gives up first is not
// counted when the late answer arrives.
func TestCallAbandonKeepsCountExact(t *testing.T) {
	var h transport.HeldWrites
	cl := newCall(nil)
	cl.held = &h
	cl.complete(1, nil)
	if h.Runnable() != 1 {
		t.Fatal("delivery not counted")
	}
	if cl.abandon() {
		t.Fatal("abandon succeeded after delivery")
	}
	<-cl.done
	cl.taken()
	if h.Runnable() != 0 {
		t.Fatal("count not restored")
	}
	cl2 := newCall(nil)
	cl2.held = &h
	if !cl2.abandon() {
		t.Fatal("abandon failed before delivery")
	}
	cl2.complete(nil, nil)
	if h.Runnable() != 0 {
		t.Fatal("late answer to an abandoned call counted")
	}
}
