package spi

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// Service is a user-defined service: any Go value created by the factory
// registered with config.RegisterService. The engine discovers what the
// service can do by type assertion: ManagedService, RemoteService,
// OperationProvider, ConfigParser, MigrationAwareService,
// PartitionLostListener (and, later, SplitBrainHandlerService). The
// package overview lists which goroutine calls each of them.
type Service any

// ManagedService is a service with a lifecycle.
type ManagedService interface {
	// Init is called once, on the goroutine that runs Node.Start, after
	// the member has bound its port and before it joins the cluster, in the
	// order the services appear in the config. props are the service's
	// `properties:` from the config file. An error aborts Start. The
	// executors start after Init and the member has no partition table
	// yet: Init may keep the engine and prepare containers, but must not
	// invoke operations or call RunOnPartition.
	Init(engine NodeEngine, props Properties) error

	// Shutdown is called once, on the goroutine that runs Node.Shutdown
	// or Node.Terminate (or Node.Start, when Start fails after this
	// service's Init), in reverse config order, after the partition
	// executors have stopped (so no operation runs concurrently).
	// terminate is true for a hard stop (no graceful hand-off of data).
	Shutdown(terminate bool)

	// Reset drops all of this member's data for the service, for a member
	// whose cluster merges into a larger one after a split brain (after
	// PrepareMerge, if the service is a SplitBrainHandlerService), with
	// every partition refusing operations. It is called on the merge's
	// goroutine, in config order, and must not block.
	Reset()
}

// RemoteService is a service that hands out distributed objects (proxies).
type RemoteService interface {
	// CreateDistributedObject returns the proxy for name. It is called once
	// per name on every member (again after a Destroy): on the goroutine of
	// the first Proxies().Get on this member, on a generic executor when
	// another member created the object, or on a goroutine of the engine
	// when this member, just joined, learns the objects created before it.
	// It runs under the proxy registry's lock: it must not block on remote
	// calls nor call the ProxyRegistry.
	CreateDistributedObject(name string) (DistributedObject, error)

	// DestroyDistributedObject drops the object's data on this member. It
	// is called on every member when the object is destroyed anywhere in
	// the cluster: on the goroutine of ProxyRegistry.Destroy on the member
	// that destroys it, on a generic executor on the others. Data that
	// partition executors own must be dropped with
	// OperationService.RunOnPartition. It must not block on remote calls.
	DestroyDistributedObject(name string)
}

// DistributedObject is a proxy to a named object of a RemoteService.
type DistributedObject interface {
	// Name returns the object's name.
	Name() string
	// ServiceName returns the name of the service that owns the object.
	ServiceName() string
	// Destroy removes the object and its data on every member. It waits
	// for every member (see ProxyRegistry.Destroy): call it from a
	// goroutine of your own, not as a partition's executor.
	Destroy(ctx context.Context) error
}

// ConfigParser is implemented by a service that wants its raw
// `configuration:` YAML node (the ServiceConfigurationParser of Go).
// ParseConfig is called on the Start goroutine before Init; an error aborts
// Start and is reported with the file and line of the node.
type ConfigParser interface {
	ParseConfig(node *yaml.Node) error
}

// Member is one member of the cluster as seen in the member list.
type Member struct {
	// ID is unique per member process (a new one on every start).
	ID string
	// Address is the host:port the member serves operations on.
	Address string
	// Started is when the member started; the oldest member is the master.
	Started time.Time
}

// NodeEngine is what the engine gives a service. Its methods are safe for
// concurrent use from any goroutine and return at once; of the services
// they return, the methods that wait for other members say so.
type NodeEngine interface {
	// ClusterName returns the configured cluster name.
	ClusterName() string
	// LocalMember returns this member.
	LocalMember() Member
	// Members returns the current member list, oldest first (the first is
	// the master).
	Members() []Member
	// Partitions returns the partition service.
	Partitions() PartitionService
	// Operations returns the operation service.
	Operations() OperationService
	// Proxies returns the registry of distributed objects.
	Proxies() ProxyRegistry
	// Logger returns the member's logger.
	Logger() *slog.Logger
	// Metrics returns the member's metrics registerer (never the global
	// one, so that several members may share a process).
	Metrics() prometheus.Registerer
	// MergePolicy returns the merge policy of the named service: the one
	// its config entry names (`merge-policy:`), else the one the service
	// names as a MergePolicyDefault, else put-if-absent. It is resolved
	// when the services are created, before Init; nil for a name that is
	// no enabled service. See SplitBrainHandlerService.
	MergePolicy(service string) MergePolicy
	// RecordedInvocations returns the invocations whose runs this
	// member's replica of partition partitionID holds, as far as the
	// engine still knows them, sorted: those its exactly-once record holds
	// (about operations.dedup-window after they ran), and those it kept
	// when it lost their caller (declared it dead: crashed, or cut off by
	// a split), for split-brain.remember-dead. A caller on the other side
	// of a split retries an invocation whose answer the split cut off, and
	// it runs again there with OpContext.Retried set: a service's merge
	// compares the two sides' recorded invocations to count it once (see
	// SplitBrainHandlerService). Call it as the partition's executor
	// (PrepareMerge, an operation's Run).
	RecordedInvocations(partitionID int) []InvocationID
	// ForgetRecordedInvocations makes RecordedInvocations list only the
	// invocations that run on partition partitionID's replica from now
	// on. A service calls it when it drops data that earlier runs changed
	// (a destroyed object), so that a merge does not take a run whose
	// effect is gone for one that still counts. The exactly-once record
	// itself is kept. Call it as the partition's executor.
	ForgetRecordedInvocations(partitionID int)
	// AdoptInvocations records, in partition partitionID's exactly-once
	// record, invocations whose runs a merge carried over from the other
	// side (its RecordedInvocations): a retry of one of them that comes
	// after the merge, within operations.dedup-window, is answered
	// ErrIndeterminate (its answer is not known here) instead of running
	// a second time, also one this record held with its answer. A merge
	// operation calls it in Run, and its backup operation on each backup
	// replica, as the partition's executor.
	AdoptInvocations(partitionID int, ids []InvocationID)
}

// PartitionService maps keys to partitions and partitions to members, by
// this member's copy of the partition table. Its methods may be called from
// any goroutine; all but IsClusterSafe read local state and return at
// once.
type PartitionService interface {
	// PartitionCount returns the number of partitions (271 by default).
	PartitionCount() int
	// PartitionID returns the partition of key: xxhash64(key) % count.
	PartitionID(key string) int
	// Owner returns the member that owns partition id in this member's
	// copy of the table; false before a table has been received.
	Owner(partitionID int) (Member, bool)
	// IsLocalOwner reports whether this member owns the partition.
	IsLocalOwner(partitionID int) bool
	// TableVersion returns the version of this member's table (0: none).
	TableVersion() int64
	// BackupCount returns how many backup replicas the table keeps per
	// partition (partitions.backup-count, fewer while members are few).
	BackupCount() int
	// ReplicaIndex returns this member's replica index of the partition:
	// 0 primary, i backup i, -1 none.
	ReplicaIndex(partitionID int) int
	// IsClusterSafe asks every member and reports whether no migration is
	// in flight and every backup replica holds what its primary holds. It
	// waits for their answers: not from a partition's executor.
	IsClusterSafe(ctx context.Context) (bool, error)
}

// OperationService sends operations to the members that must run them.
// Its methods may be called from any goroutine, within the limits each
// states.
type OperationService interface {
	// Invoke runs op on the owner of partitionID, as that partition's
	// executor (see Operation.Run), and returns its response (nil for an operation
	// that is not a ResponseOperation). Retryable errors (see IsRetryable)
	// are retried with back-off until ctx ends; a ctx without a deadline
	// gets the configured invocation timeout. An error returned by Run on
	// another member arrives as a *RemoteError. It blocks the calling
	// goroutine until the answer (or the deadline): call it from a
	// goroutine of your own, such as a proxy's caller, never from an
	// operation's Run or another hook that runs as a partition's executor.
	Invoke(ctx context.Context, service string, op Operation, partitionID int) (any, error)

	// InvokeOnMember runs op on the given member (by ID) on its generic
	// executor, not bound to a partition; generic operations may run at
	// the same time as each other. It blocks like Invoke.
	InvokeOnMember(ctx context.Context, service string, op Operation, memberID string) (any, error)

	// RunOnPartition queues fn on the local executor goroutine of
	// partitionID, after the operations already queued for it. Services use
	// it to touch their per-partition containers from outside an operation
	// (for example in DestroyDistributedObject, or a metrics collector).
	// It does not wait for fn to run, but waits for room while the
	// executor's queue is full: do not call it as a partition's executor
	// (from a partition operation, a backup or a MigrationAwareService
	// method), where it could wait for itself.
	RunOnPartition(partitionID int, fn func()) error
}

// ProxyRegistry holds this member's proxies, one per (service, name). Its
// methods may be called from any goroutine; Get (on first use) and
// Destroy wait for every member, so not from a partition's executor nor
// from CreateDistributedObject, which runs under the registry's lock.
type ProxyRegistry interface {
	// Get returns the cached proxy for name, creating it on first use here
	// and on every other member (CreateDistributedObject runs everywhere
	// before Get returns).
	Get(ctx context.Context, service, name string) (DistributedObject, error)
	// Destroy runs DestroyDistributedObject on every member and drops the
	// cached proxies.
	Destroy(ctx context.Context, service, name string) error
	// Names lists the objects of service known to this member; it returns
	// at once.
	Names(service string) []string
}
