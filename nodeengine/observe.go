package nodeengine

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/nodeengine/debugui"
	"github.com/partita-go/partita/spi"
	"github.com/prometheus/client_golang/prometheus"
)

// What a member tells about itself: the engine's metrics, its readiness and
// the cluster view served on the metrics address (see http.go).

// engineMetrics are the node engine's own metrics (the operation service
// registers its own).
type engineMetrics struct {
	lost          prometheus.Counter
	migBytesSent  prometheus.Counter
	migBytesRecv  prometheus.Counter
	tableInstalls prometheus.Counter
	rejected      *prometheus.CounterVec // partita_rejected_input_total, fed by the transport
	merges        *prometheus.CounterVec // partita_split_brain_merges_total{result}
	probes        *prometheus.CounterVec // partita_split_brain_probes_total{found}
	antiEntropy   prometheus.Counter
	refusedDeaths prometheus.Counter // partita_member_deaths_by_refused_port_total
}

func newEngineMetrics() (engineMetrics, *prometheus.CounterVec) {
	migBytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "partita_migration_bytes_total",
		Help: "Bytes of partition data this member sent or received in migrations, by direction.",
	}, []string{"direction"})
	return engineMetrics{
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_partition_lost_total",
			Help: "Partitions this member, as master, found without any in-sync replica (their data is gone or incomplete).",
		}),
		migBytesSent: migBytes.WithLabelValues("sent"),
		migBytesRecv: migBytes.WithLabelValues("received"),
		tableInstalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_partition_table_installs_total",
			Help: "Partition table versions this member installed.",
		}),
		rejected: newRejectedMetric(),
		antiEntropy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_anti_entropy_syncs_total",
			Help: "Full copies this member's backup replicas pulled because anti-entropy found them behind their primary.",
		}),
		merges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_split_brain_merges_total",
			Help: "Merges of this member's cluster into a larger cluster of its name, by result (merged, failed).",
		}, []string{"result"}),
		refusedDeaths: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_member_deaths_by_refused_port_total",
			Help: "Members this member declared dead because their port refused connections, ahead of memberlist (membership.dead-on-refused-port).",
		}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_split_brain_probes_total",
			Help: "Addresses this member, as master, probed for other clusters of its name, by what it found (none, other_name, incompatible, unsettled, declared_dead, larger, smaller).",
		}, []string{"found"}),
	}, migBytes
}

func (n *Node) registerMetrics() error {
	var migBytes *prometheus.CounterVec
	n.metrics, migBytes = newEngineMetrics()
	for _, c := range []prometheus.Collector{n.metrics.lost, migBytes, n.metrics.tableInstalls, n.metrics.rejected, n.metrics.merges, n.metrics.probes, n.metrics.antiEntropy, n.metrics.refusedDeaths, engineCollector{n}} {
		if err := n.registry.Register(c); err != nil {
			return fmt.Errorf("partita: register metrics: %w", err)
		}
	}
	return nil
}

var (
	ownedDesc = prometheus.NewDesc("partita_partition_owned",
		"Partitions whose primary replica this member holds in its table.", nil, nil)
	backedDesc = prometheus.NewDesc("partita_partition_backups",
		"Backup replicas this member holds in its table.", nil, nil)
	tableVersionDesc = prometheus.NewDesc("partita_partition_table_version",
		"Version of the partition table this member holds (0: none yet).", nil, nil)
	membersDesc = prometheus.NewDesc("partita_cluster_size",
		"Members in this member's view of the cluster (its side, during a split), itself included.", nil, nil)
	masterDesc = prometheus.NewDesc("partita_cluster_master",
		"1 on the master (the oldest member, owner of the partition table), else 0.", nil, nil)
	safeDesc = prometheus.NewDesc("partita_cluster_safe",
		"1 when every member holds the same table, nothing migrates or syncs and every backup has its primary's version (asked of every member, at most once a second).", nil, nil)
	readyDesc = prometheus.NewDesc("partita_member_ready",
		"1 when /health/ready answers 200.", nil, nil)
	migInFlightDesc = prometheus.NewDesc("partita_migration_in_flight",
		"Partition migrations this member takes part in now (as source or destination).", nil, nil)
	migPlannedDesc = prometheus.NewDesc("partita_migration_planned_total",
		"Migrations this member planned while it was master.", nil, nil)
	migCompletedDesc = prometheus.NewDesc("partita_migration_completed_total",
		"Migrations this member, as master, saw completed.", nil, nil)
	migRolledBackDesc = prometheus.NewDesc("partita_migration_rolled_back_total",
		"Migrations this member, as master, rolled back (or found stale).", nil, nil)
)

// engineCollector reads the node's state when scraped.
type engineCollector struct{ n *Node }

func (c engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{ownedDesc, backedDesc, tableVersionDesc, membersDesc, masterDesc,
		safeDesc, readyDesc, migInFlightDesc, migPlannedDesc, migCompletedDesc, migRolledBackDesc} {
		ch <- d
	}
}

func (c engineCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	owned, backups, version := n.view.replicaCounts()
	gauge(ownedDesc, float64(owned))
	gauge(backedDesc, float64(backups))
	gauge(tableVersionDesc, float64(version))
	gauge(membersDesc, float64(len(n.view.memberList())))
	gauge(masterDesc, b2f(n.view.isMaster()))
	gauge(safeDesc, b2f(n.cachedSafe()))
	ready, _ := n.Ready()
	gauge(readyDesc, b2f(ready))
	gauge(migInFlightDesc, float64(n.migs.active.Load()))
	var st migration.Stats
	if m := n.manager(); m != nil {
		st = m.Stats()
	}
	counter(migPlannedDesc, st.Planned)
	counter(migCompletedDesc, st.Completed)
	counter(migRolledBackDesc, st.RolledBack)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// safeCache keeps the last IsClusterSafe answer for scrapes: it asks
// every member, so it runs at most once a second.
type safeCache struct {
	mu   sync.Mutex
	at   time.Time
	safe bool
}

func (n *Node) cachedSafe() bool {
	c := &n.safe
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < time.Second {
		return c.safe
	}
	ctx, cancel := n.run.stopContext(time.Second)
	defer cancel()
	safe, err := n.safety.isClusterSafe(ctx)
	c.safe, c.at = err == nil && safe, time.Now()
	return c.safe
}

// Ready reports whether this member serves its share of the cluster: it
// has joined, can accept connections on its port, holds a partition
// table, sees enough members for every service's split-brain protection,
// takes part in no migration and is not shutting down. When not, reason says
// why.
func (n *Node) Ready() (ready bool, reason string) {
	switch n.state.Load() {
	case stateNew:
		return false, "not started"
	case stateStarting:
		return false, "joining the cluster"
	case stateStopped:
		return false, "shutting down"
	}
	if r := n.tr.acceptProblem(); r != "" {
		return false, r
	}
	if n.sb.merging() {
		return false, "merging into a larger cluster of this name"
	}
	if n.view.table.Load() == nil {
		return false, "no partition table received yet"
	}
	if r := n.protectionProblem(); r != "" {
		return false, r
	}
	if k := n.migs.active.Load(); k > 0 {
		return false, fmt.Sprintf("%d partition migrations in flight on this member", k)
	}
	return true, ""
}

// protectionProblem names the first enabled service, in config order,
// whose split-brain protection this member's member list does not meet
// ("" when every one is met). Its operations (the protected ones) are
// refused with spi.ErrSplitBrainProtection meanwhile.
func (n *Node) protectionProblem() string {
	present := len(n.view.memberList())
	for _, sc := range n.order {
		p := sc.SplitBrainProtection
		if r, w := p.MinSizes(); present < max(r, w) {
			on := p.ProtectOn
			if on == "" {
				on = config.ProtectReadWrite
			}
			return fmt.Sprintf("split-brain protection of service %q not met: it needs %d members (protect-on %s), this member sees %d",
				sc.Name, p.MinSize, on, present)
		}
	}
	return ""
}

// migView is the migrations in flight on this member, readable from any
// goroutine (migrations.byPart belongs to the partitions' executors).
type migView struct {
	mu    sync.Mutex
	moves map[int]debugui.Migration
	about map[int]string // the state in words, for describe
}

// destination reports whether this member is the destination of a move
// of partition p in flight (any goroutine).
func (v *migView) destination(p int) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	m, ok := v.moves[p]
	return ok && m.Endpoint == "destination"
}

func (v *migView) set(p int, st *migState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if st == nil {
		delete(v.moves, p)
		delete(v.about, p)
		return
	}
	if v.moves == nil {
		v.moves = make(map[int]debugui.Migration)
		v.about = make(map[int]string)
	}
	ep := "source"
	if st.endpoint == spi.MigrationDestination {
		ep = "destination"
	}
	v.moves[p] = debugui.Migration{Partition: p, Source: st.move.Source, Destination: st.move.Destination, Endpoint: ep}
	v.about[p] = fmt.Sprintf("partition %d: %s of %s -> %s, started by master %s, committed %v",
		p, ep, st.move.Source, st.move.Destination, st.master, st.committed)
}

// describe describes this member's side of each migration in flight, one
// line per partition (for logs and test failures).
func (v *migView) describe() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]string, 0, len(v.about))
	for _, a := range v.about {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

func (v *migView) list(reporter string) []debugui.Migration {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]debugui.Migration, 0, len(v.moves))
	for _, m := range v.moves {
		m.ReportedBy = reporter
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b debugui.Migration) int { return a.Partition - b.Partition })
	return out
}

// memberStatsOp returns what the cluster view shows of one member.
type memberStatsOp struct{ stats []byte }

func (op *memberStatsOp) MessageKind() string          { return "member.stats" }
func (op *memberStatsOp) Response() any                { return op.stats }
func (op *memberStatsOp) WriteData(*spi.Writer)        {}
func (op *memberStatsOp) ReadData(r *spi.Reader) error { return r.Err() }
func (op *memberStatsOp) Run(ctx *spi.OpContext) error {
	op.stats = ctx.Service.(*Node).memberStats()
	return nil
}

func (n *Node) memberStats() []byte {
	w := spi.NewWriter(nil)
	ready, reason := n.Ready()
	w.WriteBool(ready)
	w.WriteUvarint(n.ops.OperationsRun())
	migs := n.migs.inFlight.list(n.view.id)
	w.WriteUvarint(uint64(len(migs)))
	for _, m := range migs {
		w.WriteVarint(int64(m.Partition))
		w.WriteString(m.Source)
		w.WriteString(m.Destination)
		w.WriteString(m.Endpoint)
	}
	w.WriteString(reason) // from here on: a member of an earlier build sends none
	w.WriteString(n.mergeStatus().State)
	return w.Bytes()
}

// statsOf fills m's ready flag and operation count from the member's
// answer and returns the migrations it reported.
func (n *Node) statsOf(ctx context.Context, m *debugui.Member) []debugui.Migration {
	v, err := n.ops.InvokeOnMember(ctx, engineService, &memberStatsOp{}, m.ID)
	if err != nil {
		m.Error = err.Error()
		return nil
	}
	b, _ := v.([]byte)
	r := spi.NewReader(b)
	m.Ready, m.Operations = r.ReadBool(), r.ReadUvarint()
	k := r.ReadUvarint()
	if r.Err() == nil && k > uint64(r.Remaining()) {
		m.Error = fmt.Sprintf("bad stats: %d migrations in %d bytes", k, r.Remaining())
		return nil
	}
	var out []debugui.Migration
	for i := uint64(0); i < k && r.Err() == nil; i++ {
		mg := debugui.Migration{Partition: int(r.ReadVarint()), Source: r.ReadString(), Destination: r.ReadString(),
			Endpoint: r.ReadString(), ReportedBy: m.ID}
		out = append(out, mg)
	}
	if r.Err() == nil && r.Remaining() > 0 {
		m.Reason = r.ReadString()
	}
	if r.Err() == nil && r.Remaining() > 0 {
		if st := r.ReadString(); st != mergeStateNames[mergeIdle] {
			m.Merge = st
		}
	}
	if err := r.Err(); err != nil {
		m.Error = "bad stats: " + err.Error()
		return nil
	}
	return out
}

// debugView returns this member's picture of the cluster for
// /debug/cluster: members (each asked for its readiness, operation count,
// migrations and merge state), the partition table, whether the cluster
// is safe and this member's part in a split-brain merge.
// ctx bounds the questions; a member that does not answer in time has
// Error set.
func (n *Node) debugView(ctx context.Context) *debugui.View {
	now := time.Now()
	v := &debugui.View{Cluster: n.cfg.Cluster.Name, Self: n.view.id, PartitionCount: n.view.count, Time: now,
		Merge: n.mergeStatus(), Members: []debugui.Member{}, Partitions: []debugui.Partition{}, Migrations: []debugui.Migration{}}
	t := n.view.table.Load()
	counts := map[string][2]int{}
	if t != nil {
		v.TableVersion, v.BackupCount = t.Version, t.BackupCount()
		for p, o := range t.Owners {
			bs := t.BackupsOf(p)
			v.Partitions = append(v.Partitions, debugui.Partition{ID: p, Owner: o, Backups: append([]string{}, bs...)})
			c := counts[o]
			c[0]++
			counts[o] = c
			for _, b := range bs {
				c := counts[b]
				c[1]++
				counts[b] = c
			}
		}
	}
	ms := n.Members()
	if len(ms) > 0 {
		v.Master = ms[0].ID
	}
	v.Members = make([]debugui.Member, len(ms))
	migs := make([][]debugui.Migration, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		v.Members[i] = debugui.Member{ID: m.ID, Address: m.Address, Started: m.Started, AgeSeconds: now.Sub(m.Started).Seconds(),
			Master: i == 0, Self: m.ID == n.view.id, Owned: counts[m.ID][0], Backups: counts[m.ID][1]}
		wg.Go(func() { migs[i] = n.statsOf(ctx, &v.Members[i]) })
	}
	wg.Go(func() {
		safe, err := n.safety.isClusterSafe(ctx)
		v.ClusterSafe = err == nil && safe
	})
	wg.Wait()
	for _, m := range migs {
		v.Migrations = append(v.Migrations, m...)
	}
	return v
}
