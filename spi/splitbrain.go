package spi

// SplitBrainHandlerService is a service whose data survives the healing
// of a split brain. When two clusters of the same name meet (after a
// network split healed, or two clusters started apart), the smaller one
// merges into the larger: each of its members gives up its partitions,
// joins the larger cluster (keeping its member ID), and carries over what
// the services it runs want kept, as merge operations (see
// docs/architecture.md, "Split brain").
//
// PrepareMerge is called on every member of the merging side, once for
// each partition it owns (backups are not asked: their primary carries
// the data), as that partition's executor, before Reset, so with that
// side's data. It returns the operations that carry the partition's data
// into the larger cluster, or none. The engine runs them after the join,
// in order, on the partition's owner there through the normal invocation
// path (so they are backed up and run exactly once); each applies the
// service's merge policy (NodeEngine.MergePolicy) entry by entry against
// what the larger cluster holds. PrepareMerge must not block; the
// operations it returns must be of the service's registered types.
//
// An operation in flight when the split came may have run on both sides
// (OpContext.Retried). A service whose merge must count each operation
// once hands the partition's NodeEngine.RecordedInvocations over with
// its data, and its merge operation compares them with the larger side's
// (services/counter/splitbrain.go does).
type SplitBrainHandlerService interface {
	PrepareMerge(partitionID int) []Operation
}

// MergePolicy decides, entry by entry, what a merge keeps: the merging
// side's value or the larger cluster's. A service's policy is chosen in
// its config section (`merge-policy:`); the standard ones are
// put-if-absent (the default), pass-through, discard and higher-value
// (spi/mergepolicy), and a service may register its own
// (config.RegisterMergePolicy). Merge is called by the merge operations
// as their partition's executor; it must not block and must not keep the
// values.
type MergePolicy interface {
	// Name is the policy's name in the config.
	Name() string
	// Merge returns the value to keep for one entry: merging is the
	// merging side's value, existing the larger cluster's (exists false:
	// it has none). keep false drops the entry.
	Merge(merging, existing any, exists bool) (value any, keep bool)
}

// MergePolicyDefault is implemented by a service whose merge policy,
// when its config entry names none, is not put-if-absent: the counter,
// whose increments merge without loss, names its own ("counter-sum").
// DefaultMergePolicy is called once, on the goroutine of Node.Start,
// after the service is made and before its Init; the name must be
// registered (config.RegisterMergePolicy), else Start fails.
type MergePolicyDefault interface {
	DefaultMergePolicy() string
}
