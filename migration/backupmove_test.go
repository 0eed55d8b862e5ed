package migration

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
)

// A backup replica moves like a primary: the member taking it over is
// incoming until it caught up, and the old backup serves meanwhile. Here
// a joins' backups of a primary that is dead but not yet declared dead
// (a crashed process restarted at once) can never catch up; when the
// death is declared, the old, in-sync backups are promoted and nothing is
// reported lost.
func TestBackupsMoveOnlyOnceTheNewReplicaCaughtUp(t *testing.T) {
	// In this layout d is to take over the backups of a's partitions 9-11.
	f := newFake("b c b c b c b c a a a a", "a", "b", "c")
	var aDead atomic.Bool
	f.caughtUp = func(p int, member string) bool { return !aDead.Load() || f.table.Owner(p) != "a" } // under f.mu
	f.onPrepare = func(ctx context.Context, c call) error {
		if aDead.Load() && c.member == "a" {
			return errors.New("fake: a does not answer")
		}
		return nil
	}
	h := startManager(t, f, Config{Backups: 1})
	h.waitFor("backups assigned", func() bool { return f.current().BackupCount() == 1 && h.m.Idle() })
	before := f.current()

	aDead.Store(true)
	f.join("d")
	var waiting []int // a's partitions whose backup d takes over
	h.waitFor("d to take over backups of a's partitions", func() bool {
		cur := f.current()
		waiting = waiting[:0]
		for p := range cur.Owners {
			if cur.IsIncoming(p, "d") {
				if cur.Owner(p) != "a" {
					return false // still catching up elsewhere
				}
				waiting = append(waiting, p)
			}
		}
		return len(waiting) > 0
	})
	cur := f.current()
	for _, p := range waiting {
		if got, want := cur.BackupsOf(p)[0], before.BackupsOf(p)[0]; got != want {
			t.Fatalf("partition %d: backup %q before d caught up, want the in-sync %q", p, got, want)
		}
	}

	f.kill("a") // the death is declared
	h.waitFor("a's partitions promoted and no backup incoming", func() bool {
		cur := f.current()
		return !slices.Contains(cur.Owners, "a") && !cur.HasIncoming() && h.m.Idle()
	})
	cur = f.current()
	for _, p := range waiting {
		if got, want := cur.Owner(p), before.BackupsOf(p)[0]; got != want {
			t.Errorf("partition %d: owner %q after a died, want its in-sync backup %q", p, got, want)
		}
	}
	for _, c := range f.calls() {
		if c.op == "lost" {
			t.Errorf("partitions reported lost %v: every one had an in-sync backup", c.lost)
		}
	}
}

// moveBackups, table by table: what changes at once and what waits.
func TestMoveBackups(t *testing.T) {
	alive := func(id string) bool { return id != "dead" }
	for _, tc := range []struct {
		name           string
		owner          string
		cur, want      []string
		backups, incom []string // after
	}{
		{"unchanged", "a", []string{"b"}, []string{"b"}, []string{"b"}, nil},
		{"empty slot filled at once", "a", []string{""}, []string{"c"}, []string{"c"}, nil},
		{"dead backup replaced at once", "a", []string{"dead"}, []string{"c"}, []string{"c"}, nil},
		{"promoted backup's slot filled at once", "b", []string{"b"}, []string{"c"}, []string{"c"}, nil},
		{"live backup kept while the new one syncs", "a", []string{"b"}, []string{"c"}, []string{"b"}, []string{"c"}},
		{"only the moving one waits", "a", []string{"b", "c"}, []string{"b", "d"}, []string{"b", "c"}, []string{"", "d"}},
		{"fewer backups: at once", "a", []string{"b", "c"}, []string{"b"}, []string{"b"}, nil},
		// want is a set: a kept backup keeps its slot, wherever
		// RebalanceBackups lists it.
		{"kept backup keeps its slot", "a", []string{"b", "c"}, []string{"c", "d"}, []string{"b", "c"}, []string{"d", ""}},
		{"promoted backup's slot filled, the other kept", "b", []string{"", "c"}, []string{"c", "d"}, []string{"d", "c"}, nil},
		{"dead backup's slot filled, the other kept", "a", []string{"dead", "c"}, []string{"c", "d"}, []string{"d", "c"}, nil},
		{"a member listed twice keeps one slot", "a", []string{"c", "c"}, []string{"c", "d"}, []string{"c", "d"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := newFake(tc.owner).current()
			tab.Backups = [][]string{slices.Clone(tc.cur)}
			changed := moveBackups(tab, [][]string{tc.want}, alive, nil)
			if !slices.Equal(tab.BackupsOf(0), tc.backups) || !slices.Equal(tab.IncomingOf(0), tc.incom) {
				t.Errorf("backups %q incoming %q, want %q and %q", tab.BackupsOf(0), tab.IncomingOf(0), tc.backups, tc.incom)
			}
			if changed != (tc.name != "unchanged") {
				t.Errorf("changed = %v", changed)
			}
		})
	}
}

// Every partition keeps the same number of backup slots while some wait
// (keep): the table's wire form writes as many slots for every partition
// as the first has, so a waiting partition with more slots than the rest
// made Encode index past the others' slots, and one with fewer had the
// others' last backups dropped on the wire.
func TestMoveBackupsKeepsOneSlotCount(t *testing.T) {
	alive := func(string) bool { return true }
	for _, tc := range []struct {
		name    string
		want    [][]string
		backups [][]string // after
	}{
		// The members p0 waits for left the targets: one member is left,
		// and no backup.
		{"fewer backups while one waits", nil, [][]string{{"c"}, {""}, {""}}},
		// A member joined: two backups, p0 still waits with one.
		{"more backups while one waits", [][]string{{"x", "y"}, {"b", "d"}, {"b", "d"}}, [][]string{{"c", ""}, {"b", "d"}, {"b", "d"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := newFake("x a a").current()
			tab.Backups = [][]string{{"c"}, {"b"}, {"b"}}
			moveBackups(tab, tc.want, alive, []int{0})
			if !slices.EqualFunc(tab.Backups, tc.backups, slices.Equal[[]string]) {
				t.Errorf("backups %q, want %q", tab.Backups, tc.backups)
			}
			if err := tab.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

// A primary that does not answer (frozen, or dead and not yet declared
// so) is asked about its incoming backups once a round, not once per
// partition: a round must reach the next repair soon.
func TestSettleAsksAnUnansweringPrimaryOnceARound(t *testing.T) {
	f := newFake("a a a a b b", "a", "b", "c")
	tab := f.current()
	tab.Backups = [][]string{{"b"}, {"b"}, {"b"}, {"b"}, {"a"}, {"a"}}
	tab.Incoming = [][]string{{"c"}, {"c"}, {"c"}, {"c"}, nil, {"c"}}
	tab.Members["c"] = "addr-c"
	f.frozen = map[string]bool{"a": true}
	m := New(f, Config{Count: f.count, Backups: 1})
	m.settleIncoming(context.Background())
	if asked := f.caughtUpAsked["a"]; asked != 1 {
		t.Errorf("the unanswering primary of 4 moving backups was asked %d times in one round, want 1", asked)
	}
	if asked := f.caughtUpAsked["b"]; asked != 1 {
		t.Errorf("the answering primary was asked %d times, want 1", asked)
	}
	if got := f.current(); !got.IsIncoming(0, "c") || got.IsIncoming(5, "c") || got.BackupsOf(5)[0] != "c" {
		t.Errorf("after the round: partition 0 incoming %v (want true), partition 5 backups %q (want c)", got.IsIncoming(0, "c"), got.BackupsOf(5))
	}
}

// An incoming replica is swapped in only once its member answers from a
// table at least as new as the one the master settles: before, it may
// not know it is to take the replica over, and answers for the replica
// it had: none, at version 0 and not syncing, which is what a copy in
// sync says of a partition never written (whose primary, at version 0,
// says it caught up). Swapped in so, it then resets and syncs from
// scratch while the old, in-sync backup is gone: a failover of the
// primary meanwhile reported the partition lost
// (TestRebalanceUnderLoadKillPrimaryOfAMovingBackup, the partitions the
// load never wrote).
func TestSettleWaitsForTheIncomingMemberToHoldTheTable(t *testing.T) {
	f := newFake("a a", "a", "b", "c")
	tab := f.current()
	tab.Backups = [][]string{{"b"}, {"b"}}
	tab.Incoming = [][]string{{"c"}, {"c"}}
	tab.Members["c"] = "addr-c"
	behind := true
	f.statusTable = func(member string, newest int64) int64 {
		if member == "c" && behind {
			return newest - 1
		}
		return newest
	}
	m := New(f, Config{Count: f.count, Backups: 1})
	m.settleIncoming(context.Background())
	if got := f.current(); !got.IsIncoming(0, "c") || !got.IsIncoming(1, "c") || got.BackupsOf(0)[0] != "b" {
		t.Fatalf("c answered from an older table and was swapped in: backups %q incoming %q", got.BackupsOf(0), got.IncomingOf(0))
	}
	f.mu.Lock()
	behind = false
	f.mu.Unlock()
	m.settleIncoming(context.Background())
	if got := f.current(); got.HasIncoming() || got.BackupsOf(0)[0] != "c" || got.BackupsOf(1)[0] != "c" {
		t.Fatalf("c holds the table and is in sync, yet not swapped in: backups %q %q incoming %q", got.BackupsOf(0), got.BackupsOf(1), got.Incoming)
	}
}
