package counter_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/services/counter"
)

func getCounter(t *testing.T, c *clustertest.Cluster, member int, name string) *counter.Counter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obj, err := c.Member(member).Proxies().Get(ctx, counter.ServiceName, name)
	if err != nil {
		t.Fatalf("proxy %q on member %d: %v", name, member, err)
	}
	return obj.(*counter.Counter)
}

// 64 goroutines spread over all members increment 100 counters 10,000
// times in all; every counter ends exactly at its number of increments.
func TestConcurrentIncrementsExact(t *testing.T) {
	c := clustertest.New(t, 3)
	const goroutines, total, counters = 64, 10000, 100
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	proxies := make([][]*counter.Counter, len(c.Members()))
	for m := range proxies {
		for k := 0; k < counters; k++ {
			proxies[m] = append(proxies[m], getCounter(t, c, m, fmt.Sprintf("c%d", k)))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			m := g % len(proxies)
			for i := g; i < total; i += goroutines {
				if _, err := proxies[m][i%counters].Inc(ctx, 1); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for k := 0; k < counters; k++ {
		for m := range proxies {
			v, err := proxies[m][k].Get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if v != total/counters {
				t.Fatalf("counter c%d read on member %d = %d, want %d", k, m, v, total/counters)
			}
		}
	}
}

func localValues(t *testing.T, c *clustertest.Cluster, member int) map[string]int64 {
	t.Helper()
	return clusterload.Local(t, c, counters, member)
}

// counters is the counter service as a clusterload.Store: through proxies,
// as a user calls it.
var counters clusterload.Store = counterStore{}

type counterStore struct{}

func (counterStore) counter(ctx context.Context, n *nodeengine.Node, name string) (*counter.Counter, error) {
	obj, err := n.Proxies().Get(ctx, counter.ServiceName, name)
	if err != nil {
		return nil, err
	}
	return obj.(*counter.Counter), nil
}

func (s counterStore) Inc(ctx context.Context, n *nodeengine.Node, name string) error {
	ctr, err := s.counter(ctx, n, name)
	if err == nil {
		_, err = ctr.Inc(ctx, 1)
	}
	return err
}

func (s counterStore) Get(ctx context.Context, n *nodeengine.Node, name string) (int64, error) {
	ctr, err := s.counter(ctx, n, name)
	if err != nil {
		return 0, err
	}
	return ctr.Get(ctx)
}

func (counterStore) Local(ctx context.Context, n *nodeengine.Node) (map[string]int64, error) {
	svc, _ := n.Service(counter.ServiceName)
	return svc.(*counter.Service).LocalValues(ctx)
}

func TestProxiesClusterWide(t *testing.T) {
	c := clustertest.New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := getCounter(t, c, 0, "shared")
	// Created on every member before Get returned.
	for i, m := range c.Members() {
		if names := m.Proxies().Names(counter.ServiceName); len(names) != 1 || names[0] != "shared" {
			t.Fatalf("member %d knows %v, want [shared]", i, names)
		}
	}
	// One cached proxy per member; proxies on different members are one counter.
	if getCounter(t, c, 0, "shared") != a {
		t.Fatal("second Get on member 0 returned a new proxy")
	}
	b := getCounter(t, c, 1, "shared")
	if _, err := a.Inc(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Inc(ctx, 2); err != nil || v != 7 {
		t.Fatalf("inc through member 1 = %d, %v; want 7", v, err)
	}
	// A member that joins later learns the object.
	c.AddMember()
	c.WaitStable()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if names := c.Member(3).Proxies().Names(counter.ServiceName); len(names) != 1 {
			return fmt.Errorf("new member knows %v", names)
		}
		return nil
	})
	// Destroy on member 2 removes the value everywhere.
	if err := getCounter(t, c, 2, "shared").Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range c.Members() {
		if names := c.Member(i).Proxies().Names(counter.ServiceName); len(names) != 0 {
			t.Fatalf("member %d still knows %v after destroy", i, names)
		}
		if v, ok := localValues(t, c, i)["shared"]; ok {
			t.Fatalf("member %d still holds shared=%d after destroy", i, v)
		}
	}
	if v, err := getCounter(t, c, 1, "shared").Get(ctx); err != nil || v != 0 {
		t.Fatalf("recreated counter = %d, %v; want 0", v, err)
	}
}

// The counter's operation types pass the checks of registration (each
// backup operation registered, each response encodable).
func TestCounterOperationTypesRegister(t *testing.T) {
	s := operation.New(operation.Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7})
	svc := new(counter.Service)
	if err := s.Register(counter.ServiceName, svc, svc.OperationTypes()); err != nil {
		t.Fatal(err)
	}
}
