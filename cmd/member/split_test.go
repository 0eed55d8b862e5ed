package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/internal/netnstest"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// Real network splits of member processes: the processes run in two
// network namespaces linked by a veth pair (netnstest.Peer), and the link
// is cut and healed under them.

// splitProbeInterval is split-brain.probe-interval in splitTimings.
const splitProbeInterval = time.Second

// splitTimings are the membership and split-brain keys of the members of
// these tests: the test preset (config.UseFastFailureDetection), in YAML.
const splitTimings = `membership:
  probe-interval: 200ms
  probe-timeout: 100ms
  suspicion-mult: 3
  suspicion-max-timeout-mult: 6
  gossip-interval: 50ms
  push-pull-interval: 1s
partitions:
  anti-entropy-interval: 500ms
split-brain:
  first-probe-delay: 1s
  probe-interval: 1s
`

// memberYAML is the config file of a member of cluster bound to bind,
// joining through join (multicast off), serving metrics on metrics ("":
// none), with the counter's split-brain protection at minSize (0: off).
func memberYAML(cluster, bind string, join []string, metrics string, minSize int) string {
	return fmt.Sprintf(`cluster:
  name: %s
network:
  bind: %s
  port-auto-increment: false
  join:
    members: [%s]
    multicast:
      enabled: false
metrics:
  address: %q
%sservices:
  - name: CounterService
    type: counter
    split-brain-protection:
      min-size: %d
`, cluster, bind, strings.Join(join, ", "), metrics, splitTimings, minSize)
}

// A member process cut off from the other two for longer than failure
// detection, writes on both sides, heal: the sides find each other by
// themselves within the probe interval, the lone member merges into the
// pair, and every counter equals the increments acknowledged on both
// sides (none lost, none doubled).
func TestSplitOfMemberProcesses(t *testing.T) {
	testSplitOfMemberProcesses(t, "TestSplitOfMemberProcesses", 0)
}

// The same with the counter's split-brain protection at 2 members: the
// lone member acknowledges writes only until it has noticed the split,
// refuses them afterwards (the typed error, nothing applied), and accepts
// them again after the merge. The writes it acknowledged before it
// noticed survive the merge.
func TestSplitOfMemberProcessesProtected(t *testing.T) {
	testSplitOfMemberProcesses(t, "TestSplitOfMemberProcessesProtected", 2)
}

// write is one increment sent through a member during the split.
type write struct {
	member     int
	name       string
	start, end time.Time
	outcome    outcome
	err        string
}

func testSplitOfMemberProcesses(t *testing.T, name string, minSize int) {
	if testing.Short() {
		t.Skip("runs member processes in network namespaces")
	}
	if !netnstest.Run(t, name, 50*time.Second) {
		return
	}
	began := time.Now()
	peer := netnstest.NewPeer(t, 2, 1)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	dir := t.TempDir()
	// Members 0 and 1 here, member 2 (the lone one) in the peer
	// namespace.
	var addrs []string
	for _, ip := range append(peer.LocalAddrs(), peer.PeerAddrs()...) {
		addrs = append(addrs, ip+":5701")
	}
	fronts := make([]*front, len(addrs))
	procs := make([]*proc, len(addrs))
	for i, addr := range addrs {
		cfg := filepath.Join(dir, fmt.Sprintf("m%d.yaml", i))
		if err := os.WriteFile(cfg, []byte(memberYAML("split", addr, addrs, "", minSize)), 0o644); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, fmt.Sprintf("m%d.sock", i))
		var cmd *exec.Cmd
		if i == 2 {
			cmd = peer.Command(ctx, self)
		} else {
			cmd = exec.CommandContext(ctx, self)
		}
		cmd.Env = append(os.Environ(), testMemberEnv+"="+cfg, testSocketEnv+"="+sock)
		procs[i] = startProc(t, fmt.Sprintf("member %d (%s)", i, addr), cmd)
		m := procs[i].waitLine(t, testMemberLine, 30*time.Second)
		if m[3] != strconv.Itoa(i+1) {
			t.Fatalf("member %d started with %s members, want %d", i, m[3], i+1)
		}
		fronts[i] = newFront(sock)
	}
	waitMembers := func(timeout time.Duration, want ...int) {
		t.Helper()
		clustertest.Eventually(t, timeout, func() error {
			for i, f := range fronts {
				if k, err := f.members(); err != nil || k != want[i] {
					return fmt.Errorf("member %d sees %d members (%v), want %d", i, k, err, want[i])
				}
			}
			return nil
		})
	}
	ready := func() error {
		for i, f := range fronts {
			if code, body := f.do("GET", "/health/ready"); code != http.StatusOK {
				return fmt.Errorf("member %d not ready: %d %s", i, code, body)
			}
		}
		return nil
	}
	waitMembers(20*time.Second, 3, 3, 3)
	clustertest.Eventually(t, 20*time.Second, ready)
	t.Logf("3 member processes up in %v", time.Since(began).Round(time.Millisecond))

	// Before the split: 10 on every counter.
	names := []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"}
	ackedSum := map[string]int64{}
	uncertainSum := map[string]int64{}
	for _, n := range names {
		if _, o, e := fronts[0].inc(n, 10); o != acked {
			t.Fatalf("inc %s before the split: %s", n, e)
		}
		ackedSum[n] += 10
	}

	// Writers on all three members, from just before the cut until the
	// split has lasted long enough: on the pair, one increment at a time;
	// on the lone member, one started every loneEvery whatever the
	// others' fate (they wait until it notices the split), to see which
	// of those it acknowledges and which it refuses.
	const loneEvery = 20 * time.Millisecond
	var mu sync.Mutex
	var writes []write
	stop := make(chan struct{})
	var wg sync.WaitGroup
	record := func(i int, n string) {
		w := write{member: i, name: n, start: time.Now()}
		_, w.outcome, w.err = fronts[i].inc(n, 1)
		w.end = time.Now()
		mu.Lock()
		writes = append(writes, w)
		mu.Unlock()
	}
	for i := range fronts {
		own := []string{"pair-only", "pair-only", "lone-only"}[i]
		pick := func(k int) string {
			if k%3 == 0 {
				return own
			}
			return names[k%len(names)]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(loneEvery)
			defer tick.Stop()
			for k := 0; ; k++ {
				if i < 2 {
					select {
					case <-stop:
						return
					default:
					}
					record(i, pick(k))
					continue
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					record(i, pick(k))
				}()
			}
		}()
	}
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopWriters()
	// count counts the writes through member i with outcome o that
	// started after since.
	count := func(i int, o outcome, since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, w := range writes {
			if w.member == i && w.outcome == o && w.start.After(since) {
				k++
			}
		}
		return k
	}

	peer.Cut(t)
	cut := time.Now()
	// Each side notices on its own: the pair first (its two members
	// confirm each other's suspicion), the lone member when its
	// suspicion of the others times out unconfirmed.
	var pairNoticed, loneNoticed time.Time
	clustertest.Eventually(t, 30*time.Second, func() error {
		var k [3]int
		for i, f := range fronts {
			var err error
			if k[i], err = f.members(); err != nil {
				return err
			}
		}
		if pairNoticed.IsZero() && k[0] == 2 && k[1] == 2 {
			pairNoticed = time.Now()
		}
		if loneNoticed.IsZero() && k[2] == 1 {
			loneNoticed = time.Now()
		}
		if pairNoticed.IsZero() || loneNoticed.IsZero() {
			return fmt.Errorf("members see %v members, want 2, 2, 1", k)
		}
		return nil
	})
	noticed := loneNoticed
	if pairNoticed.After(noticed) {
		noticed = pairNoticed
	}
	t.Logf("the split noticed by the pair %v after the cut, by the lone member %v after",
		pairNoticed.Sub(cut).Round(time.Millisecond), loneNoticed.Sub(cut).Round(time.Millisecond))
	// Both sides write on their own for a while, through several failed
	// split-brain probes (and the pair's look at the departed member's
	// address, 2 s after it left).
	const splitHold = 3 * time.Second
	clustertest.Eventually(t, 20*time.Second, func() error {
		for i := range 2 {
			if k := count(i, acked, noticed); k < 10 {
				return fmt.Errorf("member %d of the pair acknowledged %d writes since the split was noticed", i, k)
			}
		}
		if minSize == 0 {
			if k := count(2, acked, noticed); k < 10 {
				return fmt.Errorf("the lone member acknowledged %d writes since it noticed the split", k)
			}
		} else if k := count(2, refused, noticed); k < 10 {
			return fmt.Errorf("the lone member refused %d writes since it noticed the split", k)
		}
		if d := time.Since(noticed); d < splitHold {
			return fmt.Errorf("the split was noticed only %v ago", d)
		}
		return nil
	})
	if minSize > 0 {
		code, body := fronts[2].do("GET", "/health/ready")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "split-brain protection") {
			t.Errorf("lone member's /health/ready during the split: %d %s, want 503 naming split-brain protection", code, body)
		}
	}
	stopWriters()
	healed := time.Now()
	peer.Heal(t)
	t.Logf("split lasted %v", healed.Sub(cut).Round(time.Millisecond))

	// The writes: acknowledged ones must all count, uncertain ones may.
	var lastLoneAck, firstRefusal *write
	outcomes := map[int][3]int{}
	for j := range writes {
		w := &writes[j]
		o := outcomes[w.member]
		o[w.outcome]++
		outcomes[w.member] = o
		switch w.outcome {
		case acked:
			ackedSum[w.name]++
			if w.member == 2 && (lastLoneAck == nil || w.start.After(lastLoneAck.start)) {
				lastLoneAck = w
			}
		case uncertain:
			uncertainSum[w.name]++
			t.Logf("uncertain write through member %d at cut%+v: %s", w.member, w.start.Sub(cut).Round(time.Millisecond), w.err)
		case refused:
			if w.member != 2 {
				t.Errorf("member %d of the pair refused a write at cut%+v: %s", w.member, w.start.Sub(cut).Round(time.Millisecond), w.err)
			}
			if firstRefusal == nil || w.end.Before(firstRefusal.end) {
				firstRefusal = w
			}
		}
	}
	var afterCut int
	var firstAns, lastAns time.Time
	for _, w := range writes {
		if w.member == 2 && w.outcome == acked && w.start.After(cut) {
			afterCut++
			if firstAns.IsZero() || w.end.Before(firstAns) {
				firstAns = w.end
			}
			if w.end.After(lastAns) {
				lastAns = w.end
			}
		}
	}
	if afterCut > 0 {
		t.Logf("the lone member acknowledged %d writes sent after the cut, answered from cut%+v to cut%+v",
			afterCut, firstAns.Sub(cut).Round(time.Millisecond), lastAns.Sub(cut).Round(time.Millisecond))
	}
	for i := range fronts {
		o := outcomes[i]
		t.Logf("member %d: %d writes acknowledged, %d refused, %d uncertain", i, o[acked], o[refused], o[uncertain])
	}
	switch {
	case minSize == 0 && firstRefusal != nil:
		t.Errorf("a write was refused without split-brain protection: %s", firstRefusal.err)
	case minSize > 0:
		if firstRefusal == nil {
			t.Fatal("the lone member refused no write")
		}
		if !strings.Contains(firstRefusal.err, "split-brain protection") {
			t.Errorf("refusal %q does not name split-brain protection", firstRefusal.err)
		}
		// Once it refuses, it refuses every write sent afterwards, until
		// the heal.
		for _, w := range writes {
			if w.member == 2 && w.outcome == acked && w.start.After(firstRefusal.end) {
				t.Errorf("the lone member acknowledged a write started at cut%+v, after it refused one at cut%+v",
					w.start.Sub(cut).Round(time.Millisecond), firstRefusal.end.Sub(cut).Round(time.Millisecond))
			}
		}
		// The window: from the cut to the last write the lone member
		// acknowledged (started then, answered when).
		window := "no write acknowledged after the cut"
		if lastLoneAck != nil && lastLoneAck.start.After(cut) {
			window = fmt.Sprintf("last write acknowledged started at cut%+v, answered at cut%+v",
				lastLoneAck.start.Sub(cut).Round(time.Millisecond), lastLoneAck.end.Sub(cut).Round(time.Millisecond))
		}
		t.Logf("the lone member's write window: %s; first refused write started at cut%+v, answered at cut%+v; it noticed the split at cut%+v",
			window, firstRefusal.start.Sub(cut).Round(time.Millisecond), firstRefusal.end.Sub(cut).Round(time.Millisecond),
			loneNoticed.Sub(cut).Round(time.Millisecond))
	}

	// The heal: the sides find each other, the lone member merges.
	merged := func(i int) (float64, float64, error) {
		code, body := fronts[i].do("GET", "/metrics")
		if code != http.StatusOK {
			return 0, 0, fmt.Errorf("member %d /metrics: %d %s", i, code, body)
		}
		return metric(body, `partita_split_brain_merges_total{result="merged"}`),
			metric(body, `partita_split_brain_merges_total{result="failed"}`), nil
	}
	clustertest.Eventually(t, 30*time.Second, func() error {
		for i, f := range fronts {
			if k, err := f.members(); err != nil || k != 3 {
				return fmt.Errorf("member %d sees %d members (%v)", i, k, err)
			}
		}
		if m, _, err := merged(2); err != nil || m != 1 {
			return fmt.Errorf("the lone member merged %v times (%v)", m, err)
		}
		return ready()
	})
	done := time.Now()
	starts := procs[2].stderr.find("level=WARN", "merging into a larger cluster of this name")
	if len(starts) != 1 {
		t.Fatalf("the lone member logged %d merge starts, want 1", len(starts))
	}
	t.Logf("heal -> merge started %v, heal -> merged and ready %v (split-brain.probe-interval %v)",
		starts[0].at.Sub(healed).Round(time.Millisecond), done.Sub(healed).Round(time.Millisecond), splitProbeInterval)
	// The merge starts at the first probe after the heal; the slack is
	// for the probe itself and for scheduling on a loaded machine.
	if d := starts[0].at.Sub(healed); d > splitProbeInterval+time.Second {
		t.Errorf("the merge started %v after the heal, want within the probe interval (%v) and 1s", d, splitProbeInterval)
	}
	for i := range fronts {
		m, f, err := merged(i)
		if err != nil {
			t.Fatal(err)
		}
		if want := float64(i / 2); m != want || f != 0 {
			t.Errorf("member %d: %v merges, %v failed; want %v, 0", i, m, f, want)
		}
	}

	// Every counter, read through every member, holds every acknowledged
	// increment, and no more than the uncertain ones on top.
	for _, n := range append(names, "pair-only", "lone-only") {
		for i, f := range fronts {
			v, o, e := f.get(n)
			if o != acked {
				t.Fatalf("get %s through member %d: %s", n, i, e)
			}
			if lo, hi := ackedSum[n], ackedSum[n]+uncertainSum[n]; v < lo || v > hi {
				t.Errorf("%s read through member %d = %d, want %d acknowledged increments (+ up to %d uncertain)", n, i, v, lo, uncertainSum[n])
			}
		}
	}
	if minSize > 0 {
		if _, o, e := fronts[2].inc("c0", 1); o != acked {
			t.Errorf("the lone member refuses writes after the merge: %s", e)
		}
	}
	t.Logf("test took %v", time.Since(began).Round(time.Millisecond))
}

// Two groups of member processes (the member binary, configured by YAML
// files) start apart with one cluster name, three members on one side of
// a cut link and two on the other, each group a cluster of its own; then
// the link heals: the two clusters find each other by themselves, the
// smaller merges into the larger (every member of it logs the merge at
// WARN, with both sides' sizes), and all five are one cluster.
func TestMemberGroupsMerge(t *testing.T) {
	if testing.Short() {
		t.Skip("runs member processes in network namespaces")
	}
	if os.Getenv(memberBinEnv) == "" && os.Geteuid() == 0 {
		// Built here, once per test process, for the child in the
		// namespace (netnstest skips where it cannot make one).
		t.Setenv(memberBinEnv, buildMember(t))
	}
	if !netnstest.Run(t, "TestMemberGroupsMerge", 50*time.Second) {
		return
	}
	began := time.Now()
	bin := buildMember(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	peer := netnstest.NewPeer(t, 3, 2)
	peer.Cut(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	dir := t.TempDir()

	type member struct {
		group   string // "large" here, "small" in the peer namespace
		ip      string
		p       *proc
		metrics string // base URL
	}
	var ms []*member
	for _, ip := range peer.LocalAddrs() {
		ms = append(ms, &member{group: "large", ip: ip})
	}
	for _, ip := range peer.PeerAddrs() {
		ms = append(ms, &member{group: "small", ip: ip})
	}
	var join []string
	for _, m := range ms {
		join = append(join, m.ip+":5701")
	}
	// Each group's members start one after another, the first alone, the
	// others joining it; the other group is out of reach.
	started := map[string]int{}
	for i, m := range ms {
		cfg := filepath.Join(dir, fmt.Sprintf("m%d.yaml", i))
		if err := os.WriteFile(cfg, []byte(memberYAML("groups", m.ip+":5701", join, m.ip+":9701", 0)), 0o644); err != nil {
			t.Fatal(err)
		}
		var cmd *exec.Cmd
		if m.group == "small" {
			cmd = peer.Command(ctx, bin, "-config", cfg)
		} else {
			cmd = exec.CommandContext(ctx, bin, "-config", cfg)
		}
		m.p = startProc(t, fmt.Sprintf("member %d (%s, group %s)", i, m.ip, m.group), cmd)
		l := m.p.waitLine(t, listeningLine, 30*time.Second)
		started[m.group]++
		if l[2] != m.ip+":5701" || l[3] != "groups" || l[4] != strconv.Itoa(started[m.group]) {
			t.Fatalf("member %d: listening line %q, want %s:5701, cluster groups, %d members", i, l[0], m.ip, started[m.group])
		}
		mm := m.p.waitLine(t, metricsLine, 10*time.Second)
		m.metrics = mm[1]
	}
	// scrape reads a member's /metrics: directly here, through a process
	// in the peer namespace there.
	scrape := func(m *member) (string, error) {
		if m.group == "large" {
			c := http.Client{Timeout: 5 * time.Second}
			resp, err := c.Get(m.metrics + "/metrics")
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			var sb strings.Builder
			_, err = io.Copy(&sb, resp.Body)
			return sb.String(), err
		}
		fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
		defer fcancel()
		cmd := peer.Command(fctx, self)
		cmd.Env = append(os.Environ(), fetchEnv+"="+m.metrics+"/metrics")
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("fetch in the peer namespace: %v", err)
		}
		status, body, _ := strings.Cut(string(out), "\n")
		if status != "200" {
			return "", fmt.Errorf("/metrics: %s", status)
		}
		return body, nil
	}
	// settled waits until every member sees want members (by group), is
	// ready, and the cluster is safe.
	settled := func(timeout time.Duration, want map[string]float64, also func(i int, m *member, body string) error) {
		t.Helper()
		clustertest.Eventually(t, timeout, func() error {
			for i, m := range ms {
				body, err := scrape(m)
				if err != nil {
					return fmt.Errorf("member %d: %v", i, err)
				}
				k, ready, safe := metric(body, "partita_cluster_size"), metric(body, "partita_member_ready"), metric(body, "partita_cluster_safe")
				if k != want[m.group] || ready != 1 || safe != 1 {
					return fmt.Errorf("member %d (group %s): %v members, ready %v, safe %v; want %v members, ready and safe", i, m.group, k, ready, safe, want[m.group])
				}
				if also != nil {
					if err := also(i, m, body); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	settled(20*time.Second, map[string]float64{"large": 3, "small": 2}, nil)
	t.Logf("two clusters of 3 and 2 member processes settled apart, %v after the start", time.Since(began).Round(time.Millisecond))

	healed := time.Now()
	peer.Heal(t)
	settled(30*time.Second, map[string]float64{"large": 5, "small": 5}, func(i int, m *member, body string) error {
		if m.group == "small" && metric(body, `partita_split_brain_merges_total{result="merged"}`) != 1 {
			return fmt.Errorf("member %d of the smaller cluster has not merged yet", i)
		}
		return nil
	})
	done := time.Now()
	var firstStart, lastEnd time.Time
	for i, m := range ms {
		body, err := scrape(m)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]float64{"large": 0, "small": 1}[m.group]
		if got, failed := metric(body, `partita_split_brain_merges_total{result="merged"}`), metric(body, `partita_split_brain_merges_total{result="failed"}`); got != want || failed != 0 {
			t.Errorf("member %d (group %s): %v merges, %v failed; want %v, 0", i, m.group, got, failed, want)
		}
		// The merge, logged at WARN on every member of the smaller
		// cluster, with both sides' sizes; nothing of it on the larger.
		starts := m.p.stderr.find("level=WARN", "merging into a larger cluster of this name", "members=2", "other_members=3")
		ends := m.p.stderr.find("level=WARN", "merged into the larger cluster")
		if m.group == "large" {
			if len(starts)+len(ends) > 0 {
				t.Errorf("member %d of the larger cluster logged a merge of its own:\n%s", i, m.p.stderr.String())
			}
			continue
		}
		if len(starts) != 1 || len(ends) != 1 {
			t.Errorf("member %d of the smaller cluster logged %d merge starts and %d merge ends at WARN, want 1 and 1", i, len(starts), len(ends))
			continue
		}
		if firstStart.IsZero() || starts[0].at.Before(firstStart) {
			firstStart = starts[0].at
		}
		if ends[0].at.After(lastEnd) {
			lastEnd = ends[0].at
		}
	}
	var decided int
	for _, m := range ms[3:] {
		decided += len(m.p.stderr.find("level=WARN", "found a larger cluster of this name: this cluster merges into it", "members=2", "other_members=3"))
	}
	if decided != 1 {
		t.Errorf("the smaller cluster's master logged its decision to merge %d times, want 1", decided)
	}
	if !firstStart.IsZero() {
		t.Logf("heal -> merge started %v, heal -> both members merged %v, heal -> 5 members ready and safe %v (split-brain.probe-interval %v)",
			firstStart.Sub(healed).Round(time.Millisecond), lastEnd.Sub(healed).Round(time.Millisecond),
			done.Sub(healed).Round(time.Millisecond), splitProbeInterval)
		if d := firstStart.Sub(healed); d > splitProbeInterval+time.Second {
			t.Errorf("the merge started %v after the heal, want within the probe interval (%v) and 1s", d, splitProbeInterval)
		}
	}
	t.Logf("test took %v", time.Since(began).Round(time.Millisecond))
}
