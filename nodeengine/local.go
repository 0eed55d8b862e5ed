package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/partita-go/partita/config"
)

// localShutdownTimeout bounds the shutdown of each member StartLocal
// started when a later one fails to start.
const localShutdownTimeout = 30 * time.Second

// StartLocal starts n members in this process, bound to 127.0.0.1:0 with
// multicast off, member i>0 joining member 0; configure (may be nil)
// adjusts member i's config (from config.Default()) before it starts; opts
// are passed to New for every member. On error it shuts down the members it
// started.
func StartLocal(ctx context.Context, n int, configure func(i int, cfg *config.Config), opts ...Option) (nodes []*Node, err error) {
	defer func() {
		if err != nil {
			err = errors.Join(err, ShutdownLocal(nodes))
			nodes = nil
		}
	}()
	for i := range n {
		cfg := config.Default()
		cfg.Network.Bind = "127.0.0.1:0"
		cfg.Metrics.Address = "127.0.0.1:0"
		cfg.Network.Join.Multicast.Enabled = false
		cfg.Network.Join.Members = nil
		if i > 0 {
			cfg.Network.Join.Members = []string{nodes[0].Address()}
		}
		if configure != nil {
			configure(i, cfg)
		}
		m, err := New(cfg, opts...)
		if err != nil {
			return nodes, fmt.Errorf("member %d: %w", i, err)
		}
		if err := m.Start(ctx); err != nil {
			return nodes, fmt.Errorf("start member %d: %w", i, err)
		}
		nodes = append(nodes, m)
	}
	return nodes, nil
}

// ShutdownLocal shuts nodes down gracefully in reverse start order (the
// first member, the master, goes last, so every other member leaves a
// running cluster and hands its partitions over), each bounded by 30 s.
// It returns the errors of all of them.
func ShutdownLocal(nodes []*Node) error {
	var errs []error
	for _, n := range slices.Backward(nodes) {
		ctx, cancel := context.WithTimeout(context.Background(), localShutdownTimeout)
		if err := n.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down member %s: %w", n.Address(), err))
		}
		cancel()
	}
	return errors.Join(errs...)
}

// WaitStable polls until every node sees all the others, all hold the same
// partition table version, the table's owners are exactly the nodes (every
// table owner is one of the nodes, every node owns partitions), and no node
// reports a migration in flight (Inspector.MigrationInFlight); it returns
// ctx's error (wrapped with the last reason) when ctx ends first.
func WaitStable(ctx context.Context, nodes []*Node) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		why := unstable(nodes)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("members not stable: %s: %w", why, ctx.Err())
		case <-tick.C:
		}
	}
}

// unstable returns why nodes are not stable in WaitStable's sense, or ""
// when they are.
func unstable(nodes []*Node) string {
	if len(nodes) == 0 {
		return ""
	}
	isNode := func(id string) bool {
		return slices.ContainsFunc(nodes, func(n *Node) bool { return n.ID() == id })
	}
	first := nodes[0].view.table.Load()
	for i, n := range nodes {
		seen := n.Members()
		if len(seen) != len(nodes) {
			return fmt.Sprintf("member %d sees %d members", i, len(seen))
		}
		for _, m := range seen {
			if !isNode(m.ID) {
				return fmt.Sprintf("member %d sees %s, not one of the members", i, m.ID)
			}
		}
		t := n.view.table.Load()
		switch {
		case t == nil:
			return fmt.Sprintf("member %d has no partition table", i)
		case first == nil || t.Version != first.Version:
			return fmt.Sprintf("member %d holds table version %d, member 0 another", i, t.Version)
		case len(t.Members) != len(nodes):
			return fmt.Sprintf("member %d's table (version %d) spans %d members", i, t.Version, len(t.Members))
		case n.migrating():
			return fmt.Sprintf("member %d is migrating partitions", i)
		}
		for id := range t.Members {
			if !isNode(id) {
				return fmt.Sprintf("member %d's table names %s, not one of the members", i, id)
			}
		}
	}
	return ""
}
