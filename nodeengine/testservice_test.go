package nodeengine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/internal/testservice"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// The engine's cluster tests run internal/testservice, the smallest
// partitioned service: they test the engine, not a product service.

// newCluster starts n members whose only service is the test service, with
// backups synchronous backups per add; configure, when not nil, adjusts
// each member's config further.
func newCluster(t *testing.T, n, backups int, configure func(int, *config.Config), opts ...clustertest.Option) *clustertest.Cluster {
	t.Helper()
	use := testservice.Use(backups)
	return clustertest.New(t, n, append(opts, clustertest.WithConfig(func(i int, cfg *config.Config) {
		use(i, cfg)
		if configure != nil {
			configure(i, cfg)
		}
	}))...)
}

// register is one test-service register used through one member, as a
// proxy would be.
type register struct {
	n   *nodeengine.Node
	key string
}

func reg(c *clustertest.Cluster, member int, key string) register {
	return register{c.Member(member), key}
}

func (r register) Inc(ctx context.Context, delta int64) (int64, error) {
	return testservice.Add(ctx, r.n, r.key, delta)
}

func (r register) Get(ctx context.Context) (int64, error) { return testservice.Get(ctx, r.n, r.key) }

// incResult is the outcome of one Inc.
type incResult struct {
	v   int64
	err error
}

// local returns the registers member i holds, of every replica.
func local(t *testing.T, c *clustertest.Cluster, i int) map[string]int64 {
	t.Helper()
	return clusterload.Local(t, c, clusterload.TestService, i)
}

// startLoad increments test-service registers through the members pick
// returns (see clusterload).
func startLoad(t *testing.T, goroutines, values int, pick func(*rand.Rand) *nodeengine.Node) *clusterload.Load {
	return clusterload.Start(t, clusterload.TestService, goroutines, values, pick)
}

// keyPlacedOn returns a key whose partition has its primary on member
// primary and its first backup on member backup.
func keyPlacedOn(t *testing.T, c *clustertest.Cluster, primary, backup int, prefix string) string {
	t.Helper()
	n := c.Member(primary)
	for k := 0; k < 100000; k++ {
		key := fmt.Sprintf("%s%d", prefix, k)
		p := n.Partitions().PartitionID(key)
		if tab := n.Inspect().Table(); tab.Owner(p) == n.ID() && tab.Replica(p, 1) == c.Member(backup).ID() {
			return key
		}
	}
	t.Fatalf("no key with its primary on member %d and its backup on member %d", primary, backup)
	return ""
}

// waitHits waits up to 10 s until fault f has matched n requests.
func waitHits(t *testing.T, f *clustertest.Fault, n int64) {
	t.Helper()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if k := f.Hits(); k < n {
			return fmt.Errorf("fault %q matched %d requests, waiting for %d", f.Kind, k, n)
		}
		return nil
	})
}
