package nodeengine_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
)

// Two members started by StartLocal form one cluster on 127.0.0.1, which
// WaitStable sees settle, and then shut down.
func TestStartLocalWaitStable(t *testing.T) {
	ctx := ctxT(t)
	var configured []int
	nodes, err := nodeengine.StartLocal(ctx, 2, func(i int, cfg *config.Config) {
		configured = append(configured, i)
		cfg.Source = "local test"
	}, nodeengine.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatalf("StartLocal: %v", err)
	}
	defer func() {
		for _, n := range slices.Backward(nodes) {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := n.Shutdown(sctx); err != nil {
				t.Errorf("shutdown %s: %v", n.Address(), err)
			}
			cancel()
		}
	}()
	if len(nodes) != 2 || !slices.Equal(configured, []int{0, 1}) {
		t.Fatalf("StartLocal returned %d nodes, configured %v; want 2, [0 1]", len(nodes), configured)
	}
	if err := nodeengine.WaitStable(ctx, nodes); err != nil {
		t.Fatalf("WaitStable: %v", err)
	}
	t0, t1 := nodes[0].Inspect().Table(), nodes[1].Inspect().Table()
	if t0.Version != t1.Version || len(t0.Members) != 2 {
		t.Errorf("tables: version %d and %d, %d owners; want one version, 2 owners", t0.Version, t1.Version, len(t0.Members))
	}
	for _, n := range nodes {
		if len(n.Members()) != 2 {
			t.Errorf("%s sees %d members, want 2", n.Address(), len(n.Members()))
		}
	}
	if !nodes[0].Inspect().IsMaster() {
		t.Errorf("member 0 is not the master")
	}
}

// WaitStable returns ctx's error, with the reason, when the nodes do not
// settle in time; a failed start shuts down the members already started.
func TestWaitStableTimeoutAndStartLocalError(t *testing.T) {
	ctx := ctxT(t)
	nodes, err := nodeengine.StartLocal(ctx, 1, nil, nodeengine.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatalf("StartLocal: %v", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := nodes[0].Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()
	// nodes[0] twice: it sees one member, not two.
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := nodeengine.WaitStable(wctx, []*nodeengine.Node{nodes[0], nodes[0]}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitStable of an unstable set: %v, want a deadline error", err)
	}

	// Member 1's config is invalid: member 0 is shut down again.
	got, err := nodeengine.StartLocal(ctx, 2, func(i int, cfg *config.Config) {
		if i == 1 {
			cfg.Partitions.Count = -1
		}
	}, nodeengine.WithLogger(slog.New(slog.DiscardHandler)))
	if err == nil || got != nil {
		t.Fatalf("StartLocal with a bad config: %d nodes, error %v; want none and an error", len(got), err)
	}
}
