package spi

import "fmt"

// LifecycleState is a step of a member's life that listeners are told of
// (nodeengine.WithLifecycleListener).
type LifecycleState int

const (
	// Merging: this member's cluster found a larger cluster of its name
	// and this member is giving up its data to join it (split-brain
	// healing); the services' merge operations are being collected.
	Merging LifecycleState = iota + 1
	// Merged: this member joined the larger cluster and its services'
	// merge operations ran there.
	Merged
	// MergeFailed: the merge did not complete; Reason says why. The member
	// may have joined the larger cluster without all of its data.
	MergeFailed
)

func (s LifecycleState) String() string {
	switch s {
	case Merging:
		return "MERGING"
	case Merged:
		return "MERGED"
	case MergeFailed:
		return "MERGE_FAILED"
	}
	return fmt.Sprintf("LifecycleState(%d)", int(s))
}

// LifecycleEvent is one lifecycle step of a member.
type LifecycleEvent struct {
	State  LifecycleState
	Member string // the member's ID
	Reason string // MergeFailed: why
}
