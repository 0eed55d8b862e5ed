package nodeengine_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// Backups slowed to 400 ms on their way (a loaded machine) while writes
// flow: anti-entropy, which checks every 500 ms in the fast preset, sees
// the backup replica behind its primary's version, but the backups in
// flight land before it would sync, so the replica never starts a
// needless full copy (which would make a primary's death report the
// partition lost).
func TestAntiEntropyWaitsForSlowBackups(t *testing.T) {
	c := newCluster(t, 2, 1, nil)
	c.WaitClusterSafe()
	key := keyPlacedOn(t, c, 0, 1, "ae")
	remove := c.AddFault(&clustertest.Fault{From: c.Member(0).ID(), To: c.Member(1).ID(), Kind: "backup/", Delay: 400 * time.Millisecond})
	defer remove()

	var wg sync.WaitGroup
	r := reg(c, 0, key)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 8 { // 8 writes of 400 ms each: several anti-entropy rounds
		for range 4 {
			wg.Go(func() {
				if _, err := r.Inc(ctx, 1); err != nil {
					t.Error(err)
				}
			})
		}
		time.Sleep(400 * time.Millisecond) // the pace of the writes is the input
	}
	wg.Wait()
	if n := clustertest.Scrape(t, c.Member(1)).Value("partita_anti_entropy_syncs_total"); n != 0 {
		t.Fatalf("the backup replica pulled %v full copies while its backups were only slow", n)
	}
	if v, err := r.Get(ctx); err != nil || v != 32 {
		t.Fatalf("Get = %d, %v; want 32", v, err)
	}
}
