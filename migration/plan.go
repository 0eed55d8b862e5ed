package migration

import (
	"github.com/partita-go/partita/partition"
)

// Move is one planned migration of a partition's primary replica.
type Move struct {
	Partition   int
	Source      string // member ID holding the partition
	Destination string // member ID receiving it
	// DestinationIndex is the destination's replica index before the move
	// (-1 none, or the backup it held); SourceNewIndex is the source's
	// after it (-1, or that same backup index: they swap). The Manager
	// fills both in when the move starts.
	DestinationIndex, SourceNewIndex int
	// ID tells attempts of the same move apart (set by the Manager).
	ID uint64
	// Term is the term of the table the move started from (set by the
	// Manager): the move completes only by a table of that term. A
	// member refuses a move of an older term than the table it holds, and
	// a destination's move ends when a table of a newer term comes.
	Term uint64
}

// Plan compares the current owners with the balanced target for members
// (IDs, oldest first) and returns the target, the moves that reach it, and
// the partitions whose current owner is gone or unset (orphans: they are
// assigned to their target owner directly, there is no data to move).
// alive tells whether a current owner still runs (a leaving member is alive
// but not in members).
func Plan(current []string, members []string, count int, alive func(id string) bool) (target []string, moves []Move, orphans []int) {
	members = uniqueMembers(members)
	if len(members) == 0 {
		return make([]string, count), nil, nil
	}
	// Partitions whose owner is dead are free in the target; partitions of
	// a leaving (alive) member are moved with their data.
	prev := make([]string, count)
	for p := range prev {
		if p < len(current) && current[p] != "" && alive(current[p]) {
			prev[p] = current[p]
		}
	}
	target = partition.Rebalance(prev, members, count)
	for p := 0; p < count; p++ {
		switch {
		case prev[p] == "":
			orphans = append(orphans, p)
		case prev[p] != target[p]:
			moves = append(moves, Move{Partition: p, Source: prev[p], Destination: target[p]})
		}
	}
	return target, moves, orphans
}

// uniqueMembers drops empty and repeated IDs, keeping the order.
func uniqueMembers(ms []string) []string {
	seen := make(map[string]bool, len(ms))
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		if m != "" && !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}
