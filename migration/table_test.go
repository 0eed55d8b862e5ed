package migration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/partita-go/partita/partition"
)

// tableCase is one scenario of a testdata/table file: a table, the
// member list, and the Manager's table changes run one after the other
// on a fake engine whose members all answer (in sync at version 0 unless
// syncing says otherwise, every incoming replica caught up):
//
//	# comment
//	backups: 2
//	members: b c d        (alive, oldest first; the rest of the table's are dead)
//	leaving: d            (alive members leaving; optional)
//	syncing: c:0          (member:partition replicas waiting for a copy; optional)
//	0: a b c              (partition 0: owner, backups; "-" for none)
//	1: b c d > - a        (... and after ">", the incoming replicas)
//	do: repair            (repair | settle | round | kill X | join X | leave X; one a line)
//	----
//	<expected output: each step, then the table after it>
//
// Every table the Manager installs must be valid (Validate: no member
// holds two replicas of a partition), whatever the golden file says.
type tableCase struct {
	backups int
	members []string
	leaving []string
	syncing map[string][]int
	owners  []string
	table   [][2][]string // per partition: backups, incoming
	steps   []string
}

func parseTableCase(t *testing.T, path string, s scenario) *tableCase {
	t.Helper()
	c := &tableCase{syncing: map[string][]int{}}
	for _, kv := range s.keyvals {
		n, fields := kv.line, strings.Fields(kv.val)
		if p, err := strconv.Atoi(kv.key); err == nil {
			if p != len(c.owners) || len(fields) == 0 {
				t.Fatalf("%s:%d: want partition %d: owner backups... [> incoming...]", path, n, len(c.owners))
			}
			ids := dashless(fields)
			var backups, incoming []string
			if k := slices.Index(fields, ">"); k >= 0 {
				backups, incoming = ids[1:k], ids[k+1:]
			} else {
				backups = ids[1:]
			}
			c.owners = append(c.owners, ids[0])
			c.table = append(c.table, [2][]string{backups, incoming})
			continue
		}
		var err error
		switch kv.key {
		case "backups":
			if c.backups, err = strconv.Atoi(strings.TrimSpace(kv.val)); err != nil {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
		case "members":
			c.members = fields
		case "leaving":
			c.leaving = fields
		case "syncing":
			for _, f := range fields {
				id, ps, _ := strings.Cut(f, ":")
				p, err := strconv.Atoi(ps)
				if err != nil {
					t.Fatalf("%s:%d: syncing %q: want member:partition", path, n, f)
				}
				c.syncing[id] = append(c.syncing[id], p)
			}
		case "do":
			c.steps = append(c.steps, strings.TrimSpace(kv.val))
		default:
			t.Fatalf("%s:%d: unknown key %q", path, n, kv.key)
		}
	}
	if len(c.owners) == 0 || len(c.members) == 0 || len(c.steps) == 0 {
		t.Fatalf("%s:%d: a case needs partitions, members and steps", path, s.line)
	}
	return c
}

// dashless turns "-" into "".
func dashless(ids []string) []string {
	out := slices.Clone(ids)
	for i, id := range out {
		if id == "-" {
			out[i] = ""
		}
	}
	return out
}

// fake returns the engine the case starts from.
func (c *tableCase) fake() *fakeEngine {
	f := newFake(strings.Join(dashes(c.owners), " "), c.members...)
	for _, id := range c.leaving {
		f.leaving[id] = true
	}
	tab := f.table
	tab.Backups = make([][]string, len(c.owners))
	for p, bi := range c.table {
		tab.Backups[p] = bi[0]
		if len(bi[1]) > 0 {
			if tab.Incoming == nil {
				tab.Incoming = make([][]string, len(c.owners))
			}
			tab.Incoming[p] = bi[1]
		}
		for _, id := range append(slices.Clone(bi[0]), bi[1]...) {
			if id != "" {
				tab.Members[id] = "addr-" + id
			}
		}
	}
	if tab.BackupCount() == 0 {
		tab.Backups = nil
	}
	if len(c.syncing) > 0 {
		f.onStatus = func(member string) ([]int64, []bool, error) {
			syncing := make([]bool, f.count)
			for _, p := range c.syncing[member] {
				syncing[p] = true
			}
			return make([]int64, f.count), syncing, nil
		}
	}
	return f
}

// formatTable renders t's replicas, a partition a line, in the form of
// the testdata/table files.
func formatTable(t *partition.Table) string {
	var b strings.Builder
	for p := range t.Owners {
		fmt.Fprintf(&b, "%d: %s", p, strings.Join(dashes(append([]string{t.Owners[p]}, t.BackupsOf(p)...)), " "))
		if slices.ContainsFunc(t.IncomingOf(p), func(id string) bool { return id != "" }) {
			fmt.Fprintf(&b, " > %s", strings.Join(dashes(t.IncomingOf(p)), " "))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// step runs one step of a case on m and f (see tableCase).
func step(t *testing.T, m *Manager, f *fakeEngine, s string) {
	t.Helper()
	verb, arg, _ := strings.Cut(s, " ")
	switch verb {
	case "repair":
		var ids []string
		for _, mb := range f.Targets() {
			ids = append(ids, mb.ID)
		}
		m.repair(ids)
	case "settle":
		m.settleIncoming(context.Background())
	case "round":
		m.round(context.Background())
	case "kill":
		f.kill(arg)
	case "join":
		f.join(arg)
	case "leave":
		f.mu.Lock()
		f.leaving[arg] = true
		f.mu.Unlock()
	default:
		t.Fatalf("unknown step %q", s)
	}
}

func TestTableData(t *testing.T) {
	testScenarios(t, "table", "tables differ", parseTableCase,
		func(t *testing.T, path string, s scenario, c *tableCase) []string {
			f := c.fake()
			if err := f.table.Validate(); err != nil {
				t.Fatalf("%s:%d: the scenario's table is not valid: %v", path, s.line, err)
			}
			m := New(f, Config{Count: f.count, Backups: c.backups})
			var got []string
			for _, st := range c.steps {
				n := len(f.calls())
				step(t, m, f, st)
				got = append(got, "> "+st)
				if st == "repair" || st == "settle" || st == "round" {
					got = append(got, strings.Split(strings.TrimSuffix(formatTable(f.current()), "\n"), "\n")...)
				}
				for _, cl := range f.calls()[n:] {
					if cl.op == "lost" {
						got = append(got, fmt.Sprintf("lost: %v", cl.lost))
					}
				}
			}
			wantValidTables(t, f)
			return got
		})
}

// checkTable verifies what every table the Manager made after a repair
// holds, with every member answering: it is valid (no member holds two
// replicas of a partition), every partition has a live owner, and its
// backup slots, min(backups, targets-1) of them, name live members, as
// do its incoming replicas.
func checkTable(t *testing.T, name string, f *fakeEngine, backups int) {
	t.Helper()
	tab := f.current()
	if err := tab.Validate(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, formatTable(tab))
	}
	targets := len(f.Targets())
	b := min(backups, targets-1, partition.MaxBackups)
	for p, o := range tab.Owners {
		if !f.Alive(o) {
			t.Fatalf("%s: partition %d has no live owner (%q)\n%s", name, p, o, formatTable(tab))
		}
		if len(tab.BackupsOf(p)) != max(b, 0) {
			t.Fatalf("%s: partition %d has %d backup slots, want %d\n%s", name, p, len(tab.BackupsOf(p)), b, formatTable(tab))
		}
		for _, id := range append(slices.Clone(tab.BackupsOf(p)), tab.IncomingOf(p)...) {
			if id != "" && !f.Alive(id) {
				t.Fatalf("%s: partition %d names the dead member %s\n%s", name, p, id, formatTable(tab))
			}
		}
	}
}

// Whatever members die, join and leave, and whether incoming replicas
// catch up, no table the Manager makes lists a member twice among a
// partition's replicas (serving or incoming). Random schedules of
// member changes, repairs, settles and whole rounds (moves included).
func TestTablesNeverListAMemberTwice(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 0xd0b))
		backups := 1 + r.IntN(3)
		count := 1 + r.IntN(24)
		next := 0
		newID := func() string { next++; return fmt.Sprintf("m%d", next-1) }
		var members []string
		for range 1 + r.IntN(5) {
			members = append(members, newID())
		}
		f := newFakeEmpty(count, members...)
		f.caughtUp = func(int, string) bool { return r.IntN(3) > 0 } // under f.mu
		m := New(f, Config{Count: count, Backups: backups, Parallel: 1})
		var log []string
		name := func() string {
			return fmt.Sprintf("seed %d (count %d, backups %d) after %s", seed, count, backups, strings.Join(log, ", "))
		}
		act := func(s string) {
			log = append(log, s)
			step(t, m, f, s)
		}
		act("round")
		for range 30 {
			alive := f.Targets()
			switch k := r.IntN(10); {
			case k < 2 && len(alive) > 1:
				act("kill " + alive[r.IntN(len(alive))].ID)
			case k < 4 && len(alive) < 7:
				act("join " + newID())
			case k < 5 && len(alive) > 1:
				act("leave " + alive[r.IntN(len(alive))].ID)
			case k < 7:
				act("settle")
			case k < 8:
				act("round")
			}
			act("repair")
			checkTable(t, name(), f, backups)
		}
		wantValidTables(t, f)
		if t.Failed() {
			return
		}
	}
}
