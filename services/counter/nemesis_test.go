package counter_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/clusterload"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// The counter under the nemesis: clients increment and read counters
// through random members while members are killed (also with a join
// right after, before the death is declared), leave, join, pause, and
// operation and backup messages between pairs are dropped, delayed and
// their answers lost. Every counter's Inc/Get history must be
// linearizable, its final value must count every acknowledged increment
// and at most the failed ones on top, and every backup must equal its
// primary.
//
// CI runs a few fixed seeds; soak with
//
//	go test ./services/counter -run Nemesis -nemesis.duration=3m -nemesis.seeds=20 -timeout=0
//
// (-nemesis.seeds=20 runs seeds 1 to 20; a failure prints its seed, and
// -nemesis.seed=N replays that seed's schedule.) A longer schedule
// spreads its calls over more counters (nemesisCounters per 20 s), so
// that each counter's history stays about as long as in a CI run's: the
// checker's work grows much faster than a history's length.
func TestCounterNemesisLinearizable(t *testing.T) {
	for _, tc := range []struct {
		backups, members int
		seeds            []uint64
	}{
		{backups: 1, members: 3, seeds: []uint64{1, 2}},
		{backups: 2, members: 4, seeds: []uint64{3}},
	} {
		t.Run(fmt.Sprintf("backups%d", tc.backups), func(t *testing.T) {
			for _, seed := range clustertest.NemesisSeeds(tc.seeds...) {
				t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
					runCounterNemesis(t, tc.backups, tc.members, seed, clustertest.NemesisDuration(4*time.Second), nil)
				})
			}
		})
	}
}

// nemesisClients and nemesisCounters size the load: a few counters, so
// that each has a long history, and few enough clients that the checker
// decides quickly (runCounterNemesis uses more counters for a schedule
// longer than 20 s).
const nemesisClients, nemesisCounters = 6, 4

// A split lets both sides take increments, and each side's reads miss
// the other's (docs/guarantees.md): the counter is not linearizable
// across a split, by design. After the heal the merge keeps every
// acknowledged increment of either side (counter-sum): under a nemesis
// that also splits, the final values, the placement, every backup against
// its primary and the history against clustertest.CounterSplitModel (no
// answer above the increments that may have run before it) are checked,
// and whether the history was linearizable is only logged.
//
// Seed 4 isolates member 0, the master, alone twice for 2.6 s. It used to
// end about one run in four with a counter one or two above its
// acknowledged plus failed increments: an Inc that a caller on the pair's
// side sent to primary 0 as the split began ran there, its answer was cut
// off, and its retry ran again on the backup promoted on the pair's side,
// whose exactly-once record lacked it; the merge of 0 brought the first
// run back. The retried run is now counted apart and cancelled at the
// merge, as 0 still records the invocation (services/counter/splitbrain.go).
// Passed 8 of 8 runs of seed 4 and seeds 5 to 12 once each after the fix
// (2 of 8 runs of seed 4 failed before it). Seed 10 splits, freezes the
// master past failure detection, and splits again.
func TestCounterNemesisSplitKeepsTotals(t *testing.T) {
	for _, seed := range clustertest.NemesisSeeds(4, 10) {
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			// Splits first, among faults that keep the members.
			kinds := []clustertest.NemesisKind{clustertest.NemesisSplit, clustertest.NemesisSplit, clustertest.NemesisFreeze,
				clustertest.NemesisPause, clustertest.NemesisDelay, clustertest.NemesisLoseAnswers}
			runCounterNemesis(t, 1, 3, seed, clustertest.NemesisDuration(5*time.Second), kinds)
		})
	}
}

// runCounterNemesis runs the counter under the nemesis of seed, drawn
// from kinds (nil: the default kinds, whose histories must be
// linearizable).
func runCounterNemesis(t *testing.T, backups, members int, seed uint64, d time.Duration, kinds []clustertest.NemesisKind) {
	c := clustertest.New(t, members, withBackups(backups))
	schedule := clustertest.NewNemesisSchedule(seed, d, clustertest.Nemesis{Kinds: kinds,
		Members: members, MinMembers: backups + 1, MaxMembers: members + 2, Service: counter.ServiceName})
	names := make([]string, nemesisCounters*max(1, int(d/(20*time.Second))))
	for k := range names {
		names[k] = fmt.Sprintf("nemesis-%d", k)
	}
	rec := clustertest.NewRecorder()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range nemesisClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ms := c.Members()
				n, name := ms[r.IntN(len(ms))], names[r.IntN(len(names))]
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				obj, err := n.Proxies().Get(ctx, counter.ServiceName, name)
				if err != nil { // no call made: nothing to record
					cancel()
					continue
				}
				ctr := obj.(*counter.Counter)
				if r.IntN(2) == 0 {
					clustertest.Record(rec, g, clustertest.CounterInc{Name: name, Delta: 1},
						func() (int64, error) { return ctr.Inc(ctx, 1) })
				} else {
					clustertest.Record(rec, g, clustertest.CounterGet{Name: name},
						func() (int64, error) { return ctr.Get(ctx) })
				}
				cancel()
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	err := c.RunNemesis(ctx, schedule)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	c.WaitClusterSafe()

	// The final values, read through every member, join the history.
	final := make(map[string]int64)
	for i, n := range c.Members() {
		for _, name := range names {
			obj, err := n.Proxies().Get(ctx, counter.ServiceName, name)
			if err != nil {
				t.Fatal(err)
			}
			v, err := clustertest.Record(rec, nemesisClients+i, clustertest.CounterGet{Name: name},
				func() (int64, error) { return obj.(*counter.Counter).Get(ctx) })
			if err != nil {
				t.Fatalf("final read of %s through member %d: %v", name, i, err)
			}
			final[name] = v
		}
	}
	h := rec.Operations()
	acked, failed := make(map[string]int64), make(map[string]int64)
	for _, op := range h {
		if in, ok := op.Input.(clustertest.CounterInc); ok {
			if _, unknown := op.Output.(clustertest.Unknown); unknown {
				failed[in.Name] += in.Delta
			} else {
				acked[in.Name] += in.Delta
			}
		}
	}
	for _, name := range names {
		if v := final[name]; v < acked[name] || v > acked[name]+failed[name] {
			t.Errorf("seed %d: counter %s = %d after %d acknowledged and %d failed increments", seed, name, v, acked[name], failed[name])
		}
	}
	t.Logf("seed %d: %d calls, %d failed; %d members at the end", seed, len(h), rec.Failed(), len(c.Members()))
	if slices.Contains(kinds, clustertest.NemesisSplit) {
		// Across splits the history is checked against the split model
		// (no answer above the increments that may have run before it);
		// whether it was linearizable as well is logged.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t.Logf("seed %d: across splits (not linearizable by design): %v", seed, clustertest.Check(ctx, clustertest.CounterModel, h))
		if err := clustertest.CheckLinearizable(t, clustertest.CounterSplitModel, h); err != nil {
			t.Errorf("seed %d: replay with -run '%s' -nemesis.seed=%d", seed, t.Name(), seed)
		}
	} else if err := clustertest.CheckLinearizable(t, clustertest.CounterModel, h); err != nil {
		t.Errorf("seed %d: replay with -run '%s' -nemesis.seed=%d", seed, t.Name(), seed)
	}
	clusterload.CheckPlacement(t, c, counters)
	// WaitClusterSafe compared the replicas' versions; this compares
	// their values.
	clusterload.CheckBackupsEqualPrimaries(t, c, counters)
}
