package counter_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// withBackups sets the partitions' backup count and the counter's
// synchronous backups to n.
func withBackups(n int) clustertest.Option { return withCounterBackups(n, 0) }

// withCounterBackups keeps sync+async backup replicas of every partition
// and has the counter back its writes up to sync of them synchronously,
// to the other async asynchronously.
func withCounterBackups(sync, async int) clustertest.Option {
	return clustertest.WithConfig(func(i int, cfg *config.Config) {
		cfg.Partitions.BackupCount = sync + async
		for j, sc := range cfg.Services {
			if sc.Type == counter.TypeName {
				cfg.Services[j].Properties = sc.Properties.With("backup-count", fmt.Sprint(sync)).
					With("async-backup-count", fmt.Sprint(async))
			}
		}
	})
}

// benchInc increments a counter owned by member owner through a proxy on
// member caller, from b.N sequential calls or, parallel, from GOMAXPROCS*p
// goroutines.
func benchInc(b *testing.B, backups, caller, owner int, parallel bool) {
	c := clustertest.New(b, 2, withBackups(backups))
	ctx := context.Background()
	name := c.KeyOwnedBy(owner, "bench")
	obj, err := c.Member(caller).Proxies().Get(ctx, counter.ServiceName, name)
	if err != nil {
		b.Fatal(err)
	}
	ctr := obj.(*counter.Counter)
	b.ReportAllocs()
	b.ResetTimer()
	if !parallel {
		for i := 0; i < b.N; i++ {
			if _, err := ctr.Inc(ctx, 1); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ctr.Inc(ctx, 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkLocalInc(b *testing.B)                { benchInc(b, 0, 0, 0, false) }
func BenchmarkRemoteInc(b *testing.B)               { benchInc(b, 0, 0, 1, false) }
func BenchmarkRemoteIncSyncBackup(b *testing.B)     { benchInc(b, 1, 0, 1, false) }
func BenchmarkRemoteIncParallel(b *testing.B)       { benchInc(b, 0, 0, 1, true) }
func BenchmarkRemoteIncBackupParallel(b *testing.B) { benchInc(b, 1, 0, 1, true) }

// BenchmarkRemoteMixedBackupParallel: GOMAXPROCS*32 goroutines on member 0
// alternate Inc and Get on one counter owned by member 1, with one
// synchronous backup: a Get that runs while an increment's backup is in
// flight waits for its acknowledgement (docs/architecture.md, "Reads wait
// for the writes they saw"; held/get is the share of Gets held).
func BenchmarkRemoteMixedBackupParallel(b *testing.B) {
	c := clustertest.New(b, 2, withBackups(1))
	ctx := context.Background()
	obj, err := c.Member(0).Proxies().Get(ctx, counter.ServiceName, c.KeyOwnedBy(1, "bench"))
	if err != nil {
		b.Fatal(err)
	}
	ctr := obj.(*counter.Counter)
	b.ReportAllocs()
	b.ResetTimer()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		var err error
		for i := 0; pb.Next(); i++ {
			if i%2 == 0 {
				_, err = ctr.Inc(ctx, 1)
			} else {
				_, err = ctr.Get(ctx)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	held := clustertest.Scrape(b, c.Member(1)).Value("partita_operation_answers_held_total")
	b.ReportMetric(held/float64(b.N/2+1), "held/get")
}
