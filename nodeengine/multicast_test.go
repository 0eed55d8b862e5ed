package nodeengine_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/netnstest"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// TestMulticastJoin starts real members that find each other by multicast.
// Multicast must never be sent in the default network namespace, so the
// test runs in a private one (netnstest), on its loopback interface.
func TestMulticastJoin(t *testing.T) {
	if !netnstest.Run(t, "TestMulticastJoin", 55*time.Second) {
		return
	}
	netnstest.MulticastLoopback(t)

	const group = "224.2.2.3:54327"
	type member struct {
		n    *nodeengine.Node
		logs *clustertest.LogBuffer
	}
	startMember := func(cluster string) member {
		t.Helper()
		cfg := testConfig("127.0.0.1:0")
		cfg.Cluster.Name = cluster
		cfg.Network.Join.Members = nil
		cfg.Network.Join.Multicast.Enabled = true
		cfg.Network.Join.Multicast.Group = group
		logs := new(clustertest.LogBuffer)
		began := time.Now()
		n := start(t, cfg, logs)
		t.Logf("member %s of cluster %q started in %v with %d member(s) known",
			n.Address(), cluster, time.Since(began).Round(time.Millisecond), len(n.Members()))
		return member{n, logs}
	}
	dumpLogs := func(ms ...member) string {
		var sb strings.Builder
		for _, m := range ms {
			fmt.Fprintf(&sb, "--- log of %s (%s) ---\n%s", m.n.Address(), m.n.ClusterName(), m.logs.String())
		}
		return sb.String()
	}

	// Three members of "dev", started one after another.
	var devs []member
	for range 3 {
		devs = append(devs, startMember("dev"))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(dumpLogs(devs...))
		}
	})
	nodes := func(ms []member) (out []*nodeengine.Node) {
		for _, m := range ms {
			out = append(out, m.n)
		}
		return out
	}
	began := time.Now()
	clustertest.WaitStable(t, 15*time.Second, nodes(devs)...)
	t.Logf("three members converged %v after the third started", time.Since(began).Round(time.Millisecond))

	// A counter incremented once through each member reads 3.
	type incer interface {
		Inc(context.Context, int64) (int64, error)
	}
	ctx := ctxT(t)
	var last int64
	for i, m := range devs {
		obj, err := m.n.Proxies().Get(ctx, "CounterService", "mc")
		if err != nil {
			t.Fatalf("member %d: proxy: %v", i, err)
		}
		c, ok := obj.(incer)
		if !ok {
			t.Fatalf("member %d: proxy %T has no Inc", i, obj)
		}
		if last, err = c.Inc(ctx, 1); err != nil {
			t.Fatalf("member %d: Inc: %v", i, err)
		}
		if want := int64(i + 1); last != want {
			t.Fatalf("Inc through member %d returned %d, want %d", i, last, want)
		}
	}
	if last != 3 {
		t.Fatalf("counter reads %d after one Inc through each member, want 3", last)
	}

	// A member of another cluster on the same group stays alone.
	other := startMember("other")
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(dumpLogs(other))
		}
	})
	// Wait until beacons have crossed both ways (each side logged the
	// other's as belonging to another cluster), so that "stays alone" is
	// tested against members that did hear each other.
	clustertest.Eventually(t, 15*time.Second, func() error {
		for _, m := range devs {
			if !strings.Contains(other.logs.String(), "ignoring multicast beacon from "+m.n.Address()+":") {
				return fmt.Errorf("member of other has not heard %s yet", m.n.Address())
			}
			if !strings.Contains(m.logs.String(), "ignoring multicast beacon from "+other.n.Address()+":") {
				return fmt.Errorf("member %s has not heard the member of other yet", m.n.Address())
			}
		}
		return nil
	})
	// Leave time for a wrong join (several beacon and gossip rounds) and
	// check all along that nobody merged.
	hold := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(hold) {
		if k := len(other.n.Members()); k != 1 {
			t.Fatalf("member of cluster other sees %d members, want 1: %v", k, other.n.Members())
		}
		if err := clustertest.Stable(nodes(devs)...); err != nil {
			t.Fatalf("after the member of other started: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, m := range devs {
		for _, mm := range m.n.Members() {
			if mm.ID == other.n.ID() {
				t.Fatalf("member %s lists the member of cluster other", m.n.Address())
			}
		}
	}
}
