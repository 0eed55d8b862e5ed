package clustertest

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Flags of the nemesis tests (registered by this package, as
// net/http/httptest registers httptest.serve): replay one seed, run many,
// or run longer.
var (
	nemesisSeed     = flag.Uint64("nemesis.seed", 0, "replay the nemesis schedule of this seed (0: the test's own seeds)")
	nemesisSeeds    = flag.String("nemesis.seeds", "", "nemesis seeds to run: a count N (seeds 1..N) or a list such as 3,7,9 (empty: the test's own)")
	nemesisDuration = flag.Duration("nemesis.duration", 0, "length of each nemesis schedule (0: the test's own)")
)

// NemesisSeeds returns the seeds a nemesis test runs: the one of
// -nemesis.seed, else those of -nemesis.seeds, else defaults.
func NemesisSeeds(defaults ...uint64) []uint64 {
	if *nemesisSeed != 0 {
		return []uint64{*nemesisSeed}
	}
	s := strings.TrimSpace(*nemesisSeeds)
	if s == "" {
		return defaults
	}
	if !strings.Contains(s, ",") {
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			out := make([]uint64, n)
			for i := range out {
				out[i] = uint64(i + 1)
			}
			return out
		}
	}
	var out []uint64
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil {
			panic(fmt.Sprintf("clustertest: -nemesis.seeds=%q: %v", s, err))
		}
		out = append(out, n)
	}
	return out
}

// NemesisDuration returns the length of a nemesis schedule: that of
// -nemesis.duration, else def.
func NemesisDuration(def time.Duration) time.Duration {
	if *nemesisDuration > 0 {
		return *nemesisDuration
	}
	return def
}

// NemesisKind names a fault of a nemesis schedule.
type NemesisKind string

// The faults a nemesis draws from.
const (
	// NemesisKill kills a member: no goodbye, the others find out by
	// failure detection (Cluster.Kill).
	NemesisKill NemesisKind = "kill"
	// NemesisKillJoin kills a member and starts a new one at the same
	// time, before the death is declared.
	NemesisKillJoin NemesisKind = "kill+join"
	// NemesisLeave shuts a member down gracefully (Cluster.Shutdown).
	NemesisLeave NemesisKind = "leave"
	// NemesisJoin starts a new member (Cluster.AddMember).
	NemesisJoin NemesisKind = "join"
	// NemesisPause freezes a whole member for 50 to 300 ms, as a
	// stop-the-world GC pause would (Cluster.Pause): its memberlist, its
	// operation connections and its executors all stop, then run on. It
	// is shorter than failure detection (about a second with clustertest's
	// preset), so the member is at most suspected, never declared dead.
	NemesisPause NemesisKind = "pause"
	// NemesisFreeze freezes a whole member for 1.5 to 3 s, as a stopped
	// VM would: past failure detection, so the others declare it dead and
	// go on without it, and it rejoins as a merge of one once it runs
	// again. Meanwhile it takes itself for a member, and serves what it
	// is asked by its own stale view: to the cluster it is a split of one
	// member, so it is not among DefaultNemesisKinds (see NemesisSplit).
	NemesisFreeze NemesisKind = "freeze"
	// NemesisDrop drops the operation or backup messages from one member
	// to another for a while: their senders see a broken connection.
	NemesisDrop NemesisKind = "drop"
	// NemesisDelay delays the operation or backup messages from one
	// member to another for a while, so that later ones overtake them.
	NemesisDelay NemesisKind = "delay"
	// NemesisLoseAnswers drops the answers a member gets from another for
	// a while: the operations ran, their callers retry them.
	NemesisLoseAnswers NemesisKind = "lose-answers"
	// NemesisSplit splits the network in two, then heals it and waits for
	// the sides to merge (Cluster.Split, Heal, WaitMerged).
	NemesisSplit NemesisKind = "split"
)

// NemesisKinds are all the faults; DefaultNemesisKinds all but the split
// and the freeze, which a service that is not linearizable across a split
// (one without split-brain protection) runs on its own.
var (
	NemesisKinds = []NemesisKind{NemesisKill, NemesisKillJoin, NemesisLeave, NemesisJoin, NemesisPause,
		NemesisDrop, NemesisDelay, NemesisLoseAnswers, NemesisSplit, NemesisFreeze}
	DefaultNemesisKinds = []NemesisKind{NemesisKill, NemesisKillJoin, NemesisLeave, NemesisJoin, NemesisPause,
		NemesisDrop, NemesisDelay, NemesisLoseAnswers}
)

// Nemesis configures the faults of a schedule.
type Nemesis struct {
	// Kinds are the faults drawn from; nil: DefaultNemesisKinds.
	Kinds []NemesisKind
	// Members is the number of members when the schedule starts.
	Members int
	// MinMembers and MaxMembers bound the members that kills, leaves and
	// joins leave running (defaults: 2 and Members+2).
	MinMembers, MaxMembers int
	// Service is the name of the service whose operations message faults
	// drop and delay (with the backups of every service); "": every
	// request, the engine's too.
	Service string
}

// NemesisStep is one fault of a schedule.
type NemesisStep struct {
	// At is when the step starts, from the start of the schedule: a step
	// starts at At or once the one before it is done, whichever is later.
	At   time.Duration
	Kind NemesisKind
	// Member is the member the fault strikes, and Peer the other end of a
	// message fault, as indexes into Cluster.Members when the step starts.
	Member, Peer int
	// Backups makes a message fault strike backups instead of
	// operations.
	Backups bool
	// For is how long a pause, message fault or split lasts.
	For time.Duration
	// Delay is the delay of NemesisDelay.
	Delay time.Duration
	// Side is the members of one side of a split; the rest form the
	// other.
	Side []int
}

func (s NemesisStep) String() string {
	what := "operations"
	if s.Backups {
		what = "backups"
	}
	switch s.Kind {
	case NemesisKill, NemesisLeave, NemesisKillJoin:
		return fmt.Sprintf("%v %s member %d", s.At, s.Kind, s.Member)
	case NemesisJoin:
		return fmt.Sprintf("%v join", s.At)
	case NemesisPause:
		return fmt.Sprintf("%v pause member %d for %v", s.At, s.Member, s.For)
	case NemesisFreeze:
		return fmt.Sprintf("%v freeze member %d for %v", s.At, s.Member, s.For)
	case NemesisDrop:
		return fmt.Sprintf("%v drop %s %d->%d for %v", s.At, what, s.Member, s.Peer, s.For)
	case NemesisDelay:
		return fmt.Sprintf("%v delay %s %d->%d by %v for %v", s.At, what, s.Member, s.Peer, s.Delay, s.For)
	case NemesisLoseAnswers:
		return fmt.Sprintf("%v lose answers %d<-%d for %v", s.At, s.Member, s.Peer, s.For)
	case NemesisSplit:
		return fmt.Sprintf("%v split %v from the rest for %v", s.At, s.Side, s.For)
	}
	return fmt.Sprintf("%v %s", s.At, s.Kind)
}

// NemesisSchedule is a seeded fault schedule (NewNemesisSchedule).
type NemesisSchedule struct {
	Seed     uint64
	Duration time.Duration
	// Service is Nemesis.Service: the service whose operations message
	// faults strike.
	Service string
	Steps   []NemesisStep
}

func (s NemesisSchedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nemesis seed %d (replay: -nemesis.seed=%d), %v, %d steps:", s.Seed, s.Seed, s.Duration, len(s.Steps))
	for _, st := range s.Steps {
		b.WriteString("\n\t" + st.String())
	}
	return b.String()
}

// NewNemesisSchedule draws the faults of a schedule of length d from
// seed: the same seed and config give the same schedule. The number of
// members each step leaves is tracked as the schedule is drawn, so that
// a step's member indexes are valid when the cluster ran every step
// before it.
func NewNemesisSchedule(seed uint64, d time.Duration, n Nemesis) NemesisSchedule {
	kinds := n.Kinds
	if kinds == nil {
		kinds = DefaultNemesisKinds
	}
	minM, maxM := cmpOr(n.MinMembers, 2), cmpOr(n.MaxMembers, n.Members+2)
	r := rand.New(rand.NewPCG(seed, 0x6e656d65736973)) // "nemesis"
	s := NemesisSchedule{Seed: seed, Duration: d, Service: n.Service}
	members := n.Members
	ms := func(lo, hi int) time.Duration { return time.Duration(lo+r.IntN(hi-lo+1)) * time.Millisecond }
	for at, misses := ms(100, 400), 0; at < d; misses++ {
		if misses > 100 { // no kind fits the members: let time pass
			at, misses = at+time.Second, 0
			continue
		}
		k := kinds[r.IntN(len(kinds))]
		st := NemesisStep{At: at, Kind: k}
		switch k {
		case NemesisKill, NemesisLeave:
			if members <= minM {
				continue // draw again
			}
			st.Member = r.IntN(members)
			members--
		case NemesisKillJoin:
			if members < max(minM, 2) {
				continue
			}
			st.Member = r.IntN(members)
		case NemesisJoin:
			if members >= maxM {
				continue
			}
			members++
		case NemesisPause:
			st.Member, st.For = r.IntN(members), ms(50, 300)
		case NemesisFreeze:
			st.Member, st.For = r.IntN(members), ms(1500, 3000)
		case NemesisDrop, NemesisDelay, NemesisLoseAnswers:
			if members < 2 {
				continue
			}
			st.Member = r.IntN(members)
			st.Peer = (st.Member + 1 + r.IntN(members-1)) % members
			st.Backups = k != NemesisLoseAnswers && r.IntN(2) == 0
			st.For = ms(100, 800)
			if k == NemesisDelay {
				st.Delay = ms(5, 100)
			}
		case NemesisSplit:
			if members < 3 {
				continue
			}
			perm := r.Perm(members)
			st.Side = perm[:1+r.IntN((members-1)/2)] // the smaller side
			slices.Sort(st.Side)
			st.For = ms(1000, 3000)
		}
		s.Steps = append(s.Steps, st)
		at, misses = at+st.For+ms(200, 800), 0
	}
	return s
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// RunNemesis runs schedule s on the cluster, step after step, logging
// each, until its last step or ctx ends: then it removes its faults,
// heals a split and returns. Before a kill or a leave it waits until the
// cluster is safe (every backup in place, see WaitClusterSafe), so that
// no more members are lost at once than the backups can make up for; it
// returns an error if that, or a merge after a split, takes longer than
// the cluster's timeout. Call it from the test's goroutine, while other
// goroutines load the cluster.
func (c *Cluster) RunNemesis(ctx context.Context, s NemesisSchedule) error {
	c.t.Helper()
	c.t.Log(s.String())
	start := time.Now()
	for _, st := range s.Steps {
		if wait := time.Until(start.Add(st.At)); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait): // spacing faults, as the schedule says
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		c.t.Logf("nemesis %d: at %v: %s", s.Seed, time.Since(start).Round(time.Millisecond), st)
		if err := c.runStep(ctx, s.Service, st); err != nil {
			return fmt.Errorf("nemesis seed %d: step %q: %w", s.Seed, st, err)
		}
	}
	return nil
}

func (c *Cluster) runStep(ctx context.Context, service string, st NemesisStep) error {
	ms := c.Members()
	if st.Member >= len(ms) || st.Peer >= len(ms) {
		return fmt.Errorf("%d members: the cluster did not follow the schedule", len(ms))
	}
	hold := func(f ...*Fault) {
		var removes []func()
		for _, fp := range f {
			removes = append(removes, c.AddFault(fp))
		}
		select { // the fault's length, as the schedule says
		case <-ctx.Done():
		case <-time.After(st.For):
		}
		for _, rm := range removes {
			rm()
		}
	}
	kind := ""
	if service != "" {
		kind = service + "/"
	}
	if st.Backups {
		kind = "backup/"
	}
	switch st.Kind {
	case NemesisKill, NemesisKillJoin, NemesisLeave:
		if err := c.waitSafe(ctx); err != nil {
			return err
		}
		switch st.Kind {
		case NemesisLeave:
			c.Shutdown(st.Member)
		case NemesisKill:
			c.Kill(st.Member)
		case NemesisKillJoin:
			c.KillJoin(st.Member)
		}
	case NemesisJoin:
		c.AddMember()
	case NemesisPause, NemesisFreeze:
		resume := ms[st.Member].Pause()
		hold()
		resume()
		if st.Kind == NemesisFreeze {
			return c.waitSafe(ctx) // it rejoins as a merge of one
		}
	case NemesisDrop:
		hold(&Fault{From: ms[st.Member].ID(), To: ms[st.Peer].ID(), Kind: kind, Drop: true})
	case NemesisDelay:
		hold(&Fault{From: ms[st.Member].ID(), To: ms[st.Peer].ID(), Kind: kind, Delay: st.Delay})
	case NemesisLoseAnswers:
		hold(&Fault{From: ms[st.Member].ID(), To: ms[st.Peer].ID(), Kind: kind, Responses: true, Drop: true})
	case NemesisSplit:
		c.Split(st.Side)
		hold()
		c.Heal()
		mctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		return c.WaitMerged(mctx)
	}
	return nil
}

// waitSafe waits until the cluster is stable and safe, or the cluster's
// timeout passes.
func (c *Cluster) waitSafe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	for {
		err := Stable(c.Members()...)
		if err == nil {
			var reason string
			if reason, err = c.Members()[0].UnsafeReason(ctx); err == nil && reason != "" {
				err = fmt.Errorf("cluster not safe: %s", reason)
			}
		}
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a safe cluster: %w (%w)", err, ctx.Err())
		case <-time.After(20 * time.Millisecond): // polling interval
		}
	}
}
