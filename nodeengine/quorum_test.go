package nodeengine_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
)

// withCounterProtection gives the counter split-brain protection and no
// backups (so that a write never waits for a dead member's ack: the
// writes the minority accepts are counted as fast as it takes them).
func withCounterProtection(minSize int, membership *config.MembershipConfig) clustertest.Option {
	return clustertest.WithConfig(func(i int, cfg *config.Config) {
		if membership != nil {
			cfg.Membership = *membership
		}
		for j, sc := range cfg.Services {
			if sc.Type == counter.TypeName {
				cfg.Services[j].SplitBrainProtection = config.SplitBrainProtectionConfig{MinSize: minSize}
				cfg.Services[j].Properties = sc.Properties.With("backup-count", "0")
			}
		}
	})
}

// A member alone with a service that needs two is not ready, says why,
// and refuses the service's operations at once; it is ready and serves
// once a second member joins.
func TestReadinessNamesUnmetSplitBrainProtection(t *testing.T) {
	c := clustertest.New(t, 1, withCounterProtection(2, nil))
	n := c.Member(0)
	code, r, err := ready(t, n)
	want := `split-brain protection of service "CounterService" not met: it needs 2 members (protect-on read-write), this member sees 1`
	if err != nil || code != http.StatusServiceUnavailable || r.Reason != want {
		t.Fatalf("/health/ready = %d %+v %v, want 503 %q", code, r, err, want)
	}
	if ok, reason := n.Ready(); ok || reason != want {
		t.Fatalf("Ready() = %v %q", ok, reason)
	}
	obj, err := n.Proxies().Get(ctxT(t), counter.ServiceName, "c")
	if err != nil {
		t.Fatal(err) // engine operations are not protected
	}
	if _, err := obj.(*counter.Counter).Inc(ctxT(t), 1); !errors.Is(err, spi.ErrSplitBrainProtection) {
		t.Fatalf("Inc alone = %v, want spi.ErrSplitBrainProtection", err)
	}
	c.AddMember()
	c.WaitStable()
	clustertest.Eventually(t, 30*time.Second, func() error {
		code, r, err := ready(t, n)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("not ready: %s", r.Reason)
		}
		return err
	})
	if v, err := obj.(*counter.Counter).Inc(ctxT(t), 1); err != nil || v != 1 {
		t.Fatalf("Inc with two members = %d, %v; want 1", v, err)
	}
}

// The window in which a minority still accepts writes: from the moment
// two of three members die to the survivor's first refusal, it takes the
// writes of a protected service until it has declared both dead. The test
// logs the window (and the writes accepted in it) for the fast preset of
// the tests and for the production defaults; it asserts no bound on it.
// docs/operations.md quotes the figures.
func TestSplitBrainProtectionWindow(t *testing.T) {
	prod := config.Default().Membership
	for _, tc := range []struct {
		name       string
		membership *config.MembershipConfig
	}{{"fast", nil}, {"production", &prod}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.membership != nil && testing.Short() {
				t.Skip("the production defaults take several seconds to declare a member dead")
			}
			c := clustertest.New(t, 3, withCounterProtection(2, tc.membership))
			survivor := c.Member(0)
			ms := c.Config(0).Membership
			if tc.membership != nil {
				ms = *tc.membership
			}
			obj, err := survivor.Proxies().Get(ctxT(t), counter.ServiceName, c.KeyOwnedBy(0, "win"))
			if err != nil {
				t.Fatal(err)
			}
			ctr := obj.(*counter.Counter)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var accepted atomic.Int64
			refused := make(chan error, 1)
			killed := time.Now()
			go func() {
				for {
					_, err := ctr.Inc(ctx, 1)
					if err != nil {
						refused <- err
						return
					}
					accepted.Add(1)
				}
			}()
			c.KillMany(1, 2)
			err = <-refused // the loop ends by ctx at the latest
			window := time.Since(killed)
			if !errors.Is(err, spi.ErrSplitBrainProtection) {
				t.Fatalf("after %v and %d writes: %v, want spi.ErrSplitBrainProtection", window, accepted.Load(), err)
			}
			t.Logf("%s (probe-interval %v, probe-timeout %v, suspicion-mult %d): the survivor of 2 kills of 3 refused its first write %v after the kill, having accepted %d writes since",
				tc.name, ms.ProbeInterval, ms.ProbeTimeout, ms.SuspicionMult, window.Round(time.Millisecond), accepted.Load())
			if v, err := ctr.Get(ctx); !errors.Is(err, spi.ErrSplitBrainProtection) {
				t.Fatalf("Get after the refusal = %d, %v", v, err)
			}
		})
	}
}
