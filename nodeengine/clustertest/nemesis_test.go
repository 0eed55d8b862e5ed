package clustertest_test

import (
	"flag"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
)

// A replay with the printed seed draws the same schedule; another seed
// draws another.
func TestNemesisScheduleIsReproducible(t *testing.T) {
	cfg := clustertest.Nemesis{Members: 3, Kinds: clustertest.NemesisKinds, Service: "CounterService"}
	for seed := uint64(1); seed <= 50; seed++ {
		a := clustertest.NewNemesisSchedule(seed, time.Minute, cfg)
		b := clustertest.NewNemesisSchedule(seed, time.Minute, cfg)
		if !reflect.DeepEqual(a, b) || a.String() != b.String() {
			t.Fatalf("seed %d drew two schedules:\n%s\n%s", seed, a, b)
		}
		if c := clustertest.NewNemesisSchedule(seed+1000, time.Minute, cfg); reflect.DeepEqual(a.Steps, c.Steps) {
			t.Fatalf("seeds %d and %d drew the same schedule", seed, seed+1000)
		}
	}
	t.Log(clustertest.NewNemesisSchedule(1, 10*time.Second, cfg))
}

// Every step of a schedule names members that exist when it starts, and
// the members stay within their bounds.
func TestNemesisScheduleKeepsMembersInBounds(t *testing.T) {
	cfg := clustertest.Nemesis{Members: 3, MinMembers: 2, MaxMembers: 5, Kinds: clustertest.NemesisKinds}
	seen := map[clustertest.NemesisKind]bool{}
	for seed := uint64(1); seed <= 50; seed++ {
		s := clustertest.NewNemesisSchedule(seed, 2*time.Minute, cfg)
		members := cfg.Members
		last := time.Duration(-1)
		for _, st := range s.Steps {
			seen[st.Kind] = true
			if st.At <= last || st.At >= s.Duration {
				t.Fatalf("seed %d: step %s out of order or past %v", seed, st, s.Duration)
			}
			last = st.At
			if st.Member >= members || st.Peer >= members || (st.Kind != clustertest.NemesisJoin && st.Kind != clustertest.NemesisSplit && st.Member < 0) {
				t.Fatalf("seed %d: step %s with %d members", seed, st, members)
			}
			if (st.Kind == clustertest.NemesisDrop || st.Kind == clustertest.NemesisDelay) && st.Member == st.Peer {
				t.Fatalf("seed %d: step %s between a member and itself", seed, st)
			}
			switch st.Kind {
			case clustertest.NemesisKill, clustertest.NemesisLeave:
				members--
			case clustertest.NemesisJoin:
				members++
			case clustertest.NemesisSplit:
				if len(st.Side) == 0 || 2*len(st.Side) > members || slices.Max(st.Side) >= members {
					t.Fatalf("seed %d: split %v of %d members", seed, st.Side, members)
				}
			}
			if members < cfg.MinMembers || members > cfg.MaxMembers {
				t.Fatalf("seed %d: %d members after %s", seed, members, st)
			}
		}
	}
	for _, k := range clustertest.NemesisKinds {
		if !seen[k] {
			t.Errorf("no schedule has a %s", k)
		}
	}
}

func TestNemesisSeedsFlags(t *testing.T) {
	set := func(name, v string) {
		old := flag.Lookup(name).Value.String()
		if err := flag.Set(name, v); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { flag.Set(name, old) })
	}
	if got := clustertest.NemesisSeeds(4, 5); !slices.Equal(got, []uint64{4, 5}) {
		t.Fatalf("defaults: %v", got)
	}
	set("nemesis.seeds", "3")
	if got := clustertest.NemesisSeeds(4, 5); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("-nemesis.seeds=3: %v", got)
	}
	set("nemesis.seeds", "7,9")
	if got := clustertest.NemesisSeeds(4, 5); !slices.Equal(got, []uint64{7, 9}) {
		t.Fatalf("-nemesis.seeds=7,9: %v", got)
	}
	set("nemesis.seed", "11")
	if got := clustertest.NemesisSeeds(4, 5); !slices.Equal(got, []uint64{11}) {
		t.Fatalf("-nemesis.seed=11: %v", got)
	}
	if d := clustertest.NemesisDuration(time.Second); d != time.Second {
		t.Fatalf("duration %v", d)
	}
	set("nemesis.duration", "1m")
	if d := clustertest.NemesisDuration(time.Second); d != time.Minute {
		t.Fatalf("-nemesis.duration=1m: %v", d)
	}
}
