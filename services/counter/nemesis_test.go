package counter_test

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
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
					runCounterNemesis(t, nemesisSetup{backups: tc.backups, members: tc.members}, seed, clustertest.NemesisDuration(4*time.Second))
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
			runCounterNemesis(t, nemesisSetup{backups: 1, members: 3, kinds: kinds}, seed, clustertest.NemesisDuration(5*time.Second))
		})
	}
}

// With asynchronous backups only, a write is acknowledged once its
// primary ran it: a kill loses the increments its backups had not yet
// applied (docs/guarantees.md). The counter is then not linearizable by
// design, and its history is checked for what still holds: no answer
// above the increments called before it returned, so nothing is counted
// twice or made up (counterAnswersAboveIncrements), and its final values
// against the acknowledged plus failed increments from above only; the
// lost increments are logged. Without a death (the
// default faults but the kills) nothing is lost: the history must be
// linearizable and the final values exact, as with synchronous backups.
func TestCounterNemesisAsyncBackups(t *testing.T) {
	var noDeaths []clustertest.NemesisKind
	for _, k := range clustertest.DefaultNemesisKinds {
		if k != clustertest.NemesisKill && k != clustertest.NemesisKillJoin {
			noDeaths = append(noDeaths, k)
		}
	}
	for _, tc := range []struct {
		name  string
		kinds []clustertest.NemesisKind
		seeds []uint64
	}{
		{"no-deaths", noDeaths, []uint64{5}},
		{"kills", nil, []uint64{6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, seed := range clustertest.NemesisSeeds(tc.seeds...) {
				t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
					runCounterNemesis(t, nemesisSetup{asyncBackups: 1, members: 3, kinds: tc.kinds}, seed,
						clustertest.NemesisDuration(4*time.Second))
				})
			}
		})
	}
}

// nemesisSetup is a cluster and the faults of a nemesis run: members,
// the counter's synchronous and asynchronous backups, and the kinds of
// fault drawn (nil: clustertest.DefaultNemesisKinds).
type nemesisSetup struct {
	backups, asyncBackups, members int
	kinds                          []clustertest.NemesisKind
}

// lossy reports whether the setup may lose acknowledged increments: a
// member dies while asynchronous backups are all a write waits for.
func (s nemesisSetup) lossy() bool {
	if s.backups > 0 || s.asyncBackups == 0 {
		return false
	}
	kinds := s.kinds
	if kinds == nil {
		kinds = clustertest.DefaultNemesisKinds
	}
	return slices.Contains(kinds, clustertest.NemesisKill) || slices.Contains(kinds, clustertest.NemesisKillJoin) ||
		slices.Contains(kinds, clustertest.NemesisFreeze)
}

// runCounterNemesis runs the counter under the nemesis of seed (see
// nemesisSetup); the default kinds' histories must be linearizable.
func runCounterNemesis(t *testing.T, setup nemesisSetup, seed uint64, d time.Duration) {
	backups, members, kinds := setup.backups, setup.members, setup.kinds
	c := clustertest.New(t, members, withCounterBackups(backups, setup.asyncBackups))
	// Kills and leaves keep enough members for every copy.
	copies := backups + setup.asyncBackups + 1
	schedule := clustertest.NewNemesisSchedule(seed, d, clustertest.Nemesis{Kinds: kinds,
		Members: members, MinMembers: copies, MaxMembers: members + 2, Service: counter.ServiceName})
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
	lossy := setup.lossy()
	var lost int64
	for _, name := range names {
		v := final[name]
		if v > acked[name]+failed[name] || (!lossy && v < acked[name]) {
			t.Errorf("seed %d: counter %s = %d after %d acknowledged and %d failed increments", seed, name, v, acked[name], failed[name])
		}
		lost += max(acked[name]-v, 0)
	}
	t.Logf("seed %d: %d calls, %d failed; %d members at the end", seed, len(h), rec.Failed(), len(c.Members()))
	if lossy {
		// Not linearizable by design (TestCounterNemesisAsyncBackups).
		t.Logf("seed %d: %d acknowledged increments lost with their primaries (asynchronous backups only)", seed, lost)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t.Logf("seed %d: as one history (not linearizable by design): %v", seed, clustertest.Check(ctx, clustertest.CounterModel, h))
		t.Logf("seed %d: against the split model (it takes one effect per increment, which a lost and retried one is not): %v",
			seed, clustertest.Check(ctx, clustertest.CounterSplitModel, h))
		for _, err := range counterAnswersAboveIncrements(h) {
			t.Errorf("seed %d: %v (replay with -run '%s' -nemesis.seed=%d)", seed, err, t.Name(), seed)
		}
	} else if slices.Contains(kinds, clustertest.NemesisSplit) {
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

// counterAnswersAboveIncrements returns an error for each answer of h
// (CounterInc and CounterGet calls on counters that start at 0, with
// non-negative increments) above the sum of the increments of its counter
// called before it returned: an increment counted twice, or a value made
// up. It is what still holds when acknowledged increments may be lost
// (asynchronous backups and a kill): an increment whose first run was
// lost with its primary, after a read saw it, runs again on its retry,
// so one call has two effects at two times, which no single order of the
// calls explains (CounterModel and CounterSplitModel both fail on such a
// history), yet nothing was counted twice.
func counterAnswersAboveIncrements(h []porcupine.Operation) []error {
	type inc struct{ call, delta int64 }
	incs := map[string][]inc{}
	for _, op := range h {
		if in, ok := op.Input.(clustertest.CounterInc); ok {
			incs[in.Name] = append(incs[in.Name], inc{op.Call, in.Delta})
		}
	}
	for _, l := range incs {
		slices.SortFunc(l, func(a, b inc) int { return cmp.Compare(a.call, b.call) })
		for i := 1; i < len(l); i++ {
			l[i].delta += l[i-1].delta // running sums
		}
	}
	var errs []error
	for _, op := range h {
		got, known := op.Output.(int64)
		if !known {
			continue
		}
		var name string
		switch in := op.Input.(type) {
		case clustertest.CounterInc:
			name = in.Name
		case clustertest.CounterGet:
			name = in.Name
		}
		l := incs[name]
		// The increments called before op returned.
		n := sort.Search(len(l), func(i int) bool { return l[i].call >= op.Return })
		var sum int64
		if n > 0 {
			sum = l[n-1].delta
		}
		if got > sum && len(errs) < 5 {
			errs = append(errs, fmt.Errorf("%v answered %d, above the %d increments called before it returned", op.Input, got, sum))
		}
	}
	return errs
}

// The bound of a lossy counter: a read that saw an increment later lost
// with its primary, and the increment's retry that ran it again, pass
// (seed 6 of TestCounterNemesisAsyncBackups ran into this: both models
// with one effect per call reject it); an increment counted twice is
// flagged.
func TestCounterAnswersAboveIncrements(t *testing.T) {
	inc := func(client int, call, ret, got int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: clustertest.CounterInc{Name: "c", Delta: 1}, Call: call, Output: got, Return: ret}
	}
	get := func(client int, call, ret, got int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: clustertest.CounterGet{Name: "c"}, Call: call, Output: got, Return: ret}
	}
	lostThenRetried := []porcupine.Operation{
		inc(0, 0, 10, 1),
		inc(1, 20, 90, 3), // ran (2), lost with its primary, ran again on its retry (3)
		get(2, 30, 40, 2), // saw its first run
		get(2, 50, 60, 1), // the first run lost
		inc(3, 70, 80, 2),
	}
	if errs := counterAnswersAboveIncrements(lostThenRetried); errs != nil {
		t.Errorf("a lost increment run again: %v", errs)
	}
	for name, m := range map[string]clustertest.Model{"CounterModel": clustertest.CounterModel, "CounterSplitModel": clustertest.CounterSplitModel} {
		if clustertest.Check(context.Background(), m, lostThenRetried) == nil {
			t.Errorf("%s accepted a call with two effects; the comment above is wrong", name)
		}
	}
	countedTwice := []porcupine.Operation{
		inc(0, 0, 10, 1),
		inc(1, 20, 30, 3), // one call, counted twice
		get(2, 40, 50, 3),
	}
	if errs := counterAnswersAboveIncrements(countedTwice); len(errs) != 2 {
		t.Errorf("an increment counted twice: %v; want the inc and the get flagged", errs)
	}
}
