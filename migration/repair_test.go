package migration

import (
	"errors"
	"slices"
	"testing"
)

// withBackups gives the fake's table one backup per partition ("-" for
// none) and returns f.
func withBackups(f *fakeEngine, backups ...string) *fakeEngine {
	f.table.Backups = make([][]string, f.count)
	for p, b := range backups {
		if b == "-" {
			b = ""
		} else {
			f.table.Members[b] = "addr-" + b
		}
		f.table.Backups[p] = []string{b}
	}
	return f
}

func lostCalls(f *fakeEngine) [][]int {
	var out [][]int
	for _, c := range f.calls() {
		if c.op == "lost" {
			out = append(out, c.lost)
		}
	}
	return out
}

// Under CPU starvation memberlist declares members dead that still run,
// and they rejoin a moment later (issue 18: a loaded cluster with no kill
// reported 160 partitions lost). A partition whose owner and backup were
// both declared dead while they run is neither reported lost nor given
// away empty: they answer that they hold it in sync, and it waits for
// them; once they rejoin, nothing changed for it. Killed for real, the
// same members' partition is reported lost.
func TestRepairWaitsForMembersDeclaredDeadThatStillRun(t *testing.T) {
	for _, running := range []bool{true, false} {
		// p0 and p1 live on b and c only; p2 on a (master) backed up on b;
		// p3 on c backed up on a.
		f := withBackups(newFake("b c a c", "a", "b", "c"), "c", "b", "b", "a")
		f.kill("b")
		f.kill("c")
		f.running = map[string]bool{"b": running, "c": running}
		m := New(f, Config{Count: f.count, Backups: 1})
		m.repair([]string{"a"})
		tab := f.current()
		if !running {
			if got := lostCalls(f); len(got) != 1 || !slices.Equal(got[0], []int{0, 1}) {
				t.Fatalf("killed: lost %v, want [[0 1]]\n%s", got, f.dump())
			}
			if tab.Owners[0] != "a" || tab.Owners[1] != "a" {
				t.Fatalf("killed: owners %v, want p0 and p1 assigned to a", tab.Owners)
			}
			continue
		}
		if got := lostCalls(f); len(got) != 0 {
			t.Fatalf("declared dead while running: lost %v\n%s", got, f.dump())
		}
		if tab.Owners[0] != "b" || tab.Owners[1] != "c" {
			t.Fatalf("declared dead while running: owners %v, want p0 on b and p1 on c as before", tab.Owners)
		}
		if !slices.Equal(tab.BackupsOf(0), []string{"c"}) || !slices.Equal(tab.BackupsOf(1), []string{"b"}) {
			t.Fatalf("declared dead while running: backups %v, want p0's on c and p1's on b as before", tab.Backups)
		}
		// p3's backup a is alive and in sync: it is promoted as ever.
		if tab.Owners[3] != "a" {
			t.Fatalf("p3 owned by %q, want its backup a promoted", tab.Owners[3])
		}
		f.join("b")
		f.join("c")
		m.repair([]string{"a", "b", "c"})
		if got := lostCalls(f); len(got) != 0 {
			t.Fatalf("after they rejoined: lost %v\n%s", got, f.dump())
		}
		if tab := f.current(); tab.Owners[0] != "b" || tab.Owners[1] != "c" {
			t.Fatalf("after they rejoined: owners %v, want p0 on b and p1 on c", tab.Owners)
		}
	}
}

// A backup that is still syncing is not promoted (nor the partition
// reported lost) while the owner, declared dead, still runs and holds the
// partition in sync.
func TestRepairDoesNotPromoteSyncingBackupWhileOwnerRuns(t *testing.T) {
	f := withBackups(newFake("b a", "a", "b", "c"), "c", "c")
	f.onStatus = func(member string) ([]int64, []bool, error) {
		syncing := make([]bool, 2)
		syncing[0] = member == "c"
		return []int64{5, 5}, syncing, nil
	}
	f.kill("b")
	f.running = map[string]bool{"b": true}
	m := New(f, Config{Count: f.count, Backups: 1})
	m.repair([]string{"a", "c"})
	if got := lostCalls(f); len(got) != 0 {
		t.Fatalf("lost %v while the owner runs\n%s", got, f.dump())
	}
	if o := f.current().Owner(0); o != "b" {
		t.Fatalf("p0 owned by %q, want it to wait for b", o)
	}
	// b really dies: the syncing backup is the best left; the partition
	// is reported lost.
	f.mu.Lock()
	f.running = nil
	f.mu.Unlock()
	m.repair([]string{"a", "c"})
	if got := lostCalls(f); len(got) != 1 || !slices.Equal(got[0], []int{0}) {
		t.Fatalf("lost %v, want [[0]]\n%s", got, f.dump())
	}
	if o := f.current().Owner(0); o != "c" {
		t.Fatalf("p0 owned by %q, want c promoted", o)
	}
}

// A backup whose replica state cannot be read counts neither as in sync
// nor as syncing: the partition is not promoted blindly and not reported
// lost because of the failed question; it waits until the state is read.
func TestRepairWaitsForUnreadableBackupState(t *testing.T) {
	f := withBackups(newFake("b b", "a", "b", "c", "d"), "c", "-")
	f.table.Backups[0] = []string{"c", "d"}
	f.table.Members["d"] = "addr-d"
	fail := true
	f.onStatus = func(member string) ([]int64, []bool, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if member == "c" && fail {
			return nil, nil, errors.New("status timed out")
		}
		// d is still syncing p0; c, once it answers, holds it in sync.
		return []int64{7, 0}, []bool{member == "d", false}, nil
	}
	f.kill("b")
	m := New(f, Config{Count: f.count, Backups: 2})
	m.repair([]string{"a", "c", "d"})
	if got := lostCalls(f); len(got) != 1 || !slices.Equal(got[0], []int{1}) {
		t.Fatalf("lost %v, want only p1 (no replica left) while c's state is unknown\n%s", got, f.dump())
	}
	if o := f.current().Owner(0); o != "b" {
		t.Fatalf("p0 owned by %q while c's state is unknown, want it to wait", o)
	}
	f.mu.Lock()
	fail = false
	f.mu.Unlock()
	m.repair([]string{"a", "c", "d"})
	if got := lostCalls(f); len(got) != 1 {
		t.Fatalf("lost %v, want p0 not reported once c answered\n%s", got, f.dump())
	}
	if o := f.current().Owner(0); o != "c" {
		t.Fatalf("p0 owned by %q, want c (in sync) promoted", o)
	}
}
