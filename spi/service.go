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
// OperationProvider, ConfigParser (and, later, MigrationAwareService and
// SplitBrainHandlerService).
type Service any

// ManagedService is a service with a lifecycle.
type ManagedService interface {
	// Init is called once, on the goroutine that runs Node.Start, after
	// the member has bound its port and before it joins the cluster, in the
	// order the services appear in the config. props are the service's
	// `properties:` from the config file. An error aborts Start.
	Init(engine NodeEngine, props Properties) error

	// Shutdown is called once, on the goroutine that runs Node.Shutdown,
	// in reverse config order, after the partition executors have stopped
	// (so no operation runs concurrently). terminate is true for a hard
	// stop (no graceful hand-off of data).
	Shutdown(terminate bool)

	// Reset drops all of this member's data for the service (used when a
	// member rejoins after a split brain). It is called with no operation
	// running.
	Reset()
}

// RemoteService is a service that hands out distributed objects (proxies).
type RemoteService interface {
	// CreateDistributedObject returns the proxy for name. It is called once
	// per name on every member, on the goroutine of the first Proxies().Get
	// on this member or on the generic executor when another member created
	// the object; it must not block on remote calls.
	CreateDistributedObject(name string) (DistributedObject, error)

	// DestroyDistributedObject drops the object's data on this member. It
	// is called on every member, on the generic executor, when the object
	// is destroyed anywhere in the cluster. Data that partition executors
	// own must be dropped with OperationService.RunOnPartition.
	DestroyDistributedObject(name string)
}

// DistributedObject is a proxy to a named object of a RemoteService.
type DistributedObject interface {
	// Name returns the object's name.
	Name() string
	// ServiceName returns the name of the service that owns the object.
	ServiceName() string
	// Destroy removes the object and its data on every member.
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
// concurrent use from any goroutine.
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
}

// PartitionService maps keys to partitions and partitions to members.
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
	// in flight and every backup replica holds what its primary holds.
	IsClusterSafe(ctx context.Context) (bool, error)
}

// OperationService sends operations to the members that must run them.
type OperationService interface {
	// Invoke runs op on the owner of partitionID, as that partition's
	// executor (see Operation.Run), and returns its response (nil for an operation
	// that is not a ResponseOperation). Retryable errors (see IsRetryable)
	// are retried with back-off until ctx ends; a ctx without a deadline
	// gets the configured invocation timeout. An error returned by Run on
	// another member arrives as a *RemoteError.
	Invoke(ctx context.Context, service string, op Operation, partitionID int) (any, error)

	// InvokeOnMember runs op on the given member (by ID) on its generic
	// executor, not bound to a partition.
	InvokeOnMember(ctx context.Context, service string, op Operation, memberID string) (any, error)

	// RunOnPartition queues fn on the local executor goroutine of
	// partitionID, after the operations already queued for it. Services use
	// it to touch their per-partition containers from outside an operation
	// (for example in DestroyDistributedObject). It does not wait for fn
	// to run, but waits for room while the executor's queue is full: do
	// not call it from an operation.
	RunOnPartition(partitionID int, fn func()) error
}

// ProxyRegistry holds this member's proxies, one per (service, name).
type ProxyRegistry interface {
	// Get returns the cached proxy for name, creating it on first use here
	// and on every other member (CreateDistributedObject runs everywhere
	// before Get returns).
	Get(ctx context.Context, service, name string) (DistributedObject, error)
	// Destroy runs DestroyDistributedObject on every member and drops the
	// cached proxies.
	Destroy(ctx context.Context, service, name string) error
	// Names lists the objects of service known to this member.
	Names(service string) []string
}
