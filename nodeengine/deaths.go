package nodeengine

import (
	"context"
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
// that is only frozen, a host that is down and a cut network do not
// refuse (the dial waits or times out), so they wait for memberlist.
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
		}
	}
	if id == "" {
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
	if n.del.confirmDead(id) {
		n.log.Warn("member declared dead: its port refuses connections (its process is gone), ahead of memberlist's suspicion",
			"dead", addr, "dead_id", id, "checks", refusedChecks)
		n.metrics.refusedDeaths.Inc()
	}
}
