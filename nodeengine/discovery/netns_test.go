package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/netnstest"
)

// TestMulticastInNetns exercises real multicast. The default network
// namespace must not carry multicast traffic, so the test runs in a
// private one (netnstest), on its loopback interface.
func TestMulticastInNetns(t *testing.T) {
	if !netnstest.Run(t, "TestMulticastInNetns", 14*time.Second) {
		return
	}
	// A fresh namespace has only lo, and it is down: multicast is unusable.
	t.Run("StartFailsWithoutMulticast", func(t *testing.T) {
		const group = "239.1.2.3:54400"
		d, err := Start(Config{Group: group, Cluster: "dev", Self: Beacon{Address: "127.0.0.1:5701", ID: "m1"}})
		if err == nil {
			d.Close()
			t.Fatal("Start succeeded in a namespace without multicast")
		}
		if !strings.Contains(err.Error(), group) {
			t.Fatalf("error %q does not name the group %s", err, group)
		}
		t.Logf("Start error without multicast: %v", err)
	})

	lo := netnstest.MulticastLoopback(t)

	t.Run("DiscoverAlone", func(t *testing.T) { testDiscoverAlone(t, lo) })
	t.Run("ThreeMembers", func(t *testing.T) { testThreeMembers(t, lo) })
	t.Run("DiscoverFindsPeer", func(t *testing.T) { testDiscoverFindsPeer(t, lo) })
}

func testDiscoverAlone(t *testing.T, lo *net.Interface) {
	const wait = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	start := time.Now()
	peers, err := Discover(ctx, Config{
		Group:     "239.1.2.3:54401",
		Cluster:   "alone",
		Self:      Beacon{Address: "127.0.0.1:5701", ID: "solo"},
		Interval:  50 * time.Millisecond,
		Interface: lo,
	})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if len(peers) != 0 {
		t.Fatalf("Discover alone found %+v", peers)
	}
	if elapsed < wait-50*time.Millisecond || elapsed > 5*time.Second {
		t.Fatalf("Discover returned after %v, want about %v (the context deadline)", elapsed, wait)
	}
}

func testThreeMembers(t *testing.T, lo *net.Interface) {
	type member struct {
		d   *Discoverer
		rec logRecorder
	}
	start := func(cluster, addr, id string) member {
		rec := newLogRecorder()
		d, err := Start(Config{
			Group:     DefaultGroup,
			Cluster:   cluster,
			Self:      Beacon{Address: addr, ID: id},
			Interval:  50 * time.Millisecond,
			Interface: lo,
			Logger:    slog.New(rec),
		})
		if err != nil {
			t.Fatalf("Start(%s, %s): %v", cluster, id, err)
		}
		t.Cleanup(func() { d.Close() })
		return member{d, rec}
	}
	devs := []member{
		start("dev", "127.0.0.1:5701", "m1"),
		start("dev", "127.0.0.1:5702", "m2"),
		start("dev", "127.0.0.1:5703", "m3"),
	}
	other := start("other", "127.0.0.1:5799", "o1")
	all := []Beacon{devs[0].d.self, devs[1].d.self, devs[2].d.self}
	othersOf := func(i int) []Beacon {
		return slices.Delete(slices.Clone(all), i, i+1) // sorted by address, like Discovered
	}

	// Done when every dev member sees exactly the other two, and has heard
	// the "other" member and its peers several times (so that "logged once"
	// and "announced once" are meaningful).
	const rounds = 3
	check := func() (bool, error) {
		ok := true
		for i, m := range devs {
			got := m.d.Discovered()
			for _, b := range got {
				if b.Cluster != "dev" || b.ID == "o1" || b.ID == m.d.self.ID {
					return false, fmt.Errorf("member %s discovered %+v", m.d.self.ID, b)
				}
			}
			if !slices.Equal(got, othersOf(i)) || m.d.ignored.Load() < rounds || m.d.received.Load() < 3*rounds {
				ok = false
			}
		}
		if got := other.d.Discovered(); len(got) != 0 {
			return false, fmt.Errorf("member of cluster other discovered %+v", got)
		}
		return ok, nil
	}
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-deadline.C:
			var sb strings.Builder
			for _, m := range append(devs, other) {
				fmt.Fprintf(&sb, "%s: discovered %+v sent=%d received=%d ignored=%d invalid=%d\n", m.d.self.ID,
					m.d.Discovered(), m.d.sent.Load(), m.d.received.Load(), m.d.ignored.Load(), m.d.invalid.Load())
			}
			t.Fatalf("members did not discover each other within 10s:\n%s", sb.String())
		case <-tick.C:
		}
		var err error
		if done, err = check(); err != nil {
			t.Fatal(err)
		}
	}

	for i, m := range devs {
		msg := `ignoring multicast beacon from 127.0.0.1:5799: cluster "other", ours is "dev"`
		if n := m.rec.count(slog.LevelInfo, msg); n != 1 {
			t.Errorf("member %s logged %q %d times, want once; log:\n%s", m.d.self.ID, msg, n, m.rec.dump())
		}
		var announced []Beacon
		for len(m.d.Peers()) > 0 {
			announced = append(announced, <-m.d.Peers())
		}
		slices.SortFunc(announced, func(a, b Beacon) int { return strings.Compare(a.Address, b.Address) })
		if want := othersOf(i); !slices.Equal(announced, want) {
			t.Errorf("member %s: Peers announced %+v, want each of %+v once", m.d.self.ID, announced, want)
		}
	}
	for _, dev := range all {
		msg := fmt.Sprintf("ignoring multicast beacon from %s: cluster %q, ours is %q", dev.Address, "dev", "other")
		if n := other.rec.count(slog.LevelInfo, msg); n != 1 {
			t.Errorf("member o1 logged %q %d times, want once; log:\n%s", msg, n, other.rec.dump())
		}
	}

	for _, m := range append(devs, other) {
		if err := m.d.Close(); err != nil {
			t.Errorf("Close %s: %v", m.d.self.ID, err)
		}
		if err := m.d.Close(); err != nil {
			t.Errorf("second Close %s: %v", m.d.self.ID, err)
		}
		if _, ok := <-m.d.Peers(); ok {
			t.Errorf("Peers of %s not closed after Close", m.d.self.ID)
		}
	}
}

func testDiscoverFindsPeer(t *testing.T, lo *net.Interface) {
	const group = "239.1.2.3:54402"
	peer, err := Start(Config{
		Group:     group,
		Cluster:   "dev",
		Self:      Beacon{Address: "127.0.0.1:5801", ID: "p1"},
		Interval:  50 * time.Millisecond,
		Interface: lo,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Interface nil: the route 224.0.0.0/4 dev lo picks the interface.
	got, err := Discover(ctx, Config{
		Group:    group,
		Cluster:  "dev",
		Self:     Beacon{Address: "127.0.0.1:5802", ID: "p2"},
		Interval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("Discover waited for the context deadline although a peer was beaconing")
	}
	if want := []Beacon{peer.self}; !slices.Equal(got, want) {
		t.Fatalf("Discover = %+v, want %+v", got, want)
	}
}
