package migration

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// planCase is one scenario of a testdata/plan file:
//
//	# comment
//	count: 5
//	current: a a a b -     (owners of partitions 0.., "-" for none; optional)
//	members: a b c         (the targets, oldest first)
//	dead: x                (owners that are gone; optional)
//	----
//	<expected output>
//
// An owner named in current that is neither in members nor dead is alive
// and leaving. Cases are separated by a blank line.
type planCase struct {
	count   int
	current []string
	members []string
	dead    map[string]bool
}

func (c *planCase) alive(id string) bool { return id != "" && !c.dead[id] }

func parsePlanCase(t *testing.T, path string, s scenario) *planCase {
	t.Helper()
	c := &planCase{dead: map[string]bool{}}
	for _, kv := range s.keyvals {
		fields := strings.Fields(kv.val)
		switch kv.key {
		case "count":
			var err error
			if c.count, err = strconv.Atoi(strings.TrimSpace(kv.val)); err != nil {
				t.Fatalf("%s:%d: %v", path, kv.line, err)
			}
		case "current":
			c.current = dashless(fields)
		case "members":
			c.members = fields
		case "dead":
			for _, d := range fields {
				c.dead[d] = true
			}
		default:
			t.Fatalf("%s:%d: unknown key %q", path, kv.line, kv.key)
		}
	}
	if c.count <= 0 || len(c.members) == 0 {
		t.Fatalf("%s:%d: a case needs count > 0 and members", path, s.line)
	}
	for _, m := range c.members {
		if c.dead[m] {
			t.Fatalf("%s:%d: member %s is listed dead", path, s.line, m)
		}
	}
	return c
}

// formatPlan renders Plan's result in the golden form.
func formatPlan(c *planCase, target []string, moves []Move, orphans []int) []string {
	var out []string
	out = append(out, "target: "+strings.Join(dashes(target), " "))
	if len(moves) == 0 {
		out = append(out, "moves: none")
	} else {
		out = append(out, "moves:")
		for _, mv := range moves {
			out = append(out, fmt.Sprintf("  %d: %s -> %s", mv.Partition, mv.Source, mv.Destination))
		}
	}
	if len(orphans) == 0 {
		out = append(out, "orphans: none")
	} else {
		ps := make([]string, len(orphans))
		for i, p := range orphans {
			ps[i] = strconv.Itoa(p)
		}
		out = append(out, "orphans: "+strings.Join(ps, " "))
	}
	counts := Counts(target)
	cs := make([]string, 0, len(c.members))
	for _, m := range c.members {
		cs = append(cs, fmt.Sprintf("%s=%d", m, counts[m]))
	}
	out = append(out, "counts: "+strings.Join(cs, " "))
	return out
}

func dashes(owners []string) []string {
	out := make([]string, len(owners))
	for i, o := range owners {
		out[i] = o
		if o == "" {
			out[i] = "-"
		}
	}
	return out
}

func TestPlanData(t *testing.T) {
	testScenarios(t, "plan", "Plan output differs", parsePlanCase,
		func(t *testing.T, path string, s scenario, c *planCase) []string {
			target, moves, orphans := Plan(c.current, c.members, c.count, c.alive)
			// Whatever the golden file says, the invariants hold.
			checkPlan(t, fmt.Sprintf("%s:%d", path, s.line), c.current, c.members, c.count, c.alive, target, moves, orphans)
			return formatPlan(c, target, moves, orphans)
		})
}

// checkPlan verifies the invariants of a Plan result.
func checkPlan(t *testing.T, name string, current, members []string, count int, alive func(string) bool,
	target []string, moves []Move, orphans []int) {
	t.Helper()
	cur := func(p int) string {
		if p < len(current) {
			return current[p]
		}
		return ""
	}
	if len(target) != count {
		t.Fatalf("%s: target has %d partitions, want %d", name, len(target), count)
	}
	// Balanced: every member floor or ceil, every partition owned by a
	// member.
	isMember := make(map[string]bool, len(members))
	for _, m := range members {
		isMember[m] = true
	}
	counts := Counts(target)
	lo, hi := count/len(members), (count+len(members)-1)/len(members)
	for p, o := range target {
		if !isMember[o] {
			t.Fatalf("%s: target owner of %d is %q, not a member %v", name, p, o, members)
		}
	}
	for _, m := range members {
		if c := counts[m]; c < lo || c > hi {
			t.Fatalf("%s: member %s gets %d partitions, want %d..%d (target %v)", name, m, c, lo, hi, target)
		}
	}
	// Moves: from the alive current owner to the target owner, in
	// ascending partition order, at most one per partition.
	covered := make(map[int]string)
	for i, mv := range moves {
		if i > 0 && moves[i-1].Partition >= mv.Partition {
			t.Fatalf("%s: moves not in ascending partition order: %v", name, moves)
		}
		if mv.Partition < 0 || mv.Partition >= count {
			t.Fatalf("%s: move %+v out of range", name, mv)
		}
		if mv.Source == "" || !alive(mv.Source) {
			t.Fatalf("%s: move %+v: source is not alive", name, mv)
		}
		if cur(mv.Partition) != mv.Source {
			t.Fatalf("%s: move %+v: source does not own it (owner %q)", name, mv, cur(mv.Partition))
		}
		if mv.Destination != target[mv.Partition] || mv.Destination == mv.Source {
			t.Fatalf("%s: move %+v: destination is not the new target owner %q", name, mv, target[mv.Partition])
		}
		covered[mv.Partition] = "move"
	}
	// Orphans: no live current owner.
	for i, p := range orphans {
		if i > 0 && orphans[i-1] >= p {
			t.Fatalf("%s: orphans not ascending: %v", name, orphans)
		}
		if o := cur(p); o != "" && alive(o) {
			t.Fatalf("%s: orphan %d has the live owner %s", name, p, o)
		}
		if covered[p] != "" {
			t.Fatalf("%s: partition %d is both moved and orphaned", name, p)
		}
		covered[p] = "orphan"
	}
	// Moves and orphans exactly cover the partitions that change owner
	// (a dead owner always changes: it is never a member).
	for p := 0; p < count; p++ {
		changes := cur(p) != target[p] || cur(p) == "" || !alive(cur(p))
		if changes != (covered[p] != "") {
			t.Fatalf("%s: partition %d: owner %q -> %q, but covered as %q", name, p, cur(p), target[p], covered[p])
		}
	}
	// Fewest moves: a live member keeps min(held, quota) partitions with
	// the ceil quotas going to the biggest holders; a leaving member keeps
	// none.
	held := make(map[string]int)
	for p := 0; p < count; p++ {
		if o := cur(p); o != "" && alive(o) {
			held[o]++
		}
	}
	order := slices.Clone(members)
	sort.SliceStable(order, func(i, j int) bool { return held[order[i]] > held[order[j]] })
	minMoves := 0
	for o, h := range held {
		if !isMember[o] {
			minMoves += h
		}
	}
	for i, m := range order {
		q := count / len(members)
		if i < count%len(members) {
			q++
		}
		minMoves += max(0, held[m]-q)
	}
	if len(moves) != minMoves {
		t.Fatalf("%s: %d moves, the fewest possible is %d (moves %v)", name, len(moves), minMoves, moves)
	}
}

// randomScenario draws current owners over a pool of IDs, some of which
// are members, some dead, the rest alive and leaving.
func randomScenario(r *rand.Rand) (current, members []string, count int, dead map[string]bool) {
	pool := make([]string, 1+r.IntN(8))
	for i := range pool {
		pool[i] = fmt.Sprintf("m%d", i)
	}
	r.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	nm := 1 + r.IntN(len(pool))
	members = pool[:nm]
	dead = make(map[string]bool)
	for _, id := range pool[nm:] {
		if r.IntN(2) == 0 {
			dead[id] = true
		}
	}
	count = 1 + r.IntN(48)
	switch r.IntN(4) {
	case 0: // no table yet
	case 1: // a table shorter than count
		current = make([]string, r.IntN(count))
	default:
		current = make([]string, count)
	}
	for p := range current {
		if r.IntN(10) > 0 {
			current[p] = pool[r.IntN(len(pool))]
		}
	}
	return current, members, count, dead
}

func TestPlanProperties(t *testing.T) {
	for seed := uint64(1); seed <= 2000; seed++ {
		r := rand.New(rand.NewPCG(seed, 0x5eed))
		current, members, count, dead := randomScenario(r)
		alive := func(id string) bool { return id != "" && !dead[id] }
		name := fmt.Sprintf("seed %d: count %d current %v members %v dead %v", seed, count, dashes(current), members, dead)

		before := slices.Clone(current)
		target, moves, orphans := Plan(current, members, count, alive)
		if !slices.Equal(before, current) {
			t.Fatalf("%s: Plan modified current", name)
		}
		checkPlan(t, name, current, members, count, alive, target, moves, orphans)

		// Deterministic.
		t2, m2, o2 := Plan(current, members, count, alive)
		if !slices.Equal(target, t2) || !slices.Equal(moves, m2) || !slices.Equal(orphans, o2) {
			t.Fatalf("%s: Plan is not deterministic", name)
		}
		// Reaching the target leaves nothing to do.
		t3, m3, o3 := Plan(target, members, count, alive)
		if len(m3) != 0 || len(o3) != 0 || !slices.Equal(t3, target) {
			t.Fatalf("%s: re-planning the target gives moves %v orphans %v", name, m3, o3)
		}
	}
}

// A table already balanced over the members, all alive, yields no moves
// and no orphans, and the target is the table itself.
func TestPlanBalancedIsNoOp(t *testing.T) {
	for seed := uint64(1); seed <= 1000; seed++ {
		r := rand.New(rand.NewPCG(seed, 0xba1))
		n := 1 + r.IntN(9)
		members := make([]string, n)
		for i := range members {
			members[i] = fmt.Sprintf("m%d", i)
		}
		count := 1 + r.IntN(64)
		// Random floor/ceil quotas, dealt to random partitions.
		extra := r.Perm(n)[:count%n]
		var owners []string
		for i, m := range members {
			q := count / n
			if slices.Contains(extra, i) {
				q++
			}
			for range q {
				owners = append(owners, m)
			}
		}
		r.Shuffle(len(owners), func(i, j int) { owners[i], owners[j] = owners[j], owners[i] })
		// Other members may be dead: they own nothing.
		alive := func(id string) bool { return id != "x" }
		target, moves, orphans := Plan(owners, members, count, alive)
		if len(moves) != 0 || len(orphans) != 0 || !slices.Equal(target, owners) {
			t.Fatalf("seed %d: balanced %v over %v: target %v moves %v orphans %v", seed, owners, members, target, moves, orphans)
		}
	}
}

// A dead member's partitions are orphaned and, when the survivors are
// balanced among themselves, nothing moves between survivors.
func TestPlanDeathMovesNothing(t *testing.T) {
	for seed := uint64(1); seed <= 1000; seed++ {
		r := rand.New(rand.NewPCG(seed, 0xdead))
		n := 2 + r.IntN(8)
		all := make([]string, n)
		for i := range all {
			all[i] = fmt.Sprintf("m%d", i)
		}
		count := n + r.IntN(64)
		// Balanced over all, by round-robin from a random start.
		start := r.IntN(n)
		owners := make([]string, count)
		for p := range owners {
			owners[p] = all[(start+p)%n]
		}
		victim := all[r.IntN(n)]
		var members []string
		for _, m := range all {
			if m != victim {
				members = append(members, m)
			}
		}
		alive := func(id string) bool { return id != victim }
		target, moves, orphans := Plan(owners, members, count, alive)
		checkPlan(t, fmt.Sprintf("seed %d", seed), owners, members, count, alive, target, moves, orphans)
		if len(moves) != 0 {
			t.Fatalf("seed %d: %s died: survivors move %v", seed, victim, moves)
		}
		if len(orphans) != Counts(owners)[victim] {
			t.Fatalf("seed %d: %d orphans, %s owned %d", seed, len(orphans), victim, Counts(owners)[victim])
		}
	}
}

// Plan tolerates bad member lists (regression test).
func TestPlanBadMembers(t *testing.T) {
	alive := func(string) bool { return true }
	// No members: Plan returns moves to the member "".
	if _, moves, _ := Plan([]string{"a", "a"}, nil, 2, alive); len(moves) != 0 {
		t.Errorf("no members: moves %+v (destination \"\")", moves)
	}
	// A member listed twice: partition.Rebalance gives it one quota and
	// never places the rest, looping for ever.
	done := make(chan struct{})
	go func() {
		defer close(done)
		Plan(nil, []string{"a", "a"}, 3, alive)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Errorf("Plan with a member listed twice did not return (the goroutine spins until the process exits)")
	}
}
