package counter_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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
