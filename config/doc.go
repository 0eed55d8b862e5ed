// Package config reads, defaults and validates the YAML configuration of a
// Partita member, and holds the registries of service types and merge
// policies.
//
// Who calls what: a service package calls RegisterService from its init
// function; a program (cmd/member, a test, an embedder) calls Load, Parse
// or Default and hands the Config to nodeengine.New, whose Start looks the
// enabled services' factories up with ServiceFactory. Every function may
// be called from any goroutine: the registry is guarded by a lock, and
// loading touches no shared state. A Config is a plain value: the node
// keeps the one handed to nodeengine.New and reads it from its own
// goroutines, so do not change it after that.
//
// # File format
//
// A configuration file is one YAML document whose top level has up to seven
// sections. Each is optional: the file is decoded over Default, so it only
// needs the keys it changes. The embedded default.yaml, which Default
// decodes, is the commented reference of every key and its default:
//
//	cluster:
//	  name: dev                      # members join only a cluster of the same name
//	network:
//	  bind: 127.0.0.1:5701           # port 0: any free port; empty host: all interfaces
//	  port-auto-increment: true      # try the next ports when the bind port is taken...
//	  port-count: 100                # ...up to this many
//	  max-pending-connections: 1024  # inbound connections yet to send their first byte...
//	  max-pending-per-address: 256   # ...and of them, from one remote IP
//	  join:
//	    members: []                  # static seeds, host:port
//	    multicast:
//	      enabled: true              # multicast discovery, the default join
//	      group: 224.2.2.3:54327     # IPv4 multicast address:port
//	partitions:
//	  count: 271                     # 1..65535, the same on every member
//	operations:
//	  partition-threads: 0           # 0: GOMAXPROCS
//	  queue-size: 4096               # per executor
//	  invocation-timeout: 120s       # for contexts without a deadline
//	  retry-pause: 10ms              # first back-off between retries
//	  dedup-window: 10s              # how long retries are recognised (exactly once)
//	  backup-ack-timeout: 10s        # a sync backup's ack; past it spi.ErrBackupTimeout
//	  frame-body-timeout: 10s        # a frame must arrive whole this soon after it began
//	membership:
//	  probe-interval: 1s
//	  probe-timeout: 500ms           # at most probe-interval
//	  suspicion-mult: 4
//	  suspicion-max-timeout-mult: 2  # unconfirmed suspicion: up to this times the timeout
//	  dead-on-refused-port: true     # a port that refuses connections: dead at once
//	  gossip-interval: 200ms
//	  push-pull-interval: 15s
//	split-brain:                     # looking for other clusters of this name, to merge
//	  first-probe-delay: 300s
//	  probe-interval: 120s
//	  remember-dead: 1h              # how long a departed member's address and invocations are kept
//	metrics:
//	  address: ""                    # host:port of the Prometheus endpoint; empty: off
//	services:
//	  - name: CounterService         # unique
//	    type: counter                # registered with RegisterService
//	    enabled: true                # false: kept, checked, not started
//	    properties:                  # flat map of scalars -> spi.Properties
//	      log-level: info
//	    configuration:               # any YAML -> *yaml.Node for spi.ConfigParser
//	      some: [structured, value]
//	    split-brain-protection:
//	      min-size: 0                # fewest members this one must see; 0: off
//	      protect-on: read-write     # read | write | read-write
//	    merge-policy: counter-sum    # after a split brain; registered with RegisterMergePolicy
//
// Durations are Go durations ("500ms", "2m", "1h30m"); a bare number is an
// error, not seconds. Integers must be written as integers. A key with an
// empty value (`key:` or `key: null`) keeps its default, except the lists
// members and services, which it empties. A `services:` list replaces the
// default list as a whole. Anchors and aliases work; merge keys (<<) do not.
//
// Unknown keys are errors at every level, so a misspelt key cannot be
// silently ignored. Parse reports every problem at once, each an *Error
// formatted "file:line: key: message", joined with errors.Join:
//
//	cluster.yaml:3: unknown key "clustr" in (top level)
//	cluster.yaml:7: network.bind: bad address "127.0.0.1:99999": port must be 1..65535
//	cluster.yaml:15: services[1].type: unknown service type "countr" (registered: counter); ...
//
// # Split-brain protection
//
// A service entry's split-brain-protection section (SplitBrainProtectionConfig)
// makes the service's operations need a member list of at least min-size
// members, this member included: on a smaller side of the cluster they are
// refused with spi.ErrSplitBrainProtection before they run. protect-on
// chooses the reads, the writes or both (the default); a write is an
// operation that is a spi.BackupAwareOperation unless it is a
// spi.MutatingOperation saying otherwise. docs/operations.md describes the
// window in which a minority still accepts writes.
//
// # Service registry
//
// A service package registers its type from an init function, the way
// database/sql drivers do, and the member binary imports it for that side
// effect:
//
//	func init() {
//		config.RegisterService("counter", func() spi.Service { return &Service{} })
//	}
//
//	import _ "github.com/partita-go/partita/services/counter"
//
// Validate rejects a `type:` that is not registered (disabled entries
// included), so register before loading.
//
// # Merge policies
//
// A service's `merge-policy:` names the spi.MergePolicy that decides, entry
// by entry, what its data keeps when a smaller cluster merges into a larger
// one after a split brain. The standard policies of spi/mergepolicy are
// registered here under their names: put-if-absent (the default: the larger
// side's entry when it has one, else the merging one), pass-through (the
// merging one), discard (the larger side's; entries only the smaller side
// has are dropped) and higher-value (the greater of the two). A service
// registers its own the same way as its type, from an init function,
// with RegisterMergePolicy(name, factory); the counter registers
// counter-sum and makes it its default (spi.MergePolicyDefault), so an
// entry without the key gets it. Validate rejects a name that is not
// registered, with the key's line:
//
//	cluster.yaml:16: services[0].merge-policy: unknown merge policy "latest" (registered: counter-sum, discard, higher-value, pass-through, put-if-absent)
//
// # Usage
//
//	cfg, err := config.Load("cluster.yaml")
//	if err != nil {
//		log.Fatal(err) // every problem, one per line, with file and line
//	}
//	for _, s := range cfg.EnabledServices() {
//		factory, _ := config.ServiceFactory(s.Type) // present: Validate checked it
//		svc := factory()
//		if p, ok := svc.(spi.ConfigParser); ok && s.Configuration != nil {
//			err = p.ParseConfig(s.Configuration)
//		}
//		// ... Init(engine, s.Properties) for a spi.ManagedService
//	}
//
// A program may also start from Default, change fields and call Validate,
// which then names the keys but no lines:
//
//	cfg := config.Default()
//	cfg.Network.Bind = "127.0.0.1:0"
//	cfg.Network.Join.Multicast.Enabled = false
//	if err := cfg.Validate(); err != nil { ... }
package config
