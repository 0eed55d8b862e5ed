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
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
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

// WithRegistry sets the registry the member's metrics go to (default: a new
// registry of its own, never the global one).
func WithRegistry(r *prometheus.Registry) Option { return func(n *Node) { n.registry = r } }

// Node is one Partita member: membership, partition table, operation
// service, proxies and the user services of its config. It implements
// spi.NodeEngine. A Node runs once: Start, then Shutdown; make a new Node
// to start again.
type Node struct {
	cfg      *config.Config
	hook     func(m operation.Message) operation.Verdict
	log      *slog.Logger
	registry *prometheus.Registry

	id       string
	started  time.Time
	address  string
	count    int
	tr       *muxTransport
	ml       *memberlist.Memberlist
	del      *delegates // memberlist's callbacks; the member list comes from their copies
	ops      *operation.Service
	parts    *partitionView
	proxies  *proxyRegistry
	services map[string]spi.Service
	order    []config.ServiceConfig // enabled services, config order
	inited   []string               // services whose Init succeeded

	members atomic.Pointer[[]spi.Member] // oldest first
	table   atomic.Pointer[partition.Table]

	wake      chan struct{} // membership changed
	stop      chan struct{}
	ctx       context.Context // ends when the node stops
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	state     atomic.Int32
	installMu sync.Mutex // serialises table installs
	// tableLogged and tableSkipped rate-limit the table log line (under
	// installMu).
	tableLogged  time.Time
	tableSkipped int

	metrics  engineMetrics
	safe     safeCache
	migView  migView
	http     *http.Server
	httpAddr string
	httpDone chan struct{}
	// spawnMu and stopping keep wg.Add from racing with wg.Wait.
	spawnMu  sync.Mutex
	stopping bool
	// mlStopped silences memberlist's late log lines after Shutdown.
	mlStopped atomic.Bool

	publish  sync.Mutex // guards acked, inflight, answered, takeOverEnd and term
	acked    map[string]int64
	inflight map[string]bool // table pushes in flight, by member
	// answered is not nil while this member takes over as master: it
	// plans nothing until every member answered a table push (so it holds
	// the newest table any of them got from the old master) or takeOverEnd
	// passed.
	answered    map[string]bool
	takeOverEnd time.Time
	// term counts this member's take-overs: a push sent in an earlier
	// term neither acknowledges nor answers for the current one.
	term uint64

	mgr            *migration.Manager
	migrationAware []migrationAware
	migs           []*migState // by partition; touched on its executor only
	migActive      atomic.Int32
	leavingMu      sync.Mutex
	leaving        map[string]bool // members draining before they leave (master)
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
	n := &Node{cfg: cfg, log: slog.Default(), count: cfg.Partitions.Count,
		services: make(map[string]spi.Service), wake: make(chan struct{}, 1),
		stop: make(chan struct{}), acked: make(map[string]int64), inflight: make(map[string]bool),
		leaving: make(map[string]bool), migs: make([]*migState, cfg.Partitions.Count)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
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
	n.parts = &partitionView{n: n}
	n.proxies = &proxyRegistry{n: n, objs: make(map[string]map[string]spi.DistributedObject)}
	n.members.Store(&[]spi.Member{})
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
	n.id = newID()
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

	oc := n.cfg.Operations
	n.ops = operation.New(operation.Config{
		ClusterName: n.cfg.Cluster.Name, LocalID: n.id, LocalAddress: n.address,
		PartitionCount: n.count, PartitionThreads: oc.PartitionThreads, QueueSize: oc.QueueSize,
		InvocationTimeout: oc.InvocationTimeout, RetryPause: oc.RetryPause, DedupWindow: oc.DedupWindow,
		BackupAckTimeout: oc.BackupAckTimeout, FrameBodyTimeout: oc.FrameBodyTimeout,
		Engine: n, Routing: n, Logger: n.log, Hook: n.hook, OnReplicaGap: n.requestSync,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return dialSelect(ctx, addr, 0, selectOperations)
		},
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
	n.mgr = migration.New(masterEngine{n}, migration.Config{Count: n.count, Parallel: n.cfg.Migration.Parallel,
		Backups: n.cfg.Partitions.BackupCount, Timeout: n.cfg.Migration.StepTimeout, Logger: n.log})
	n.ops.Start()
	// The health endpoints answer from here on: not ready until joined.
	if err := n.serveHTTP(); err != nil {
		return err
	}
	n.tr.serve(n.ops.HandleConn, inboundLimits{pending: nw.MaxPendingConnections, perAddress: nw.MaxPendingPerAddress},
		n.metrics.rejected)
	if err := n.join(ctx); err != nil {
		return err
	}
	n.refreshMembers()
	n.wg.Add(3)
	go n.antiEntropy(n.cfg.Partitions.AntiEntropyInterval)
	go n.membershipLoop()
	go func() {
		defer n.wg.Done()
		n.mgr.Run(n.ctx)
	}()
	n.state.Store(stateRunning)
	n.log.Info("member started", "id", n.id, "cluster", n.cfg.Cluster.Name,
		"partitions", n.count, "members", len(n.Members()))
	return nil
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
		n.services[sc.Name] = svc
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

// join starts memberlist and joins the configured members (or those found
// by multicast).
func (n *Node) join(ctx context.Context) error {
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.id
	mc.Transport = n.tr
	mc.BindAddr, mc.BindPort = n.tr.addr.IP.String(), n.tr.addr.Port
	mc.AdvertiseAddr, mc.AdvertisePort = mc.BindAddr, mc.BindPort
	d := newDelegates(n, memberMeta{protocol: operation.ProtocolVersion, cluster: n.cfg.Cluster.Name,
		address: n.address, started: n.started.UnixNano()}.encode())
	n.del = d
	mc.Delegate, mc.Events, mc.Alive, mc.Merge = d, d, d, d
	ms := n.cfg.Membership
	mc.ProbeInterval, mc.ProbeTimeout = ms.ProbeInterval, ms.ProbeTimeout
	mc.SuspicionMult, mc.GossipInterval = ms.SuspicionMult, ms.GossipInterval
	mc.PushPullInterval = ms.PushPullInterval
	mc.Logger = log.New(logWriter{n.log, &n.mlStopped}, "", 0)
	var err error
	if n.ml, err = memberlist.Create(mc); err != nil {
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
	switch n.state.Swap(stateStopped) {
	case stateStopped:
		return nil
	case stateNew:
		return nil
	}
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
	switch n.state.Swap(stateStopped) {
	case stateStopped, stateNew:
		return
	}
	n.teardown(true)
	n.log.Info("member terminated")
}

// spawn runs f on a goroutine the node waits for at shutdown, unless the
// node is stopping (then it reports false and f does not run).
func (n *Node) spawn(f func()) bool {
	n.spawnMu.Lock()
	defer n.spawnMu.Unlock()
	if n.stopping {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

// teardown stops everything Start started, in reverse.
func (n *Node) teardown(terminate bool) {
	n.spawnMu.Lock()
	n.stopping = true // no goroutine joins wg once Wait may run
	n.spawnMu.Unlock()
	close(n.stop)
	n.cancel()
	if n.ml != nil {
		n.ml.Shutdown()
		n.mlStopped.Store(true)
	}
	n.stopHTTP()
	n.wg.Wait()
	if n.ml != nil {
		// memberlist's Shutdown does not wait for a probe in flight, which
		// waits for its ack for up to a probe interval: let it end, so that
		// nothing of the member runs once Shutdown returns.
		t := time.NewTimer(n.cfg.Membership.ProbeInterval)
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

// ID returns this member's unique id.
func (n *Node) ID() string { return n.id }

// Address returns the host:port this member listens on.
func (n *Node) Address() string { return n.address }

// Service returns the enabled service of that name.
func (n *Node) Service(name string) (spi.Service, bool) {
	s, ok := n.services[name]
	return s, ok
}

// Table returns this member's current partition table (nil before one
// arrived). The table must not be modified.
func (n *Node) Table() *partition.Table { return n.table.Load() }

// OperationService returns the concrete operation service.
func (n *Node) OperationService() *operation.Service { return n.ops }

// ClusterName implements spi.NodeEngine.
func (n *Node) ClusterName() string { return n.cfg.Cluster.Name }

// LocalMember implements spi.NodeEngine.
func (n *Node) LocalMember() spi.Member {
	return spi.Member{ID: n.id, Address: n.address, Started: n.started}
}

// Members implements spi.NodeEngine.
func (n *Node) Members() []spi.Member { return slices.Clone(*n.members.Load()) }

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

// Registry returns the member's metrics registry (for scraping).
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// MigrationInFlight reports whether this member takes part in a partition
// migration now or, on the master, has migrations left to plan or run.
func (n *Node) MigrationInFlight() bool {
	return n.migActive.Load() > 0 || (n.IsMaster() && n.mgr != nil && !n.mgr.Idle())
}

// MigrationStats returns what this member's migration manager did while it
// was master.
func (n *Node) MigrationStats() migration.Stats { return n.mgr.Stats() }

// manager returns the migration manager (nil before Start made it).
func (n *Node) manager() *migration.Manager {
	if s := n.state.Load(); s == stateNew || s == stateStarting {
		return nil // Start may still be making it
	}
	return n.mgr
}

// IsMaster reports whether this member is the oldest, the one that owns
// the partition table.
func (n *Node) IsMaster() bool {
	ms := *n.members.Load()
	return len(ms) > 0 && ms[0].ID == n.id
}

// Owner implements operation.Routing.
func (n *Node) Owner(p int) (id, address string, ok bool) {
	t := n.table.Load()
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
func (n *Node) MemberAddress(id string) (string, bool) {
	for _, m := range *n.members.Load() {
		if m.ID == id {
			return m.Address, true
		}
	}
	// A member that has just joined may hear from others (the master's
	// table) before its own member list catches up.
	if t := n.table.Load(); t != nil && len(*n.members.Load()) <= 1 {
		if a, ok := t.Members[id]; ok {
			return a, true
		}
	}
	return "", false
}

// partitionView implements spi.PartitionService over the node's table.
type partitionView struct{ n *Node }

func (v *partitionView) PartitionCount() int        { return v.n.count }
func (v *partitionView) PartitionID(key string) int { return partition.ID(key, v.n.count) }
func (v *partitionView) TableVersion() int64 {
	if t := v.n.table.Load(); t != nil {
		return t.Version
	}
	return 0
}
func (v *partitionView) BackupCount() int { return v.n.table.Load().BackupCount() }
func (v *partitionView) ReplicaIndex(p int) int {
	return v.n.table.Load().ReplicaIndex(p, v.n.id)
}
func (v *partitionView) IsClusterSafe(ctx context.Context) (bool, error) {
	return v.n.IsClusterSafe(ctx)
}
func (v *partitionView) IsLocalOwner(p int) bool {
	id, _, ok := v.n.Owner(p)
	return ok && id == v.n.id
}
func (v *partitionView) Owner(p int) (spi.Member, bool) {
	if p < 0 || p >= v.n.count {
		return spi.Member{}, false
	}
	id, addr, ok := v.n.Owner(p)
	if !ok {
		return spi.Member{}, false
	}
	for _, m := range *v.n.members.Load() {
		if m.ID == id {
			return m, true
		}
	}
	return spi.Member{ID: id, Address: addr}, true
}
