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
package clustertest

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
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

// WithTimeout bounds WaitStable and the start of each member (default 30s).
func WithTimeout(d time.Duration) Option { return func(c *Cluster) { c.timeout = d } }

// Cluster is a set of members started by New.
type Cluster struct {
	t         testing.TB
	configure func(int, *config.Config)
	level     slog.Level
	timeout   time.Duration

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
	cfg.Network.Join.Multicast.Enabled = false
	cfg.Network.Join.Members = nil
	for _, m := range c.Members() {
		cfg.Network.Join.Members = append(cfg.Network.Join.Members, m.Address())
		break
	}
	cfg.Membership.ProbeInterval = 200 * time.Millisecond
	cfg.Membership.ProbeTimeout = 100 * time.Millisecond
	cfg.Membership.SuspicionMult = 2
	cfg.Membership.GossipInterval = 50 * time.Millisecond
	cfg.Membership.PushPullInterval = time.Second
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
	c.mu.Lock()
	i := c.started
	c.started++
	c.mu.Unlock()
	cfg := c.Config(i)
	log := slog.New(slog.NewTextHandler(tWriter{c, i}, &slog.HandlerOptions{Level: c.level}))
	n, err := nodeengine.New(cfg, nodeengine.WithLogger(log))
	if err != nil {
		c.t.Fatalf("clustertest: member %d: %v", i, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		c.t.Fatalf("clustertest: start member %d: %v", i, err)
	}
	c.mu.Lock()
	c.members = append(c.members, n)
	c.mu.Unlock()
	return n
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

// Shutdown stops member i (oldest first) and removes it from the cluster.
func (c *Cluster) Shutdown(i int) {
	c.t.Helper()
	n := c.Member(i)
	c.mu.Lock()
	for j, m := range c.members {
		if m == n {
			c.members[j] = nil
		}
	}
	c.mu.Unlock()
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

// WaitStable waits until every running member sees all the others, holds
// the same partition table version, and that table assigns every partition
// to a running member. It fails the test at the timeout.
func (c *Cluster) WaitStable() {
	c.t.Helper()
	Eventually(c.t, c.timeout, func() error { return c.stable() })
}

func (c *Cluster) stable() error {
	ms := c.Members()
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ID()
	}
	slices.Sort(ids)
	var version int64
	for i, m := range ms {
		var seen []string
		for _, mm := range m.Members() {
			seen = append(seen, mm.ID)
		}
		slices.Sort(seen)
		if !slices.Equal(seen, ids) {
			return fmt.Errorf("member %s sees %d members, want %d", m.Address(), len(seen), len(ids))
		}
		t := m.Table()
		if t == nil {
			return fmt.Errorf("member %s has no partition table", m.Address())
		}
		if i == 0 {
			version = t.Version
		} else if t.Version != version {
			return fmt.Errorf("member %s has table version %d, member %s has %d", m.Address(), t.Version, ms[0].Address(), version)
		}
		for p, o := range t.Owners {
			if _, ok := slices.BinarySearch(ids, o); !ok {
				return fmt.Errorf("member %s: partition %d owned by %q, not a running member", m.Address(), p, o)
			}
		}
		if m.MigrationInFlight() {
			return fmt.Errorf("member %s has migrations in flight", m.Address())
		}
	}
	return nil
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
