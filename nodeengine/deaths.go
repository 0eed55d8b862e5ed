package nodeengine

import (
	"context"
	"math"
	"sync"
	"time"
)

// Confirming a death by the member's port (membership.dead-on-refused-port).
//
// memberlist declares a member dead once a suspicion times out, which
// takes seconds, and longer when too few members are left to confirm it
// (two deaths at once: docs/operations.md, section 9). A member whose
// process is gone is known sooner: its host answers a dial to its port
// "connection refused", as nothing listens there any more. A process
// that is only frozen, a host that is down and a network that drops
// packets do not refuse (the dial waits or times out), so they wait for
// memberlist. A firewall rule that rejects rather than drops does refuse
// for a member that runs: memberlist then goes on listing it, and the
// declaration is taken back (undoGone) once memberlist would have
// declared a dead member dead.
const (
	refusedChecks     = 3                      // dials that must all be refused
	refusedCheckPause = 100 * time.Millisecond // between them
)

// refusedPorts is the set of member addresses being checked.
type refusedPorts struct {
	mu       sync.Mutex
	checking map[string]bool
}

// portRefused is told of a dial to addr that was refused (any goroutine;
// it does not block): if addr is a member's port, it checks whether the
// member is gone.
func (n *Node) portRefused(addr string) {
	if !n.cfg.Membership.DeadOnRefusedPort || n.run.ctx.Err() != nil {
		return
	}
	id := ""
	for _, m := range n.view.memberList() {
		if m.Address == addr && m.ID != n.view.id {
			id = m.ID
			break
		}
	}
	if id == "" || !n.del.refusalsCount(id) {
		return
	}
	r := &n.refused
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.checking[addr] {
		return
	}
	if r.checking == nil {
		r.checking = make(map[string]bool)
	}
	r.checking[addr] = true
	spawned := n.run.spawn(func() {
		defer func() {
			r.mu.Lock()
			delete(r.checking, addr)
			r.mu.Unlock()
		}()
		n.checkRefused(id, addr)
	})
	if !spawned {
		delete(r.checking, addr)
	}
}

// checkRefused declares member id dead when its port at addr refuses
// refusedChecks dials in a row, refusedCheckPause apart.
func (n *Node) checkRefused(id, addr string) {
	timeout := n.cfg.Membership.ProbeTimeout
	for range refusedChecks {
		select {
		case <-n.run.stop():
			return
		case <-time.After(refusedCheckPause):
		}
		if !n.view.hasMember(id) {
			return
		}
		ctx, cancel := context.WithTimeout(n.run.ctx, timeout)
		refused := n.tr.refuses(ctx, addr, timeout)
		cancel()
		if !refused {
			return
		}
	}
	if !n.del.confirmDead(id) {
		return
	}
	n.log.Warn("member declared dead: its port refuses connections (its process is gone), ahead of memberlist's suspicion",
		"dead", addr, "dead_id", id, "checks", refusedChecks)
	n.metrics.refusedDeaths.Inc()
	// memberlist declares a member that is gone dead in its own time. If
	// it still lists it long after, the member runs: something else
	// refused the dials.
	wait := n.memberlistDeclares()
	select {
	case <-n.run.stop():
		return
	case <-time.After(wait):
	}
	if n.del.undoGone(id) {
		n.log.Warn("member declared dead by its refused port is still alive for memberlist: taken back; refusals of its port are ignored from now on",
			"member", addr, "member_id", id, "waited", wait)
	}
}

// memberlistDeclares bounds how long memberlist takes to declare a dead
// member dead: a probe round over the members (each member probes one
// per interval, in turn), then the longest suspicion; twice that, plus 5 s.
func (n *Node) memberlistDeclares() time.Duration {
	ms := n.cfg.Membership
	size := max(len(n.view.memberList())+1, 2)
	scale := max(1, math.Log10(float64(size)))
	suspicion := time.Duration(float64(ms.SuspicionMaxTimeoutMult*ms.SuspicionMult) * scale * float64(ms.ProbeInterval))
	return 2*(time.Duration(size)*ms.ProbeInterval+suspicion) + 5*time.Second
}
