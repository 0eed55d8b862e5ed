package counter_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
)

// protectCounter configures the counter's split-brain protection on the
// members that only says (all when only is empty).
func protectCounter(minSize int, protectOn string, only ...int) clustertest.Option {
	return clustertest.WithConfig(func(i int, cfg *config.Config) {
		if len(only) > 0 && !slices.Contains(only, i) {
			return
		}
		for j, sc := range cfg.Services {
			if sc.Type == counter.TypeName {
				cfg.Services[j].SplitBrainProtection = config.SplitBrainProtectionConfig{MinSize: minSize, ProtectOn: protectOn}
			}
		}
	})
}

// readiness returns member n's /health/ready status and reason.
func readiness(t *testing.T, n *nodeengine.Node) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + n.MetricsAddress() + "/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("/health/ready body %q: %v", b, err)
	}
	return resp.StatusCode, r.Reason
}

// waitAlone waits until member n's list holds only itself: it has
// declared the others dead.
func waitAlone(t *testing.T, n *nodeengine.Node) {
	t.Helper()
	clustertest.Eventually(t, 30*time.Second, func() error {
		if k := len(n.Members()); k != 1 {
			return fmt.Errorf("member still sees %d members", k)
		}
		return nil
	})
}

func wantRefused(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, spi.ErrSplitBrainProtection) {
		t.Fatalf("%s: %v, want spi.ErrSplitBrainProtection", what, err)
	}
}

func rejected(t *testing.T, n *nodeengine.Node) float64 {
	t.Helper()
	return clustertest.Scrape(t, n).Value("partita_split_brain_protection_rejected_total", "service", counter.ServiceName)
}

// Three members and a counter that needs two: it works on three; the
// survivor of two kills refuses reads and writes once it has declared the
// others dead, applies none of them, and says why on /health/ready; a new
// member joining lets it work again, with the value from before.
func TestSplitBrainProtectionOnASideTooSmall(t *testing.T) {
	c := clustertest.New(t, 3, protectCounter(2, config.ProtectReadWrite))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := c.KeyOwnedBy(0, "q")
	ctr := getCounter(t, c, 0, name)
	for i := 0; i < 5; i++ {
		if _, err := ctr.Inc(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := getCounter(t, c, 1, name).Get(ctx); err != nil || v != 5 {
		t.Fatalf("Get on member 1 = %d, %v; want 5", v, err)
	}
	for i, m := range c.Members() {
		if code, reason := readiness(t, m); code != http.StatusOK {
			t.Fatalf("member %d not ready: %d %s", i, code, reason)
		}
	}
	survivor := c.Member(0)
	c.KillMany(1, 2)
	waitAlone(t, survivor)

	_, err := ctr.Inc(ctx, 100)
	wantRefused(t, "Inc on the survivor", err)
	_, err = ctr.Get(ctx)
	wantRefused(t, "Get on the survivor", err)
	code, reason := readiness(t, survivor)
	want := fmt.Sprintf("split-brain protection of service %q not met: it needs 2 members (protect-on read-write), this member sees 1", counter.ServiceName)
	if code != http.StatusServiceUnavailable || reason != want {
		t.Fatalf("/health/ready = %d %q, want 503 %q", code, reason, want)
	}
	if n := rejected(t, survivor); n < 2 {
		t.Errorf("partita_split_brain_protection_rejected_total = %v, want at least 2", n)
	}

	c.AddMember()
	c.WaitStable()
	clustertest.Eventually(t, 30*time.Second, func() error {
		if code, reason := readiness(t, survivor); code != http.StatusOK {
			return fmt.Errorf("survivor not ready: %s", reason)
		}
		return nil
	})
	if v, err := ctr.Get(ctx); err != nil || v != 5 {
		t.Fatalf("Get after a member joined = %d, %v; want 5: the refused Inc was applied", v, err)
	}
	if v, err := ctr.Inc(ctx, 1); err != nil || v != 6 {
		t.Fatalf("Inc after a member joined = %d, %v; want 6", v, err)
	}
}

// protect-on write: the survivor still answers reads, with the value from
// before the refused writes.
func TestSplitBrainProtectionOnWritesLetsReadsThrough(t *testing.T) {
	c := clustertest.New(t, 3, protectCounter(2, config.ProtectWrite))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ctr := getCounter(t, c, 0, c.KeyOwnedBy(0, "w"))
	if _, err := ctr.Inc(ctx, 7); err != nil {
		t.Fatal(err)
	}
	survivor := c.Member(0)
	c.KillMany(1, 2)
	waitAlone(t, survivor)
	for i := 0; i < 3; i++ {
		_, err := ctr.Inc(ctx, 1)
		wantRefused(t, "Inc on the survivor", err)
	}
	if v, err := ctr.Get(ctx); err != nil || v != 7 {
		t.Fatalf("Get on the survivor = %d, %v; want 7", v, err)
	}
	if code, reason := readiness(t, survivor); code != http.StatusServiceUnavailable || !strings.Contains(reason, "protect-on write") {
		t.Fatalf("/health/ready = %d %q, want 503 naming protect-on write", code, reason)
	}
}

// The member that would run an operation refuses it, whatever the
// caller's side: member 1 alone needs three members, member 0 does not
// check. Its refusal reaches member 0 typed; engine operations (the
// migrations that gave member 1 its partitions) and the backups member 1
// holds for member 0's writes are never refused.
func TestSplitBrainProtectionRefusedByTheTarget(t *testing.T) {
	c := clustertest.New(t, 2, protectCounter(3, config.ProtectReadWrite, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	remote := getCounter(t, c, 0, c.KeyOwnedBy(1, "r"))
	_, err := remote.Inc(ctx, 1)
	wantRefused(t, "Inc owned by the protected member", err)
	var re *spi.RemoteError
	if !errors.As(err, &re) || re.Member != c.Member(1).Address() {
		t.Fatalf("refusal %v is not a RemoteError from member 1", err)
	}
	_, err = remote.Get(ctx)
	wantRefused(t, "Get owned by the protected member", err)
	local := getCounter(t, c, 0, c.KeyOwnedBy(0, "l"))
	if v, err := local.Inc(ctx, 3); err != nil || v != 3 {
		t.Fatalf("Inc owned by the unprotected member, backed up on the protected one = %d, %v", v, err)
	}
	if n := rejected(t, c.Member(1)); n != 2 {
		t.Errorf("member 1 counted %v refusals, want 2", n)
	}
	if n := rejected(t, c.Member(0)); n != 0 {
		t.Errorf("member 0 counted %v refusals, want 0 (it has no protection)", n)
	}
	if code, _ := readiness(t, c.Member(0)); code != http.StatusOK {
		t.Errorf("member 0 /health/ready = %d, want 200", code)
	}
	if code, reason := readiness(t, c.Member(1)); code != http.StatusServiceUnavailable || !strings.Contains(reason, "needs 3 members") {
		t.Errorf("member 1 /health/ready = %d %q, want 503 naming 3 members", code, reason)
	}
}
