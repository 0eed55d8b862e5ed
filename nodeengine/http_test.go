package nodeengine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/nodeengine/debugui"
	"golang.org/x/net/html"
)

// get fetches path from member n's HTTP endpoint.
func get(t *testing.T, n *nodeengine.Node, path string, header ...string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+n.MetricsAddress()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// readiness is /health/ready's answer.
type readiness struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason"`
}

func ready(t *testing.T, n *nodeengine.Node) (int, readiness, error) {
	t.Helper()
	code, body, err := get(t, n, "/health/ready")
	if err != nil {
		return 0, readiness{}, err
	}
	var r readiness
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return code, r, fmt.Errorf("bad /health/ready body %q: %w", body, err)
	}
	if (code == http.StatusOK) != r.Ready {
		return code, r, fmt.Errorf("/health/ready: status %d with body %s", code, body)
	}
	return code, r, nil
}

// A member is not ready while it joins (here: its seed accepts the
// connection and never answers), and ready once it has started (alone,
// when the seed fails); /health/live answers throughout.
func TestReadyOnlyAfterJoin(t *testing.T) {
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	release := func() {
		hole.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}
	defer release()

	cfg := testConfig("127.0.0.1:0", hole.Addr().String())
	n, err := nodeengine.New(cfg, nodeengine.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	h := n.Handler() // the endpoint's address is known only once Start returns
	serve := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := serve("/health/ready"); code != 503 || !strings.Contains(body, "not started") {
		t.Errorf("before Start: %d %s", code, body)
	}
	started := make(chan error, 1)
	go func() { started <- n.Start(context.Background()) }()
	clustertest.Eventually(t, 20*time.Second, func() error {
		if code, body := serve("/health/ready"); code != 503 || !strings.Contains(body, "joining the cluster") {
			return fmt.Errorf("while joining: %d %s", code, body)
		}
		return nil
	})
	if code, body := serve("/health/live"); code != 200 {
		t.Errorf("/health/live while joining: %d %s", code, body)
	}
	release() // the join fails: the member starts a cluster of its own
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(context.Background())
	clustertest.Eventually(t, 10*time.Second, func() error {
		code, r, err := ready(t, n)
		if err != nil || code != 200 {
			return fmt.Errorf("after Start: %d %+v %v", code, r, err)
		}
		return nil
	})
}

// /health/ready is 503 on the members a migration holds up, 200 again
// once it is done, and 503 from the start of a graceful shutdown.
func TestReadyDuringMigrationAndShutdown(t *testing.T) {
	c := clustertest.New(t, 2)
	for _, m := range c.Members() {
		if code, r, err := ready(t, m); err != nil || code != 200 {
			t.Fatalf("member %s: %d %+v %v", m.Address(), code, r, err)
		}
	}
	hold := &clustertest.Fault{Kind: "migration.apply", Hold: make(chan struct{})}
	remove := c.AddFault(hold)
	c.AddMember()
	clustertest.Eventually(t, 20*time.Second, func() error {
		for _, m := range c.Members()[:2] {
			if code, r, err := ready(t, m); err == nil && code == 503 && strings.Contains(r.Reason, "migrations in flight") {
				return nil
			}
		}
		return fmt.Errorf("no source member reports a migration in flight")
	})
	close(hold.Hold)
	remove()
	c.WaitStable()
	clustertest.Eventually(t, 20*time.Second, func() error {
		for _, m := range c.Members() {
			if code, r, err := ready(t, m); err != nil || code != 200 {
				return fmt.Errorf("member %s: %d %+v %v", m.Address(), code, r, err)
			}
		}
		return nil
	})

	// Graceful shutdown of member 2 waits for its partitions to move; the
	// moves are held, so it stays in that state until released.
	hold = &clustertest.Fault{Kind: "migration.apply", Hold: make(chan struct{})}
	remove = c.AddFault(hold)
	defer remove()
	leaving := c.Member(2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Shutdown(2)
	}()
	clustertest.Eventually(t, 20*time.Second, func() error {
		code, r, err := ready(t, leaving)
		if err != nil || code != 503 || r.Reason != "shutting down" {
			return fmt.Errorf("leaving member: %d %+v %v", code, r, err)
		}
		if hold.Hits() == 0 {
			return fmt.Errorf("no partition move started yet")
		}
		return nil
	})
	close(hold.Hold)
	<-done
}

// /debug/cluster, as JSON and as the HTML page, agrees on every member
// with that member's partition service and member list.
func TestClusterViewAgreesWithPartitionService(t *testing.T) {
	c := clustertest.New(t, 3)
	c.WaitClusterSafe()
	for _, m := range c.Members() {
		code, body, err := get(t, m, "/debug/cluster?format=json")
		if err != nil || code != 200 {
			t.Fatalf("member %s: %d %v", m.Address(), code, err)
		}
		var v debugui.View
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		tab := m.Inspect().Table()
		members := m.Members()
		switch {
		case v.Self != m.ID() || v.Cluster != "dev":
			t.Errorf("member %s: self %q cluster %q", m.Address(), v.Self, v.Cluster)
		case v.TableVersion != tab.Version || v.PartitionCount != 271 || len(v.Partitions) != 271:
			t.Errorf("member %s: version %d/%d, %d of %d partitions", m.Address(), v.TableVersion, tab.Version,
				len(v.Partitions), v.PartitionCount)
		case !v.ClusterSafe || len(v.Migrations) != 0:
			t.Errorf("member %s: safe %v, migrations %v", m.Address(), v.ClusterSafe, v.Migrations)
		case len(v.Members) != len(members) || v.Master != members[0].ID:
			t.Errorf("member %s: members %v master %q; partition service has %v", m.Address(), v.Members, v.Master, members)
		}
		ps := m.Partitions()
		for p, vp := range v.Partitions {
			owner, _ := ps.Owner(p)
			if vp.ID != p || vp.Owner != owner.ID || !slices.Equal(vp.Backups, tab.BackupsOf(p)) {
				t.Fatalf("member %s: partition %d is %+v; owner %s, backups %v", m.Address(), p, vp, owner.ID, tab.BackupsOf(p))
			}
		}
		owned := 0
		for i, vm := range v.Members {
			if vm.ID != members[i].ID || vm.Address != members[i].Address || vm.Error != "" || !vm.Ready ||
				vm.Master != (i == 0) || vm.Self != (vm.ID == m.ID()) {
				t.Errorf("member %s: member %d is %+v", m.Address(), i, vm)
			}
			owned += vm.Owned
			backups := 0
			for p := range tab.Owners {
				if slices.Contains(tab.BackupsOf(p), vm.ID) {
					backups++
				}
			}
			if vm.Owned != tab.Counts()[vm.ID] || vm.Backups != backups {
				t.Errorf("member %s: member %d owns %d and backs up %d; table: %d and %d", m.Address(), i,
					vm.Owned, vm.Backups, tab.Counts()[vm.ID], backups)
			}
		}
		if owned != 271 {
			t.Errorf("member %s: members own %d partitions", m.Address(), owned)
		}

		// The page a browser gets: one cell per partition, coloured by
		// the owner the table names.
		code, body, err = get(t, m, "/debug/cluster", "Accept", "text/html,application/xhtml+xml")
		if err != nil || code != 200 {
			t.Fatalf("member %s: HTML: %d %v", m.Address(), code, err)
		}
		doc, err := html.Parse(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		cells := 0
		for n := range doc.Descendants() {
			if n.Type != html.ElementNode || !slices.Contains(strings.Fields(attrOf(n, "class")), "cell") {
				continue
			}
			p, err := strconv.Atoi(attrOf(n, "data-partition"))
			if err != nil || p != cells {
				t.Fatalf("member %s: cell %d has data-partition %q", m.Address(), cells, attrOf(n, "data-partition"))
			}
			if got := attrOf(n, "data-owner"); got != tab.Owners[p] {
				t.Fatalf("member %s: cell %d owner %q, table says %q", m.Address(), p, got, tab.Owners[p])
			}
			cells++
		}
		if cells != 271 {
			t.Errorf("member %s: page has %d partition cells, want 271", m.Address(), cells)
		}
	}
}

func attrOf(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// A taken metrics port makes the member try the next one when port
// auto-increment is on, and fail to start naming the address when off.
func TestMetricsPortAutoIncrement(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := testConfig("127.0.0.1:0")
	cfg.Metrics.Address = taken.Addr().String()
	cfg.Network.PortAutoIncrement = false
	n, err := nodeengine.New(cfg, nodeengine.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err == nil || !strings.Contains(err.Error(), taken.Addr().String()) {
		n.Shutdown(context.Background())
		t.Fatalf("start with a taken metrics port: %v", err)
	}

	cfg = testConfig("127.0.0.1:0")
	cfg.Metrics.Address = taken.Addr().String()
	cfg.Network.PortAutoIncrement, cfg.Network.PortCount = true, 20
	n, err = nodeengine.New(cfg, nodeengine.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(context.Background())
	if n.MetricsAddress() == taken.Addr().String() || n.MetricsAddress() == "" {
		t.Fatalf("metrics on %q with %s taken", n.MetricsAddress(), taken.Addr())
	}
	if code, _, err := get(t, n, "/health/live"); err != nil || code != 200 {
		t.Fatalf("/health/live: %d %v", code, err)
	}
}

// testLogger sends a member's warnings and errors to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
