// Package clustertest starts real Partita clusters inside a test process,
// in the spirit of net/http/httptest: several members on 127.0.0.1 over
// real TCP and real memberlist, with fast failure detection, logs routed to
// t.Log and everything stopped by t.Cleanup.
//
//	func TestMyService(t *testing.T) {
//		c := clustertest.New(t, 3)
//		obj, err := c.Member(0).Proxies().Get(ctx, "MyService", "x")
//		...
//	}
//
// The services come from the config (by default config.Default()'s, that
// is the counter); import the package that registers your service type and
// pass WithConfig to enable it.
//
// Faults (AddFault) drop, delay or hold chosen requests between members;
// Pause freezes a member as a GC pause or a stopped VM would; Split and
// Heal cut the network between groups of members and restore it, for
// split-brain tests.
//
// Linearizability, as Jepsen checks it: a Recorder records the calls a
// test makes from many goroutines, and CheckLinearizable checks the
// history against a Model (CounterModel ships; ExampleModel writes one in
// a few lines) with porcupine, writing its HTML visualisation when the
// check fails. A nemesis (NewNemesisSchedule, RunNemesis) injects a
// seeded, reproducible schedule of kills, leaves, joins, pauses, message
// faults and splits meanwhile; -nemesis.seed=N replays a schedule. See
// services/counter's TestCounterNemesisLinearizable.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
)

// Option changes the cluster's set-up.
type Option func(*Cluster)

// WithConfig sets a function that adjusts each member's config after the
// test defaults are applied (member i of the cluster).
func WithConfig(f func(i int, c *config.Config)) Option {
	return func(c *Cluster) { c.configure = f }
}

// WithLogLevel sets the level of the members' logs in t.Log (default
// slog.LevelWarn, so that failing tests show what went wrong without
// drowning in routine lines).
func WithLogLevel(l slog.Level) Option { return func(c *Cluster) { c.level = l } }

// WithLifecycleListener sets a function told of every member's lifecycle
// events (split-brain merges: spi.Merging, spi.Merged, spi.MergeFailed;
// see nodeengine.WithLifecycleListener), with the member's config index i
// (the order in which members were started, as Config's). It runs on the
// member's goroutine that makes the event, before the member goes on: a
// test may act on the cluster there (Split it, say, to hold a merge in
// its join), but must not wait for the member.
func WithLifecycleListener(f func(i int, ev spi.LifecycleEvent)) Option {
	return func(c *Cluster) { c.lifecycle = f }
}

// WithTimeout bounds WaitStable and the start of each member (default 30s).
func WithTimeout(d time.Duration) Option { return func(c *Cluster) { c.timeout = d } }

// Cluster is a set of members started by New.
type Cluster struct {
	t         testing.TB
	configure func(int, *config.Config)
	lifecycle func(int, spi.LifecycleEvent)
	level     slog.Level
	timeout   time.Duration

	faultMu sync.Mutex
	faults  []*Fault

	// net is the grouping of Split; filters are the members' network
	// filters (under net.mu).
	net     network
	filters map[*nodeengine.Node]*memberFilter

	logMu   sync.Mutex
	logDone bool // set when the cluster is shut down: no more t.Log

	mu      sync.Mutex
	members []*nodeengine.Node // nil once shut down
	started int                // members ever started, for config indexes
}

// New starts n members that form one cluster and waits until it is
// stable. The cluster is shut down by t.Cleanup.
func New(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	c := &Cluster{t: t, level: slog.LevelWarn, timeout: 30 * time.Second}
	for _, o := range opts {
		o(c)
	}
	t.Cleanup(c.shutdownAll)
	for i := 0; i < n; i++ {
		c.AddMember()
	}
	c.WaitStable()
	return c
}

// Config returns the config a new member i gets: the default config with
// port 0, no multicast, fast failure detection, joining the first live
// member, then adjusted by WithConfig.
func (c *Cluster) Config(i int) *config.Config {
	cfg := config.Default()
	cfg.Source = fmt.Sprintf("clustertest member %d", i)
	cfg.Network.Bind = "127.0.0.1:0"
	cfg.Metrics.Address = "127.0.0.1:0"
	cfg.Network.Join.Multicast.Enabled = false
	cfg.Network.Join.Members = nil
	for _, m := range c.Members() {
		cfg.Network.Join.Members = append(cfg.Network.Join.Members, m.Address())
		break
	}
	cfg.UseFastFailureDetection()
	cfg.Operations.RetryPause = 2 * time.Millisecond
	cfg.Operations.InvocationTimeout = 30 * time.Second
	for j, sc := range cfg.Services {
		if sc.Type == "counter" {
			// Per-increment lines would flood the test log.
			cfg.Services[j].Properties = sc.Properties.With("log-level", "debug")
		}
	}
	if c.configure != nil {
		c.configure(i, cfg)
	}
	return cfg
}

// AddMember starts one more member joining the cluster and returns it; it
// does not wait for the cluster to be stable.
func (c *Cluster) AddMember() *nodeengine.Node {
	c.t.Helper()
	n, err := c.startMember()
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

// AddMembers starts k members at once, all joining concurrently, and
// returns them; it does not wait for the cluster to be stable.
func (c *Cluster) AddMembers(k int) []*nodeengine.Node {
	c.t.Helper()
	out := make([]*nodeengine.Node, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	for j := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[j], errs[j] = c.startMember()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.t.Fatal(err)
		}
	}
	return out
}

func (c *Cluster) startMember() (*nodeengine.Node, error) {
	c.mu.Lock()
	i := c.started
	c.started++
	c.mu.Unlock()
	cfg := c.Config(i)
	log := slog.New(slog.NewTextHandler(tWriter{c, i}, &slog.HandlerOptions{Level: c.level}))
	filter := c.newFilter()
	opts := []nodeengine.Option{nodeengine.WithLogger(log), nodeengine.WithOperationHook(c.hook),
		nodeengine.WithNetworkFilter(filter.reachable)}
	if c.lifecycle != nil {
		opts = append(opts, nodeengine.WithLifecycleListener(func(ev spi.LifecycleEvent) { c.lifecycle(i, ev) }))
	}
	n, err := nodeengine.New(cfg, opts...)
	if err != nil {
		return nil, fmt.Errorf("clustertest: member %d: %w", i, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		return nil, fmt.Errorf("clustertest: start member %d: %w", i, err)
	}
	c.startedOn(n, filter)
	c.mu.Lock()
	c.members = append(c.members, n)
	c.mu.Unlock()
	return n, nil
}

// Members returns the running members, oldest first.
func (c *Cluster) Members() []*nodeengine.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*nodeengine.Node
	for _, m := range c.members {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

// Member returns running member i (oldest first).
func (c *Cluster) Member(i int) *nodeengine.Node {
	ms := c.Members()
	if i < 0 || i >= len(ms) {
		c.t.Fatalf("clustertest: no member %d (have %d)", i, len(ms))
	}
	return ms[i]
}

// Shutdown stops member i (oldest first) gracefully: its partitions move to
// the others first.
func (c *Cluster) Shutdown(i int) {
	c.t.Helper()
	n := c.Member(i)
	c.remove(n)
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		c.t.Errorf("clustertest: shutdown member %d: %v", i, err)
	}
}

func (c *Cluster) shutdownAll() {
	for len(c.Members()) > 0 {
		c.Shutdown(len(c.Members()) - 1)
	}
	c.logMu.Lock()
	c.logDone = true
	c.logMu.Unlock()
}

// WaitStable waits until the running members are stable (see Stable). It
// fails the test at the timeout.
func (c *Cluster) WaitStable() {
	c.t.Helper()
	WaitStable(c.t, c.timeout, c.Members()...)
}

// WaitStable waits until nodes are stable (see Stable), failing t if that
// takes longer than timeout. It is the one way tests wait for a stable
// cluster; Cluster.WaitStable calls it with the running members.
func WaitStable(t testing.TB, timeout time.Duration, nodes ...*nodeengine.Node) {
	t.Helper()
	Eventually(t, timeout, func() error { return Stable(nodes...) })
}

// Stable returns nil when nodes are stable as nodeengine.WaitStable
// defines it (each sees exactly the others, all hold one table version
// whose members are exactly the nodes, no migration in flight) and their
// table gives every partition an owner; else why not.
func Stable(nodes ...*nodeengine.Node) error {
	// nodeengine.WaitStable checks once before it looks at its context:
	// with a context already done it is a check, not a wait.
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := nodeengine.WaitStable(done, nodes); err != nil {
		return errors.New(strings.TrimSuffix(err.Error(), ": "+context.Canceled.Error()))
	}
	for _, n := range nodes {
		if p := slices.Index(n.Inspect().Table().Owners, ""); p >= 0 {
			return fmt.Errorf("member %s: partition %d has no owner", n.Address(), p)
		}
	}
	return nil
}

// WaitClusterSafe waits until the cluster is stable and safe: every backup
// replica holds what its primary holds and nothing migrates or syncs.
func (c *Cluster) WaitClusterSafe() {
	c.t.Helper()
	c.WaitStable()
	Eventually(c.t, c.timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		reason, err := c.Member(0).UnsafeReason(ctx)
		switch {
		case err != nil:
			return err
		case reason != "":
			return fmt.Errorf("cluster not safe yet: %s", reason)
		}
		return nil
	})
}

// Eventually calls cond until it returns nil, failing t with cond's last
// error if that takes longer than timeout.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(pause) // polling interval, not synchronisation
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// tWriter sends log lines to t.Log, tagged with the member's index, until
// the cluster is shut down (t.Log after the test ends would panic).
type tWriter struct {
	c *Cluster
	i int
}

func (w tWriter) Write(p []byte) (int, error) {
	w.c.logMu.Lock()
	defer w.c.logMu.Unlock()
	if !w.c.logDone {
		w.c.t.Logf("member %d: %s", w.i, p)
	}
	return len(p), nil
}

// Kill stops member i (oldest first) with no goodbye: its connections are
// dropped and memberlist stops without a leave message, so the others
// find out by failure detection.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	n := c.Member(i)
	c.remove(n)
	n.Terminate()
}

// KillJoin kills member i and starts a new member at the same moment, as
// an orchestrator that restarts a crashed process at once does: the new
// member joins before the death is declared (a killed member's refused
// port gets it declared within a few hundred milliseconds,
// membership.dead-on-refused-port). It returns the new member.
func (c *Cluster) KillJoin(i int) *nodeengine.Node {
	c.t.Helper()
	victim := c.Member(i)
	c.remove(victim)
	var wg sync.WaitGroup
	wg.Go(victim.Terminate)
	defer wg.Wait()
	return c.AddMember()
}

// Pause freezes member i (oldest first) for d, as a stop-the-world GC
// pause or a stopped VM would, and returns once it runs again: its
// memberlist neither sends nor receives, its operation connections stop
// and its executors run nothing (nodeengine.Node.Pause says exactly what
// stops). Paused for longer than failure detection (about a second in
// this kit's preset), the member is declared dead by the others; once it
// runs again it finds itself outside their cluster and rejoins as a merge
// of one, giving up its data (docs/architecture.md, "Split brain"): wait
// for that with WaitStable. To act while it is frozen, call Pause on a
// goroutine of its own, or Member(i).Pause().
func (c *Cluster) Pause(i int, d time.Duration) {
	c.t.Helper()
	resume := c.Member(i).Pause()
	defer resume()
	c.t.Logf("clustertest: member %d paused for %v", i, d)
	t := time.NewTimer(d)
	<-t.C // the pause's length
}

// KillMany kills the members at the given indexes (oldest first) at the
// same instant.
func (c *Cluster) KillMany(idx ...int) {
	c.t.Helper()
	var victims []*nodeengine.Node
	for _, i := range idx {
		victims = append(victims, c.Member(i))
	}
	var wg sync.WaitGroup
	for _, n := range victims {
		c.remove(n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.Terminate()
		}()
	}
	wg.Wait()
}

func (c *Cluster) remove(n *nodeengine.Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, m := range c.members {
		if m == n {
			c.members[j] = nil
		}
	}
}

// PartitionOwnedBy returns a partition that member i owns, as member i's
// table says.
func (c *Cluster) PartitionOwnedBy(i int) int {
	c.t.Helper()
	n := c.Member(i)
	for p, o := range n.Inspect().Table().Owners {
		if o == n.ID() {
			return p
		}
	}
	c.t.Fatalf("clustertest: member %d owns no partition", i)
	return -1
}

// KeyOwnedBy returns a key, prefix followed by a number, whose partition
// member i owns.
func (c *Cluster) KeyOwnedBy(i int, prefix string) string {
	c.t.Helper()
	n := c.Member(i)
	for k := 0; k < 100000; k++ {
		key := fmt.Sprintf("%s%d", prefix, k)
		if n.Inspect().Table().Owner(n.Partitions().PartitionID(key)) == n.ID() {
			return key
		}
	}
	c.t.Fatalf("clustertest: no key owned by member %d", i)
	return ""
}

// Fault is a rule for requests between members; the first rule that
// matches a request decides its fate.
type Fault struct {
	// From and To are member IDs; "" matches any member.
	From, To string
	// Kind matches the start of operation.Message.Kind(), for example
	// "migration.apply", "table.publish", "CounterService/"; "" matches
	// any.
	Kind string
	// Drop fails the request as if the connection had broken (the caller
	// sees a retryable ErrMemberLeft).
	Drop bool
	// Delay holds the request this long before it is sent.
	Delay time.Duration
	// Hold, when not nil, holds the request until the channel is closed,
	// then sends it (or drops it when Drop is set).
	Hold chan struct{}
	// Responses makes the rule apply to answers arriving back at From
	// instead of requests leaving it: a dropped answer is lost as with a
	// broken connection (the operation ran; the caller retries it).
	Responses bool

	hits atomic.Int64
}

// Hits returns how many requests the rule has matched.
func (f *Fault) Hits() int64 { return f.hits.Load() }

func (f *Fault) matches(m operation.Message) bool {
	return f.Responses == m.Response && (f.From == "" || f.From == m.From) && (f.To == "" || f.To == m.To) &&
		strings.HasPrefix(m.Kind(), f.Kind)
}

// AddFault installs a rule for requests between members and returns a
// function that removes it.
func (c *Cluster) AddFault(fp *Fault) (remove func()) {
	c.faultMu.Lock()
	defer c.faultMu.Unlock()
	c.faults = append(c.faults, fp)
	return func() {
		c.faultMu.Lock()
		defer c.faultMu.Unlock()
		c.faults = slices.DeleteFunc(c.faults, func(x *Fault) bool { return x == fp })
	}
}

// hook applies the fault rules; it is every member's operation hook.
func (c *Cluster) hook(m operation.Message) operation.Verdict {
	c.faultMu.Lock()
	defer c.faultMu.Unlock()
	for _, f := range c.faults {
		if f.matches(m) {
			f.hits.Add(1)
			return operation.Verdict{Hold: f.Hold, Delay: f.Delay, Drop: f.Drop}
		}
	}
	return operation.Verdict{}
}
