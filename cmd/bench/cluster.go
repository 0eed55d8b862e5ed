package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/services/counter"
)

const (
	// stableTimeout bounds the wait for a stable cluster before the load.
	stableTimeout = 60 * time.Second
	// joinTimeout bounds the wait, with -join, for the local member to
	// see another member.
	joinTimeout = 10 * time.Second
	// proxyTimeout bounds the creation of all proxies.
	proxyTimeout = 60 * time.Second
	// opTimeout bounds each increment and each read.
	opTimeout = 10 * time.Second
	// setupWorkers is how many goroutines create proxies and read the
	// counters.
	setupWorkers = 64
)

// cluster is the members started in this process and their proxies.
type cluster struct {
	members []*nodeengine.Node   // start order
	joined  bool                 // -join: the rest of the cluster is elsewhere
	size    int                  // members in the cluster once stable
	proxies [][]*counter.Counter // by local member, by counter index
}

// counterName is the name of counter i.
func counterName(i int) string { return "bench-" + strconv.Itoa(i) }

// startCluster starts the local members, waits until the cluster is
// stable, and returns it. On error the returned cluster (if not nil) holds
// the members already started, to be shut down.
func startCluster(ctx context.Context, o options, log *slog.Logger) (*cluster, error) {
	c := &cluster{joined: o.join != ""}
	sctx, cancel := context.WithTimeout(ctx, stableTimeout)
	var err error
	if c.joined {
		err = c.startJoined(sctx, o, log)
	} else {
		c.members, err = nodeengine.StartLocal(sctx, o.members, func(i int, cfg *config.Config) {
			configure(o, i, cfg)
		}, nodeengine.WithLogger(log))
	}
	cancel()
	if err != nil {
		return c, err
	}
	if c.joined {
		if err := c.waitJoined(ctx, o.join); err != nil {
			return c, err
		}
	}
	if err := c.waitStable(ctx); err != nil {
		return c, err
	}
	c.size = len(c.members[0].Members())
	return c, nil
}

// startJoined starts, with -join, the one local member: bound to a free
// port of the interface that reaches o.join, multicast off, joining o.join.
func (c *cluster) startJoined(ctx context.Context, o options, log *slog.Logger) error {
	bindHost, err := localAddressFor(o.join)
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.Network.Bind = net.JoinHostPort(bindHost, "0")
	cfg.Network.Join.Multicast.Enabled = false
	cfg.Network.Join.Members = []string{o.join}
	configure(o, 0, cfg)
	n, err := nodeengine.New(cfg, nodeengine.WithLogger(log))
	if err != nil {
		return err
	}
	if err := n.Start(ctx); err != nil {
		return fmt.Errorf("start member 0: %w", err)
	}
	c.members = append(c.members, n)
	return nil
}

// configure sets local member i's config (bound and joining as it should
// be) from the flags: the partition table's backups, the counter's
// properties and its per-increment log line at debug.
func configure(o options, i int, cfg *config.Config) {
	cfg.Source = fmt.Sprintf("cmd/bench member %d", i)
	if o.join == "" {
		// All members share this host: a member that dies is noticed
		// fast. A remote cluster keeps the default timing.
		cfg.UseFastFailureDetection()
	}
	cfg.Partitions.BackupCount = o.syncBackups + o.asyncBackups
	cfg.Operations.PartitionThreads = o.partitionThreads
	// Increments pass no deadline: the invocation timeout bounds each, as
	// it would for a service that leaves timeouts to the engine.
	cfg.Operations.InvocationTimeout = opTimeout
	for j, sc := range cfg.Services {
		if sc.Type == counter.TypeName {
			cfg.Services[j].Properties = sc.Properties.
				With("log-level", "debug").
				With("backup-count", strconv.Itoa(o.syncBackups)).
				With("async-backup-count", strconv.Itoa(o.asyncBackups))
		}
	}
}

// localAddressFor returns the IP of this host's interface that reaches
// addr, so that the members of a remote cluster can reach the local one.
// (A UDP "connection" sends nothing.)
func localAddressFor(addr string) (string, error) {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return "", fmt.Errorf("-join %s: %w", addr, err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// waitJoined fails fast when the local member did not join anybody (the
// node then starts a cluster of its own).
func (c *cluster) waitJoined(ctx context.Context, addr string) error {
	n := c.members[0]
	return poll(ctx, joinTimeout, func() string {
		if len(n.Members()) < 2 {
			return fmt.Sprintf("no member of cluster %q answered at %s", n.ClusterName(), addr)
		}
		return ""
	})
}

// waitStable waits until the cluster is stable (the local members with
// nodeengine.WaitStable, or with -join the local member's view of the
// remote cluster) and safe (every backup holds what its primary holds).
func (c *cluster) waitStable(ctx context.Context) error {
	if !c.joined {
		sctx, cancel := context.WithTimeout(ctx, stableTimeout)
		err := nodeengine.WaitStable(sctx, c.members)
		cancel()
		if err != nil {
			return err
		}
	}
	return poll(ctx, stableTimeout, func() string {
		if c.joined {
			if why := c.joinedUnstable(); why != "" {
				return why
			}
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		safe, err := c.members[0].Partitions().IsClusterSafe(sctx)
		switch {
		case err != nil:
			return "cluster safety unknown: " + err.Error()
		case !safe:
			return "cluster not safe (backups syncing or migrations running)"
		}
		return ""
	})
}

// joinedUnstable returns, with -join, why the local member does not hold a
// settled table whose owners are exactly the members it sees, or "" when
// it does.
func (c *cluster) joinedUnstable() string {
	n := c.members[0]
	seen := n.Members()
	t := n.Inspect().Table()
	switch {
	case t == nil:
		return "no partition table"
	case len(t.Members) != len(seen):
		return fmt.Sprintf("table version %d spans %d members, want %d", t.Version, len(t.Members), len(seen))
	case n.Inspect().MigrationInFlight():
		return "migrating partitions"
	}
	for _, m := range seen {
		if _, ok := t.Members[m.ID]; !ok {
			return fmt.Sprintf("table version %d lacks member %s", t.Version, m.ID)
		}
	}
	return ""
}

// poll calls cond every 20 ms until it returns "" or timeout passes; the
// error then carries cond's last reason.
func poll(ctx context.Context, timeout time.Duration, cond func() string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		why := cond()
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not stable: %s: %w", why, ctx.Err())
		case <-tick.C:
		}
	}
}

// createProxies creates the k counters' proxies on every local member,
// before the load. Member 0 creates them cluster-wide (in parallel); the
// others then find them in their caches.
func (c *cluster) createProxies(ctx context.Context, k int) error {
	ctx, cancel := context.WithTimeout(ctx, proxyTimeout)
	defer cancel()
	c.proxies = make([][]*counter.Counter, len(c.members))
	for m, n := range c.members {
		ps := make([]*counter.Counter, k)
		err := parallel(k, func(_, i int) error {
			obj, err := n.Proxies().Get(ctx, counter.ServiceName, counterName(i))
			if err != nil {
				return fmt.Errorf("member %d: proxy of %s: %w", m, counterName(i), err)
			}
			cnt, ok := obj.(*counter.Counter)
			if !ok {
				return fmt.Errorf("member %d: proxy of %s is a %T, want *counter.Counter", m, counterName(i), obj)
			}
			ps[i] = cnt
			return nil
		})
		if err != nil {
			return err
		}
		c.proxies[m] = ps
	}
	return nil
}

// readValues reads every counter (spread over the local members, each read
// tried up to three times) and returns the values and whether each could
// be read; the first read errors are logged.
func (c *cluster) readValues() (values []int64, ok []bool) {
	k := len(c.proxies[0])
	values, ok = make([]int64, k), make([]bool, k)
	var failed atomic.Int64
	err := parallel(k, func(w, i int) error {
		p := c.proxies[w%len(c.proxies)][i]
		var err error
		for range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			values[i], err = p.Get(ctx)
			cancel()
			if err == nil {
				ok[i] = true
				return nil
			}
		}
		if failed.Add(1) <= maxFirstErrors {
			c.members[0].Logger().Error("cannot read counter", "name", p.Name(), "error", err)
		}
		return nil
	})
	if err != nil { // f never fails
		panic(err)
	}
	return values, ok
}

// parallel calls f(worker, i) for i in [0, n) on up to setupWorkers
// goroutines and returns the first error (the remaining calls are
// skipped).
func parallel(n int, f func(worker, i int) error) error {
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	var failed atomic.Bool
	var wg sync.WaitGroup
	for w := range min(setupWorkers, n) {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(w, i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// shutdown stops the local members, the first one last (it is the oldest,
// the master: the others leave a running cluster and hand their partitions
// over).
func (c *cluster) shutdown() error { return nodeengine.ShutdownLocal(c.members) }
