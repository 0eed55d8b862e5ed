package nodeengine

import (
	"context"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// routing tells the operation service where partitions and members are,
// by the current table and member list (it implements operation.Routing).
// The operation service calls it from any goroutine; it only reads the
// view.
type routing struct{ view *clusterView }

var _ operation.Routing = routing{}

// Owner implements operation.Routing.
func (r routing) Owner(p int) (id, address string, ok bool) {
	t := r.view.table.Load()
	if t == nil {
		return "", "", false
	}
	id = t.Owners[p]
	if id == "" {
		return "", "", false
	}
	return id, t.Members[id], true
}

// MemberAddress implements operation.Routing.
func (r routing) MemberAddress(id string) (string, bool) {
	ms := r.view.memberList()
	for _, m := range ms {
		if m.ID == id {
			return m.Address, true
		}
	}
	// A member that has just joined may hear from others (the master's
	// table) before its own member list catches up.
	if t := r.view.table.Load(); t != nil && len(ms) <= 1 {
		if a, ok := t.Members[id]; ok {
			return a, true
		}
	}
	return "", false
}

// Backups implements operation.Routing.
func (r routing) Backups(p int, dst []operation.Replica) []operation.Replica {
	t := r.view.table.Load()
	if t == nil || p >= len(t.Backups) {
		return dst
	}
	for i, id := range t.Backups[p] {
		if id != "" {
			dst = append(dst, operation.Replica{ID: id, Address: t.Members[id], Index: i + 1})
		}
	}
	for i, id := range t.IncomingOf(p) {
		if id != "" {
			dst = append(dst, operation.Replica{ID: id, Address: t.Members[id], Index: i + 1, Incoming: true})
		}
	}
	return dst
}

// ReplicaIndex implements operation.Routing.
func (r routing) ReplicaIndex(p int) int { return r.view.replicaIndex(p) }

// partitionView implements spi.PartitionService over the node's view;
// services call it from any goroutine. IsClusterSafe asks every member
// (see safety).
type partitionView struct {
	view        *clusterView
	clusterSafe func(ctx context.Context) (bool, error)
}

func (v *partitionView) PartitionCount() int        { return v.view.count }
func (v *partitionView) PartitionID(key string) int { return partition.ID(key, v.view.count) }
func (v *partitionView) TableVersion() int64 {
	if t := v.view.table.Load(); t != nil {
		return t.Version
	}
	return 0
}
func (v *partitionView) BackupCount() int       { return v.view.table.Load().BackupCount() }
func (v *partitionView) ReplicaIndex(p int) int { return v.view.replicaIndex(p) }
func (v *partitionView) IsClusterSafe(ctx context.Context) (bool, error) {
	return v.clusterSafe(ctx)
}
func (v *partitionView) IsLocalOwner(p int) bool {
	id, _, ok := routing{v.view}.Owner(p)
	return ok && id == v.view.id
}
func (v *partitionView) Owner(p int) (spi.Member, bool) {
	if p < 0 || p >= v.view.count {
		return spi.Member{}, false
	}
	id, addr, ok := routing{v.view}.Owner(p)
	if !ok {
		return spi.Member{}, false
	}
	for _, m := range v.view.memberList() {
		if m.ID == id {
			return m, true
		}
	}
	return spi.Member{ID: id, Address: addr}, true
}
