package nodeengine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
	"github.com/partita-go/partita/spi/mergepolicy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Option changes how New builds a Node.
type Option func(*Node)

// WithLogger sets the member's logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(n *Node) { n.log = l } }

// WithOperationHook sets a hook that sees every request before it leaves
// for another member (see operation.Config.Hook); tests use it to inject
// faults.
func WithOperationHook(h func(m operation.Message) operation.Verdict) Option {
	return func(n *Node) { n.hook = h }
}

// WithLifecycleListener sets a function told of the member's lifecycle
// events (split-brain merges: spi.Merging, spi.Merged, spi.MergeFailed),
// on the goroutine that makes them; it must not block.
func WithLifecycleListener(f func(spi.LifecycleEvent)) Option {
	return func(n *Node) { n.listener = f }
}

// WithRegistry sets the registry the member's metrics go to (default: a new
// registry of its own, never the global one).
func WithRegistry(r *prometheus.Registry) Option { return func(n *Node) { n.registry = r } }

// WithNetworkFilter makes the member consult reachable about every other
// member it would exchange anything with, by the address of that member's
// port ("host:port", Node.Address): a test facility for network splits
// (clustertest's Split and Heal), not for production. A member it refuses
// is cut off: memberlist packets to it are silently dropped, and so are
// those from it (a packet's source is its sender's port); dials to it,
// memberlist streams and operation connections alike, fail at once with
// an "unreachable" error; operation connections from it are closed after
// their hello. Connections already open when its answers change are cut
// by NetworkChanged. It is called often and from many goroutines: it must
// be fast and safe for concurrent use. Without it (the default) nothing is
// checked.
func WithNetworkFilter(reachable func(remoteAddr string) bool) Option {
	return func(n *Node) { n.reach = reachable }
}

// Node is one Partita member: membership, partition table, operation
// service, proxies and the user services of its config. It implements
// spi.NodeEngine. A Node runs once: Start, then Shutdown; make a new Node
// to start again.
//
// Node wires its parts and runs the member's lifecycle; each part has one
// job: routing tells the operation service where partitions are, tables
// installs tables, publisher publishes them as master, replicas keeps the
// replicas in line with the table, migrations runs this member's side of
// migrations, safety answers whether the cluster is safe, snapshots
// encodes partition data, and the membership loop (membership.go) applies
// member list changes. They share the clusterView, what the member knows
// of the cluster.
type Node struct {
	cfg      *config.Config
	hook     func(m operation.Message) operation.Verdict
	listener func(spi.LifecycleEvent)
	reach    func(remoteAddr string) bool // WithNetworkFilter; nil: all
	refused  refusedPorts                 // the member ports being checked (deaths.go)
	log      *slog.Logger
	registry *prometheus.Registry

	view     *clusterView
	run      *runner
	state    atomic.Int32
	started  time.Time
	address  string
	tr       *muxTransport
	ml       *memberlist.Memberlist // replaced by a merge, under mlMu
	del      *delegates             // memberlist's callbacks; the member list comes from their copies
	events   *instanceEvents        // the current memberlist instance's event callbacks
	wake     chan struct{}          // membership changed
	ops      *operation.Service
	parts    *partitionView
	proxies  *proxyRegistry
	services map[string]spi.Service
	policies map[string]spi.MergePolicy // by service name, set before Init
	order    []config.ServiceConfig     // enabled services, config order
	inited   []string                   // services whose Init succeeded
	// migrationAware are the enabled MigrationAwareServices, config order.
	migrationAware []migrationAware

	tables   *tables
	pub      *publisher
	replicas *replicas
	migs     *migrations
	safety   *safety
	mgr      *migration.Manager
	leavers  leavers
	sb       *splitBrain

	metrics  engineMetrics
	safe     safeCache
	http     *http.Server
	httpAddr string
	httpDone chan struct{}
	// mlMu orders a merge's memberlist calls (its own, not memberlist's
	// loops) against the member's stop: none starts once the member is
	// stopping (memberlist forgets a member that left at once, and its
	// UpdateNode then fails on its own missing entry).
	mlMu sync.Mutex
	// mlStopped silences memberlist's late log lines after Shutdown.
	mlStopped atomic.Bool
	pause     pauses // Pause, a test kit's freeze
}

const (
	stateNew int32 = iota
	stateStarting
	stateRunning
	stateStopped
)

var _ spi.NodeEngine = (*Node)(nil)

// New validates cfg and returns a Node ready to Start.
func New(cfg *config.Config, opts ...Option) (*Node, error) {
	if cfg == nil {
		cfg = config.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	count := cfg.Partitions.Count
	n := &Node{cfg: cfg, log: slog.Default(), view: newClusterView(count), run: newRunner(context.Background()),
		services: make(map[string]spi.Service), policies: make(map[string]spi.MergePolicy), wake: make(chan struct{}, 1),
		migs: newMigrations(count), leavers: leavers{ids: make(map[string]bool)}, sb: newSplitBrain()}
	for _, o := range opts {
		o(n)
	}
	if n.registry == nil {
		// A registry of its own also gets the Go runtime and process
		// collectors (one given with WithRegistry may have them already).
		n.registry = prometheus.NewRegistry()
		n.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if err := n.registerMetrics(); err != nil {
		return nil, err
	}
	n.parts = &partitionView{view: n.view, clusterSafe: n.isClusterSafe}
	n.proxies = &proxyRegistry{n: n, objs: make(map[string]map[string]spi.DistributedObject)}
	return n, nil
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Start binds the member's port, creates and initialises every enabled
// service, joins the cluster (by member list or multicast discovery; alone
// if nobody answers) and returns. ctx bounds the join.
func (n *Node) Start(ctx context.Context) (err error) {
	if !n.state.CompareAndSwap(stateNew, stateStarting) {
		return errors.New("partita: a Node starts once; make a new Node to start again")
	}
	n.view.id = newID()
	n.started = time.Now()
	defer func() {
		if err != nil {
			n.teardown(true)
			n.state.Store(stateStopped)
		}
	}()
	nw := n.cfg.Network
	if n.tr, err = listen(nw.Bind, nw.PortAutoIncrement, nw.PortCount, n.log); err != nil {
		return fmt.Errorf("partita: bind %s: %w", nw.Bind, err)
	}
	n.address = n.tr.Address()
	n.log = n.log.With("member", n.address)
	n.tr.log = n.log
	n.tr.reach = n.reach
	n.tr.refused = n.portRefused

	oc := n.cfg.Operations
	n.ops = operation.New(operation.Config{
		ClusterName: n.cfg.Cluster.Name, LocalID: n.view.id, LocalAddress: n.address,
		PartitionCount: n.view.count, PartitionThreads: oc.PartitionThreads, QueueSize: oc.QueueSize,
		InvocationTimeout: oc.InvocationTimeout, RetryPause: oc.RetryPause, DedupWindow: oc.DedupWindow,
		BackupAckTimeout: oc.BackupAckTimeout, FrameBodyTimeout: oc.FrameBodyTimeout,
		PinKeep: n.cfg.SplitBrain.RememberDead,
		Engine:  n, Routing: routing{n.view}, Logger: n.log, Hook: n.hook,
		Member:       func(id string) bool { _, ok := (routing{n.view}).MemberAddress(id); return ok },
		Reject:       n.tr.rejectConn,
		Members:      func() int { return len(n.view.memberList()) },
		OnReplicaGap: func(p int) { n.replicas.requestSync(p) },
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return n.tr.dial(ctx, addr, 0, selectOperations)
		},
		Reachable: n.reach,
	})
	if err := n.ops.RegisterMetrics(n.registry); err != nil {
		return fmt.Errorf("partita: register metrics: %w", err)
	}
	if err := n.ops.Register(engineService, n, engineOperationTypes()); err != nil {
		return err
	}
	if err := n.createServices(); err != nil {
		return err
	}
	n.mgr = migration.New(masterEngine{n}, migration.Config{Count: n.view.count, Parallel: n.cfg.Migration.Parallel,
		Backups: n.cfg.Partitions.BackupCount, Timeout: n.cfg.Migration.StepTimeout, Logger: n.log})
	n.wire()
	n.ops.Start()
	// The health endpoints answer from here on: not ready until joined.
	if err := n.serveHTTP(); err != nil {
		return err
	}
	n.tr.probes = n.serveProbe
	n.tr.serve(n.ops.HandleConn, inboundLimits{pending: nw.MaxPendingConnections, perAddress: nw.MaxPendingPerAddress},
		n.metrics.rejected)
	if err := n.join(ctx); err != nil {
		return err
	}
	n.refreshMembers()
	n.run.spawn(func() { n.replicas.antiEntropy(n.cfg.Partitions.AntiEntropyInterval) })
	n.run.spawn(n.membershipLoop)
	n.run.spawn(n.splitBrainLoop)
	n.run.spawn(func() { n.mgr.Run(n.run.ctx) })
	n.state.Store(stateRunning)
	n.log.Info("member started", "id", n.view.id, "cluster", n.cfg.Cluster.Name,
		"partitions", n.view.count, "members", len(n.Members()))
	return nil
}

// wire makes the node's parts once the operation service and the services
// exist (Start, and the tests' bare nodes); nothing runs yet.
func (n *Node) wire() {
	snaps := &snapshots{engine: n, ops: n.ops, services: n.migrationAware}
	n.replicas = &replicas{view: n.view, address: n.address, ops: n.ops, run: n.run, log: n.log, migs: n.migs,
		snaps: snaps, services: n.migrationAware, stepTimeout: n.cfg.Migration.StepTimeout,
		antiEntropySyncs: n.metrics.antiEntropy, resetting: make([]atomic.Int32, n.view.count)}
	m := n.migs
	m.view, m.ops, m.log, m.services, m.replicas, m.snaps = n.view, n.ops, n.log, n.migrationAware, n.replicas, snaps
	m.bytesSent, m.bytesRecv = n.metrics.migBytesSent, n.metrics.migBytesRecv
	n.tables = &tables{view: n.view, ops: n.ops, replicas: n.replicas, installs: n.metrics.tableInstalls, log: n.log,
		fresh: n.holdsTableAgain}
	n.pub = &publisher{view: n.view, ops: n.ops, run: n.run, log: n.log, tables: n.tables,
		wake: n.memberEvent, plan: func() { n.mgr.Trigger() },
		replaced: func(from string) { n.run.spawn(func() { n.rejoinRequested(from) }) },
		resolve: func() {
			// By the newest table now, committed destinations included,
			// here and on the other members.
			n.run.spawn(func() { n.resolveDepartedMaster(true) })
			n.resolveOthers()
		},
		acked: make(map[string]int64), inflight: make(map[string]bool)}
	n.safety = &safety{view: n.view, ops: n.ops, replicas: n.replicas, busy: func() string {
		switch {
		case n.migs.active.Load() > 0:
			return fmt.Sprintf("takes part in %d partition migrations", n.migs.active.Load())
		case n.ops.SyncsPending() > 0:
			return fmt.Sprintf("%d partitions wait for a replica sync", n.ops.SyncsPending())
		case n.view.isMaster() && !n.mgr.Idle():
			return "as master, has migrations to plan or run"
		}
		return ""
	}}
}

// stop marks the member stopped and returns its state before.
func (n *Node) stop() int32 {
	n.mlMu.Lock()
	defer n.mlMu.Unlock()
	return n.state.Swap(stateStopped)
}

// withMemberlist runs f, a merge's call of memberlist, unless the member
// is stopping.
func (n *Node) withMemberlist(f func() error) error {
	n.mlMu.Lock()
	defer n.mlMu.Unlock()
	if n.state.Load() != stateRunning {
		return spi.ErrShutdown
	}
	return f()
}

// lifecycle tells the listener (if any) of a lifecycle event of this
// member.
func (n *Node) lifecycle(ev spi.LifecycleEvent) {
	ev.Member = n.view.id
	n.log.Info("lifecycle", "state", ev.State.String(), "reason", ev.Reason)
	if n.listener != nil {
		n.listener(ev)
	}
}

// createServices makes, configures and initialises the enabled services in
// config order.
func (n *Node) createServices() error {
	for _, sc := range n.cfg.EnabledServices() {
		factory, ok := config.ServiceFactory(sc.Type)
		if !ok {
			return fmt.Errorf("%s: service %q: unknown type %q", sc.Where, sc.Name, sc.Type)
		}
		svc := factory()
		if p, ok := svc.(spi.ConfigParser); ok && sc.Configuration != nil {
			if err := p.ParseConfig(sc.Configuration); err != nil {
				return fmt.Errorf("%s:%d: service %q: configuration: %w", n.cfg.Source, sc.Configuration.Line, sc.Name, err)
			}
		}
		var types []spi.OperationType
		if p, ok := svc.(spi.OperationProvider); ok {
			types = p.OperationTypes()
		}
		if err := n.ops.Register(sc.Name, svc, types); err != nil {
			return err
		}
		if r, w := sc.SplitBrainProtection.MinSizes(); r > 0 || w > 0 {
			if err := n.ops.ProtectService(sc.Name, r, w); err != nil {
				return err
			}
		}
		policy, err := mergePolicy(sc, svc)
		if err != nil {
			return err
		}
		n.services[sc.Name] = svc
		n.policies[sc.Name] = policy
		n.order = append(n.order, sc)
		if ma, ok := svc.(spi.MigrationAwareService); ok {
			n.migrationAware = append(n.migrationAware, migrationAware{name: sc.Name, svc: ma})
		}
	}
	for _, sc := range n.order {
		if ms, ok := n.services[sc.Name].(spi.ManagedService); ok {
			n.log.Info(sc.Name+".init", "service", sc.Name, "type", sc.Type)
			if err := ms.Init(n, sc.Properties); err != nil {
				return fmt.Errorf("service %q: init: %w", sc.Name, err)
			}
		}
		n.inited = append(n.inited, sc.Name)
	}
	return nil
}

// mergePolicy resolves the merge policy of a service: its config's, else
// the one it names as its default, else put-if-absent.
func mergePolicy(sc config.ServiceConfig, svc spi.Service) (spi.MergePolicy, error) {
	name, from := sc.MergePolicy, "merge-policy"
	if name == "" {
		name, from = mergepolicy.PutIfAbsentName, "default"
		if d, ok := svc.(spi.MergePolicyDefault); ok {
			name, from = d.DefaultMergePolicy(), "the service's DefaultMergePolicy"
		}
	}
	f, ok := config.MergePolicyFactory(name)
	if !ok {
		return nil, fmt.Errorf("%s: service %q: unknown merge policy %q from %s (registered: %s)",
			sc.Where, sc.Name, name, from, strings.Join(config.MergePolicies(), ", "))
	}
	return f(), nil
}

// join starts memberlist and joins the configured members (or those found
// by multicast).
func (n *Node) join(ctx context.Context) error {
	n.del = newDelegates(n, memberMeta{protocol: operation.ProtocolVersion, cluster: n.cfg.Cluster.Name,
		address: n.address, started: n.started.UnixNano()}.encode())
	var err error
	if n.ml, err = n.newMemberlist(); err != nil {
		return fmt.Errorf("partita: start membership: %w", err)
	}
	seeds := n.seeds(ctx)
	if len(seeds) == 0 {
		n.log.Info("no members to join; starting a new cluster")
		return nil
	}
	joined, err := n.ml.Join(seeds)
	if joined == 0 {
		n.log.Warn("no member answered; starting a new cluster", "tried", seeds, "error", err)
	} else {
		n.log.Info("joined cluster", "contacted", joined, "members", n.ml.NumMembers())
	}
	return nil
}

// newMemberlist creates a memberlist instance on the member port. A merge
// replaces the instance (see renewMemberlist): the port outlives it, and
// the events of an instance replaced are ignored.
func (n *Node) newMemberlist() (*memberlist.Memberlist, error) {
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.view.id
	mc.Transport = memberlistPort{n.tr}
	mc.BindAddr, mc.BindPort = n.tr.addr.IP.String(), n.tr.addr.Port
	mc.AdvertiseAddr, mc.AdvertisePort = mc.BindAddr, mc.BindPort
	ev := &instanceEvents{delegates: n.del}
	n.events = ev
	mc.Delegate, mc.Events, mc.Alive, mc.Merge = n.del, ev, n.del, n.del
	ms := n.cfg.Membership
	mc.ProbeInterval, mc.ProbeTimeout = ms.ProbeInterval, ms.ProbeTimeout
	mc.SuspicionMult, mc.GossipInterval = ms.SuspicionMult, ms.GossipInterval
	mc.SuspicionMaxTimeoutMult = ms.SuspicionMaxTimeoutMult
	mc.PushPullInterval = ms.PushPullInterval
	// No gossip to members declared dead: after a split, each side stops
	// talking to the other at once, so that the two clusters meet again
	// only through split-brain healing (a controlled merge), never by
	// gossip that reaches across half-way (a side's "X is dead" taken up
	// by X's own side).
	mc.GossipToTheDeadTime = 0
	mc.Logger = log.New(logWriter{n.log, &n.mlStopped, n.tr.rejectInput}, "", 0)
	return memberlist.Create(mc)
}

// renewMemberlist replaces this member's memberlist instance by a new one
// that knows nothing but this member, as a merge needs: the old instance
// holds the view of the cluster left behind, with members it declared dead
// and news of their deaths still queued for gossip (its peers were
// unreachable); once joined to the larger cluster, that news would reach
// members alive there, which the larger cluster then takes for dead. The
// caller holds mlMu (withMemberlist).
func (n *Node) renewMemberlist() error {
	n.ml.Shutdown() // the port stays open (memberlistPort)
	n.events.retired.Store(true)
	n.del.forgetMembers()
	ml, err := n.newMemberlist()
	if err != nil {
		return err
	}
	n.ml = ml
	return nil
}

// seeds returns the addresses to join, other than this member's own.
func (n *Node) seeds(ctx context.Context) []string {
	var out []string
	for _, m := range n.cfg.Network.Join.Members {
		if m != n.address {
			out = append(out, m)
		}
	}
	if len(out) > 0 || !n.cfg.Network.Join.Multicast.Enabled {
		return out
	}
	return n.discover(ctx)
}

// Shutdown leaves the cluster, stops every goroutine of the member, closes
// its port and shuts the services down in reverse config order.
func (n *Node) Shutdown(ctx context.Context) error {
	switch n.stop() {
	case stateStopped:
		return nil
	case stateNew:
		return nil
	}
	n.endPauses(false) // thawed, it leaves
	dctx, cancel := context.WithTimeout(ctx, n.cfg.Migration.ShutdownTimeout)
	n.drain(dctx)
	cancel()
	if n.ml != nil {
		timeout := time.Second
		if dl, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(dl))
		}
		if err := n.ml.Leave(timeout); err != nil {
			n.log.Warn("leave broadcast incomplete", "error", err)
		}
	}
	n.teardown(false)
	n.log.Info("member stopped")
	return nil
}

// Terminate stops the member at once, as if its process died: no
// partitions are handed over, memberlist is stopped without a leave
// message (the others detect the failure), connections are dropped and
// services get Shutdown(true).
func (n *Node) Terminate() {
	switch n.stop() {
	case stateStopped, stateNew:
		return
	}
	if n.ops != nil {
		// From this moment the member answers nobody, as a process that
		// died: not the others (its connections end), nor its own callers
		// (spi.ErrShutdown), although the teardown below takes a while.
		// A write it ran now would have no backup, and a read would show
		// it.
		n.ops.CloseConnections()
	}
	n.endPauses(true) // it dies frozen
	n.teardown(true)
	n.log.Info("member terminated")
}

// teardown stops everything Start started, in reverse.
func (n *Node) teardown(terminate bool) {
	n.run.halt()
	var probeWait time.Duration
	if n.ml != nil {
		// A probe's deadline is the probe interval scaled by memberlist's
		// health score (it grows while this member's probes fail, as when
		// the others died), read before the score can change.
		probeWait = n.cfg.Membership.ProbeInterval * time.Duration(1+n.ml.GetHealthScore())
		n.ml.Shutdown()
		n.mlStopped.Store(true)
		n.tr.Shutdown()
	}
	if n.ops != nil {
		// The port is closed: the connections end with it, as a stopped
		// process's do, and nothing answers while memberlist's last probe
		// ends below (the others may declare this member dead meanwhile:
		// its port refuses). Local tasks run on until ops.Shutdown: the
		// goroutines run.wait waits for may wait for some.
		n.ops.CloseConnections()
	}
	n.stopHTTP()
	n.run.wait()
	if n.ml != nil {
		// memberlist's Shutdown does not wait for a probe in flight, which
		// waits for its ack until that deadline: let it end, so that
		// nothing of the member runs once Shutdown returns.
		t := time.NewTimer(probeWait)
		<-t.C
	}
	if n.ops != nil {
		n.ops.Shutdown()
	}
	if n.tr != nil {
		n.tr.Shutdown()
	}
	for i := len(n.inited) - 1; i >= 0; i-- {
		name := n.inited[i]
		if ms, ok := n.services[name].(spi.ManagedService); ok {
			n.log.Info(name+".shutdown", "service", name, "terminate", terminate)
			ms.Shutdown(terminate)
		}
	}
}

// NetworkChanged closes this member's operation connections to the
// members its network filter (WithNetworkFilter) no longer reaches: the
// invocations waiting on them fail with spi.ErrMemberLeft and are retried,
// as when a member leaves (the peer's end breaks too). Call it, on every
// member, after the filter's answers change; memberlist needs nothing, its
// streams being short-lived. Without a filter, or before Start, it does
// nothing.
func (n *Node) NetworkChanged() {
	if n.reach == nil {
		return
	}
	if s := n.state.Load(); s == stateNew || s == stateStarting || n.ops == nil {
		return
	}
	n.ops.CloseUnreachable()
}

// ID returns this member's unique id.
func (n *Node) ID() string { return n.view.id }

// Address returns the host:port this member listens on.
func (n *Node) Address() string { return n.address }

// Service returns the enabled service of that name.
func (n *Node) Service(name string) (spi.Service, bool) {
	s, ok := n.services[name]
	return s, ok
}

// ClusterName implements spi.NodeEngine.
func (n *Node) ClusterName() string { return n.cfg.Cluster.Name }

// LocalMember implements spi.NodeEngine.
func (n *Node) LocalMember() spi.Member {
	return spi.Member{ID: n.view.id, Address: n.address, Started: n.started}
}

// Members implements spi.NodeEngine.
func (n *Node) Members() []spi.Member { return slices.Clone(n.view.memberList()) }

// Partitions implements spi.NodeEngine.
func (n *Node) Partitions() spi.PartitionService { return n.parts }

// Operations implements spi.NodeEngine.
func (n *Node) Operations() spi.OperationService { return n.ops }

// Proxies implements spi.NodeEngine.
func (n *Node) Proxies() spi.ProxyRegistry { return n.proxies }

// Logger implements spi.NodeEngine.
func (n *Node) Logger() *slog.Logger { return n.log }

// Metrics implements spi.NodeEngine.
func (n *Node) Metrics() prometheus.Registerer { return n.registry }

// MergePolicy implements spi.NodeEngine.
func (n *Node) MergePolicy(service string) spi.MergePolicy { return n.policies[service] }

// RecordedInvocations implements spi.NodeEngine.
func (n *Node) RecordedInvocations(partitionID int) []spi.InvocationID {
	if n.ops == nil {
		return nil
	}
	return n.ops.RecordedInvocations(partitionID)
}

// ForgetRecordedInvocations implements spi.NodeEngine.
func (n *Node) ForgetRecordedInvocations(partitionID int) {
	if n.ops != nil {
		n.ops.ForgetRecordedInvocations(partitionID)
	}
}

// AdoptInvocations implements spi.NodeEngine.
func (n *Node) AdoptInvocations(partitionID int, ids []spi.InvocationID) {
	if n.ops != nil {
		n.ops.AdoptInvocations(partitionID, ids)
	}
}

// Registry returns the member's metrics registry (for scraping).
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// WaitClusterSafe polls Partitions().IsClusterSafe until it reports true
// or ctx ends: every member holds the same table, none migrates or syncs
// and every backup replica holds its primary's writes. Its error says why
// the cluster was last not safe (see UnsafeReason).
func (n *Node) WaitClusterSafe(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		reason, err := n.UnsafeReason(ctx)
		if err == nil && reason == "" {
			return nil
		}
		if err != nil {
			reason = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not safe (%s): %w", reason, ctx.Err())
		case <-tick.C:
		}
	}
}

// UnsafeReason asks every member, as Partitions().IsClusterSafe does, and
// says why the cluster is not safe: the first check that fails, naming
// its member and partition (a member busy migrating or syncing, one
// holding another table version, a backup behind its primary). It returns
// "" when the cluster is safe, and an error when a member could not be
// asked. Any goroutine calls it; it blocks until every member answered.
func (n *Node) UnsafeReason(ctx context.Context) (string, error) {
	if n.view.table.Load() == nil {
		return "no partition table yet", nil
	}
	return n.safety.unsafe(ctx)
}

// isClusterSafe is the partition service's IsClusterSafe (false before
// Start made the parts).
func (n *Node) isClusterSafe(ctx context.Context) (bool, error) {
	if n.view.table.Load() == nil {
		return false, nil
	}
	return n.safety.isClusterSafe(ctx)
}

// migrating reports whether this member takes part in a partition
// migration now or, on the master, has migrations left to plan or run.
func (n *Node) migrating() bool {
	return n.migs.active.Load() > 0 || (n.view.isMaster() && n.mgr != nil && !n.mgr.Idle())
}

// manager returns the migration manager (nil before Start made it).
func (n *Node) manager() *migration.Manager {
	if s := n.state.Load(); s == stateNew || s == stateStarting {
		return nil // Start may still be making it
	}
	return n.mgr
}
