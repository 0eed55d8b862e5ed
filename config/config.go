package config

import (
	_ "embed"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/partita-go/partita/spi"
)

// defaultYAML is the single source of the defaults: Default decodes it, and
// users can read it as a commented example.
//
//go:embed default.yaml
var defaultYAML []byte

// DefaultSource is the Source of the configuration returned by Default.
const DefaultSource = "<default>"

// Config is the configuration of one Partita member.
type Config struct {
	// Source names where the configuration came from: the file name given
	// to Load or Parse, or DefaultSource. Errors start with it.
	Source string
	// Cluster is the `cluster:` section.
	Cluster ClusterConfig
	// Network is the `network:` section.
	Network NetworkConfig
	// Partitions is the `partitions:` section.
	Partitions PartitionsConfig
	// Operations is the `operations:` section.
	Operations OperationsConfig
	// Membership is the `membership:` section.
	Membership MembershipConfig
	// Migration is the `migration:` section.
	Migration MigrationConfig
	// SplitBrain is the `split-brain:` section.
	SplitBrain SplitBrainConfig
	// Metrics is the `metrics:` section.
	Metrics MetricsConfig
	// Services is the `services:` list, disabled entries included.
	Services []ServiceConfig

	// lines maps a key path ("network.bind", "services[1].type") to the line
	// it was read from, so that Validate can point into the file.
	lines map[string]int
}

// ClusterConfig is the `cluster:` section.
type ClusterConfig struct {
	// Name is the cluster name (`name`, default "dev"); members join only a
	// cluster of the same name. It must not be empty.
	Name string
}

// NetworkConfig is the `network:` section.
type NetworkConfig struct {
	// Bind is the host:port the member listens on (`bind`, default
	// "127.0.0.1:5701"). Port 0 picks any free port.
	Bind string
	// PortAutoIncrement makes the member try the next ports when Bind's
	// port is taken (`port-auto-increment`, default true).
	PortAutoIncrement bool
	// PortCount is how many ports, from Bind's port up, auto-increment may
	// try (`port-count`, default 100).
	PortCount int
	// MaxPendingConnections caps the inbound connections that have not yet
	// sent their protocol selector, from everywhere
	// (`max-pending-connections`, default 1024); more are closed at once.
	MaxPendingConnections int
	// MaxPendingPerAddress caps them per remote IP address
	// (`max-pending-per-address`, default 256).
	MaxPendingPerAddress int
	// Join says how the member finds the cluster (`join`).
	Join JoinConfig
}

// JoinConfig is the `network.join:` section.
type JoinConfig struct {
	// Members is a static seed list of host:port (`members`, default
	// empty).
	Members []string
	// Multicast is multicast discovery (`multicast`).
	Multicast MulticastConfig
}

// MulticastConfig is the `network.join.multicast:` section.
type MulticastConfig struct {
	// Enabled turns multicast discovery on (`enabled`, default true).
	Enabled bool
	// Group is the IPv4 multicast address:port (`group`, default
	// "224.2.2.3:54327"); checked only when Enabled.
	Group string
}

// PartitionsConfig is the `partitions:` section.
type PartitionsConfig struct {
	// Count is the number of partitions (`count`, default 271), 1..65535.
	// Every member of a cluster must use the same count.
	Count int
	// BackupCount is how many backup replicas the partition table keeps
	// per partition (`backup-count`, default 1, 0..6), on other members
	// than the primary. A service can use up to this many backups.
	BackupCount int
	// AntiEntropyInterval is how often a primary sends its replica
	// versions to its backups, which resynchronise when behind
	// (`anti-entropy-interval`, default 30s).
	AntiEntropyInterval time.Duration
}

// OperationsConfig is the `operations:` section.
type OperationsConfig struct {
	// PartitionThreads is the number of partition executor goroutines
	// (`partition-threads`, default 0, meaning GOMAXPROCS).
	PartitionThreads int
	// QueueSize is the capacity of each executor's queue (`queue-size`,
	// default 4096).
	QueueSize int
	// InvocationTimeout bounds an invocation whose context has no deadline
	// (`invocation-timeout`, default 120s).
	InvocationTimeout time.Duration
	// RetryPause is the first back-off between retries (`retry-pause`,
	// default 10ms); it must be shorter than InvocationTimeout.
	RetryPause time.Duration
	// DedupWindow is how long a primary remembers the invocations it ran
	// (`dedup-window`, default 10s), so that a retry after a lost answer
	// or a failover is answered instead of applied again. A retry later
	// than this after the first attempt fails with spi.ErrIndeterminate.
	DedupWindow time.Duration
	// BackupAckTimeout bounds the wait for one synchronous backup's
	// acknowledgement, re-sends included (`backup-ack-timeout`, default
	// 10s). Past it the caller gets spi.ErrBackupTimeout.
	BackupAckTimeout time.Duration
	// FrameBodyTimeout bounds how long a frame from another member may
	// take to arrive whole once it began (`frame-body-timeout`, default
	// 10s); past it the connection is closed.
	FrameBodyTimeout time.Duration
}

// MembershipConfig is the `membership:` section: failure detection and
// gossip timing.
type MembershipConfig struct {
	// ProbeInterval is how often a random member is probed
	// (`probe-interval`, default 1s).
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for its ack (`probe-timeout`,
	// default 500ms); it must not exceed ProbeInterval.
	ProbeTimeout time.Duration
	// SuspicionMult scales how long a suspected member has to refute the
	// suspicion before it is declared dead (`suspicion-mult`, default 4).
	SuspicionMult int
	// SuspicionMaxTimeoutMult bounds how much longer than the minimum a
	// suspicion lasts when the confirmations memberlist expects from other
	// members do not come (`suspicion-max-timeout-mult`, default 2;
	// memberlist's own default is 6). A suspicion starts at this many
	// times the minimum timeout and shrinks to it as confirmations arrive.
	SuspicionMaxTimeoutMult int
	// DeadOnRefusedPort declares a member dead without waiting for
	// memberlist's suspicion when its port refuses connections
	// (`dead-on-refused-port`, default true): a dial to it that the host
	// answers "connection refused" starts a check, and three refused
	// dials 100 ms apart confirm that nothing listens there: the process
	// is gone (killed, crashed, stopped). A host that is down, a network
	// that drops packets or a frozen process does not refuse, and
	// memberlist's suspicion applies to them as before. A firewall rule
	// that rejects rather than drops does refuse: if memberlist goes on
	// listing the member, the declaration is taken back once memberlist
	// would have declared it dead (docs/architecture.md, "Membership and
	// the master"). Turn it off where such rules sit between members.
	DeadOnRefusedPort bool
	// GossipInterval is how often membership changes are gossiped
	// (`gossip-interval`, default 200ms).
	GossipInterval time.Duration
	// PushPullInterval is how often a member exchanges its full member
	// list with a random other member, repairing what gossip missed
	// (`push-pull-interval`, default 15s).
	PushPullInterval time.Duration
}

// SplitBrainConfig is the `split-brain:` section: how a cluster looks for
// other clusters of its name, to merge the smaller into the larger.
type SplitBrainConfig struct {
	// FirstProbeDelay is how long after start the master first looks
	// (`first-probe-delay`, default 300s).
	FirstProbeDelay time.Duration
	// ProbeInterval is how often it looks again (`probe-interval`,
	// default 120s).
	ProbeInterval time.Duration
	// RememberDead is how long a member declared dead is remembered
	// (`remember-dead`, default 1h): its address stays among the places
	// looked at (after a network split, the other side is there), and the
	// exactly-once records of the invocations it made are kept (pinned),
	// so that a merge counts an invocation retried across the split once
	// (spi.NodeEngine.RecordedInvocations).
	RememberDead time.Duration
}

// MigrationConfig is the `migration:` section.
type MigrationConfig struct {
	// Parallel is how many partitions the master migrates at once
	// (`parallel`, default 4).
	Parallel int
	// StepTimeout bounds one step of a migration on one member
	// (`step-timeout`, default 30s); a step that takes longer is rolled
	// back.
	StepTimeout time.Duration
	// ShutdownTimeout bounds how long a graceful Shutdown waits for this
	// member's partitions to migrate away (`shutdown-timeout`, default
	// 60s).
	ShutdownTimeout time.Duration
}

// MetricsConfig configures the metrics endpoint.
type MetricsConfig struct {
	// Address is the host:port of the member's HTTP endpoint: metrics,
	// health and the cluster view (`address`, default 127.0.0.1:9701; ""
	// disables it). Port auto-increment applies as for network.bind.
	Address string
}

// ServiceConfig is one entry of the `services:` list.
type ServiceConfig struct {
	// Name is the service's unique name (`name`, required).
	Name string
	// Type is the registered factory that creates the service (`type`,
	// required; see RegisterService).
	Type string
	// Enabled is false for an entry that is kept but not started
	// (`enabled`, default true).
	Enabled bool
	// Properties are the entry's `properties:`, a flat map of scalars.
	Properties spi.Properties
	// SplitBrainProtection is the entry's `split-brain-protection:`: the
	// smallest member list on which the service's operations run.
	SplitBrainProtection SplitBrainProtectionConfig
	// Configuration is the raw `configuration:` node (any YAML), or nil
	// when absent. The engine hands it to a service that implements
	// spi.ConfigParser.
	Configuration *yaml.Node
	// MergePolicy names the policy that merges the service's data after
	// a split brain (`merge-policy`, see spi.MergePolicy and
	// RegisterMergePolicy); empty: the service's own default
	// (spi.MergePolicyDefault), else put-if-absent.
	MergePolicy string
	// Where is "file:line" of the entry, for error messages; empty for an
	// entry built in code.
	Where string
}

// SplitBrainProtectionConfig is a service entry's
// `split-brain-protection:` section. An operation of the service that it
// protects is refused with spi.ErrSplitBrainProtection, before it runs,
// on a member whose member list (itself included) is shorter than
// MinSize; see docs/operations.md.
type SplitBrainProtectionConfig struct {
	// MinSize is the fewest members the service needs (`min-size`,
	// default 0: no protection). 1 is always met.
	MinSize int
	// ProtectOn says which operations are protected (`protect-on`,
	// default read-write): ProtectRead, ProtectWrite or ProtectReadWrite;
	// "" means ProtectReadWrite. An operation is a write when it is a
	// spi.BackupAwareOperation, unless it is a spi.MutatingOperation that
	// says otherwise.
	ProtectOn string
}

// The values of protect-on.
const (
	ProtectRead      = "read"
	ProtectWrite     = "write"
	ProtectReadWrite = "read-write"
)

// MinSizes returns the fewest members that reads and that writes need
// (0: not protected).
func (p SplitBrainProtectionConfig) MinSizes() (reads, writes int) {
	switch p.ProtectOn {
	case ProtectRead:
		return p.MinSize, 0
	case ProtectWrite:
		return 0, p.MinSize
	}
	return p.MinSize, p.MinSize
}

// Default returns the built-in configuration, decoded from the embedded
// default.yaml (a commented copy of every key). Each call returns a fresh
// value that the caller may change; Validate then names the keys but no
// lines. Default does not validate: the service types it names are
// registered by packages it cannot import.
func Default() *Config {
	c := *parsedDefault()
	c.Network.Join.Members = slices.Clone(c.Network.Join.Members)
	// Entries are copied by value; their Properties are read-only and the
	// default entries have no Configuration node to share.
	c.Services = slices.Clone(c.Services)
	return &c
}

// parsedDefault decodes default.yaml once: Parse starts from it on every
// call.
var parsedDefault = sync.OnceValue(func() *Config {
	c := &Config{Source: DefaultSource, lines: map[string]int{}}
	if errs := decodeErrors(c, DefaultSource, defaultYAML); len(errs) > 0 {
		panic(fmt.Sprintf("config: embedded default.yaml is broken: %v", joinSorted(errs)))
	}
	c.lines = nil
	return c
})

// UseFastFailureDetection tunes membership for tests and demos on one
// host: a dead member is noticed in about a second instead of several, and
// anti-entropy runs twice a second. The suspicion multiplier of 3 makes
// memberlist wait for a second member to confirm a suspicion (in clusters
// of 3 or more) before the minimum timeout applies, or else up to 6 times
// longer: with 2 it needed no confirmation, and on a loaded machine one
// member starved of CPU declared the others dead by itself after 400 ms.
// For the same reason it keeps memberlist's SuspicionMaxTimeoutMult of 6
// (an unconfirmed suspicion lasts 3.6 s, not 1.2 s as with the default
// 2): a member left alone by two overlapping deaths waits that long.
func (c *Config) UseFastFailureDetection() {
	c.Membership.ProbeInterval = 200 * time.Millisecond
	c.Membership.ProbeTimeout = 100 * time.Millisecond
	c.Membership.SuspicionMult = 3
	c.Membership.SuspicionMaxTimeoutMult = 6
	c.Membership.GossipInterval = 50 * time.Millisecond
	c.Membership.PushPullInterval = time.Second
	c.Partitions.AntiEntropyInterval = 500 * time.Millisecond
	c.SplitBrain.FirstProbeDelay = time.Second
	c.SplitBrain.ProbeInterval = time.Second
}

// Load reads the file at path and parses it with Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes the YAML in data over the values of Default and validates
// the result. source names the data in errors (usually the file name).
// Every problem found is reported, joined with errors.Join; each is an
// *Error naming source, line and key.
func Parse(source string, data []byte) (*Config, error) {
	c := Default()
	c.Source = source
	c.lines = map[string]int{}
	errs := decodeErrors(c, source, data)
	errs = append(errs, c.validate()...)
	if len(errs) > 0 {
		return nil, joinSorted(errs)
	}
	return c, nil
}

// EnabledServices returns the services whose Enabled is true, in config
// order.
func (c *Config) EnabledServices() []ServiceConfig {
	var out []ServiceConfig
	for _, s := range c.Services {
		if s.Enabled {
			out = append(out, s)
		}
	}
	return out
}
