package counter_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// Review finding: the master's "give the partition back to the source"
// path (migration/manager.go, after the push to the destination fails with
// errGone) hands the partition to a source whose data predates every write
// the destination served and backed up after it installed the table naming
// it. One member dies (the destination), the writes were acknowledged with
// one synchronous backup applied on a third member, and they are lost.
func TestReviewGiveBackLosesAckedWrites(t *testing.T) {
	c := clustertest.New(t, 2)
	a := c.Member(0) // master
	if !a.Inspect().IsMaster() {
		t.Fatal("member 0 is not the master")
	}
	// 1. Hold every migration at its apply step, so that the destination's
	// id is known before the table is published.
	holdApply := make(chan struct{})
	removeApply := c.AddFault(&clustertest.Fault{From: a.ID(), Kind: "migration.apply", Hold: holdApply})
	d := c.AddMember()
	// 2. The destination installs the table naming it, but the master never
	// sees its acknowledgement (the answer is lost).
	removePub := c.AddFault(&clustertest.Fault{From: a.ID(), To: d.ID(), Kind: "table.publish", Responses: true, Drop: true})
	prev := a.Inspect().Table()
	close(holdApply)
	removeApply()

	// 3. Find a partition moved to d (d held no replica of it before) that
	// d and the master both route to d.
	p, src, backup := -1, "", ""
	clustertest.Eventually(t, 20*time.Second, func() error {
		tn, td := a.Inspect().Table(), d.Inspect().Table()
		for q := range tn.Owners {
			if tn.Owner(q) == d.ID() && td.Owner(q) == d.ID() && prev.ReplicaIndex(q, d.ID()) < 0 {
				bs := tn.BackupsOf(q)
				if len(bs) > 0 && bs[0] != "" && bs[0] != d.ID() && bs[0] != prev.Owner(q) {
					p, src, backup = q, prev.Owner(q), bs[0]
					return nil
				}
			}
		}
		return fmt.Errorf("no partition moved to the new member yet")
	})
	t.Logf("partition %d: source %s, destination %s, backup %s", p, src, d.ID(), backup)
	var name string
	for k := 0; ; k++ {
		name = fmt.Sprintf("gb%d", k)
		if a.Partitions().PartitionID(name) == p {
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	obj, err := a.Proxies().Get(ctx, counter.ServiceName, name)
	if err != nil {
		t.Fatal(err)
	}
	ctr := obj.(*counter.Counter)
	const acked = 10
	for i := 0; i < acked; i++ {
		if _, err := ctr.Inc(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	// 4. The destination dies (one failure). Every increment above was
	// applied on d and on its synchronous backup.
	c.Kill(2)
	clustertest.Eventually(t, 20*time.Second, func() error {
		if o := a.Inspect().Table().Owner(p); o == d.ID() {
			return fmt.Errorf("partition %d still owned by the dead destination", p)
		}
		return nil
	})
	removePub()
	t.Logf("partition %d now owned by %s (source %s, backup %s)", p, a.Inspect().Table().Owner(p), src, backup)
	c.WaitStable()
	got, err := ctr.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range c.Members() {
		t.Logf("member %s holds %s = %d (replica index %d)", m.ID(), name, localValues(t, c, i)[name], m.Inspect().Table().ReplicaIndex(p, m.ID()))
	}
	if got != acked {
		t.Errorf("counter %s = %d after the destination died, want %d acknowledged increments: acknowledged writes lost", name, got, acked)
	}
	// 5. The new primary's next writes reuse versions the backup already
	// has: the backup acknowledges them as "already applied" without
	// applying them, the versions meet, and the cluster reports itself
	// safe with the backup and the primary holding different values.
	for i := 0; i < acked; i++ {
		if _, err := ctr.Inc(ctx, 5); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitClusterSafe()
	vals := map[string]int64{}
	for i, m := range c.Members() {
		vals[m.ID()] = localValues(t, c, i)[name]
	}
	tab := a.Inspect().Table()
	for _, b := range tab.BackupsOf(p) {
		if vals[b] != vals[tab.Owner(p)] {
			t.Errorf("cluster safe, yet counter %s is %d on its primary and %d on its backup", name, vals[tab.Owner(p)], vals[b])
		}
	}
}
