package nodeengine

import (
	"slices"
	"sync/atomic"

	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// clusterView is what this member knows of the cluster: its own ID, the
// member list and the partition table. Every part of the node reads it,
// from any goroutine, without locks. Only the membership loop
// (Node.refreshMembers) stores the member list, and only tables.install
// stores a table. id is set once, by Start, before any other goroutine
// of the node runs.
type clusterView struct {
	id      string
	count   int                          // partitions
	members atomic.Pointer[[]spi.Member] // oldest first
	table   atomic.Pointer[partition.Table]
}

func newClusterView(count int) *clusterView {
	v := &clusterView{count: count}
	v.members.Store(&[]spi.Member{})
	return v
}

// memberList returns the member list (oldest first; do not modify).
func (v *clusterView) memberList() []spi.Member { return *v.members.Load() }

// isMaster reports whether this member is the oldest, the one that owns
// the partition table.
func (v *clusterView) isMaster() bool {
	ms := v.memberList()
	return len(ms) > 0 && ms[0].ID == v.id
}

// masterID returns the oldest member's ID ("" while the list is empty).
func (v *clusterView) masterID() string {
	if ms := v.memberList(); len(ms) > 0 {
		return ms[0].ID
	}
	return ""
}

// hasMember reports whether member id is in the member list.
func (v *clusterView) hasMember(id string) bool { return containsMember(v.memberList(), id) }

// replicaIndex returns this member's replica index of partition p in the
// current table (-1: none; the table may be nil).
func (v *clusterView) replicaIndex(p int) int { return v.table.Load().ReplicaIndex(p, v.id) }

func containsMember(ms []spi.Member, id string) bool {
	return slices.ContainsFunc(ms, func(m spi.Member) bool { return m.ID == id })
}
