package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
)

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1 // a member could not start, or a kill never recovered
	exitUsage  = 2 // bad flags
)

const (
	// startTimeout bounds the start of the members and the wait for a
	// stable, safe cluster.
	startTimeout = 90 * time.Second
	// pollEvery is how often the members' views are polled for the
	// moment a death is declared.
	pollEvery = 5 * time.Millisecond
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the command's flags.
type options struct {
	sizes       []int
	presets     []string
	runs        int
	kills       int
	secondAfter time.Duration
	settle      time.Duration
	limit       time.Duration
	warmup      time.Duration
	syncBackups int
	killMaster  bool
	overlap     bool
	maxMult     int
	mult        int
	refusedPort bool
	verbose     bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizes := fs.String("sizes", "3,5,7", "cluster sizes to measure, comma-separated")
	presets := fs.String("presets", "default,fast", `membership presets to measure: "default" (config.Default) and/or "fast" (UseFastFailureDetection)`)
	fs.IntVar(&o.runs, "runs", 3, "runs per cell (the table shows the median)")
	fs.IntVar(&o.kills, "kills", 2, "members killed one after the other (1 or 2)")
	fs.DurationVar(&o.secondAfter, "second-after", 8*time.Second, "time from the first kill to the second (at least -settle after writes flow again)")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "least time from writes flowing again after a kill to the next kill")
	fs.DurationVar(&o.limit, "limit", 60*time.Second, "give up on a kill whose writes are not flowing again after this long")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "load before the first kill (at least 1s: the rate before a kill is taken over the second before it)")
	fs.IntVar(&o.syncBackups, "sync-backups", 1, "synchronous backups (partitions.backup-count and the counter's backup-count)")
	fs.BoolVar(&o.overlap, "overlap", false, "make the second kill exactly -second-after after the first, even before writes flow again (the two failures overlap when it is short)")
	fs.BoolVar(&o.killMaster, "kill-master", false, "kill the oldest member (the master) first, instead of the youngest")
	fs.IntVar(&o.maxMult, "suspicion-max-timeout-mult", 0, "membership.suspicion-max-timeout-mult for both presets (0: the preset's own; 6 measures the settings before it was tuned)")
	fs.IntVar(&o.mult, "suspicion-mult", 0, "membership.suspicion-mult for both presets (0: the preset's own)")
	fs.BoolVar(&o.refusedPort, "dead-on-refused-port", true, "membership.dead-on-refused-port (false: memberlist's suspicion alone declares the killed members dead)")
	fs.BoolVar(&o.verbose, "v", false, "log the members' warnings and errors to stderr")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for s := range strings.SplitSeq(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 2 || n > 32 {
			return o, fmt.Errorf("-sizes: %q is not a cluster size in 2..32", s)
		}
		o.sizes = append(o.sizes, n)
	}
	for p := range strings.SplitSeq(*presets, ",") {
		p = strings.TrimSpace(p)
		if p != "default" && p != "fast" {
			return o, fmt.Errorf(`-presets: %q is neither "default" nor "fast"`, p)
		}
		o.presets = append(o.presets, p)
	}
	switch {
	case o.runs < 1:
		return o, errors.New("-runs must be at least 1")
	case o.warmup < time.Second:
		return o, errors.New("-warmup must be at least 1s")
	case o.kills < 1 || o.kills > 2:
		return o, errors.New("-kills must be 1 or 2")
	case o.maxMult < 0:
		return o, errors.New("-suspicion-max-timeout-mult must not be negative")
	case o.mult < 0:
		return o, errors.New("-suspicion-mult must not be negative")
	case o.syncBackups < 0 || o.syncBackups > 6:
		return o, errors.New("-sync-backups must be in 0..6")
	}
	for _, n := range o.sizes {
		if n <= o.kills {
			return o, fmt.Errorf("-sizes: %d members cannot lose %d and keep one", n, o.kills)
		}
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "failover:", err)
		}
		return exitUsage
	}
	level := slog.Level(100)
	if o.verbose {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	fmt.Fprintf(stdout, "failover: sizes %v, presets %v, %d runs, %d kills, second kill %v after the first (settle %v, overlap %v), %d sync backup(s), suspicion-max-timeout-mult %d, suspicion-mult %d (0: preset's), dead-on-refused-port %v, GOMAXPROCS %d\n",
		o.sizes, o.presets, o.runs, o.kills, o.secondAfter, o.settle, o.overlap, o.syncBackups, o.maxMult, o.mult, o.refusedPort, runtimeProcs())
	status := exitOK
	var rows []row
	for _, preset := range o.presets {
		for _, n := range o.sizes {
			r := row{preset: preset, members: n}
			for i := range o.runs {
				res, err := measure(o, n, preset, log)
				if err != nil {
					fmt.Fprintf(stdout, "  %-7s N=%d run %d: %v\n", preset, n, i+1, err)
					status = exitFailed
					continue
				}
				fmt.Fprintf(stdout, "  %-7s N=%d run %d: %s\n", preset, n, i+1, res)
				r.runs = append(r.runs, res)
			}
			rows = append(rows, r)
		}
	}
	printTable(stdout, o, rows)
	return status
}

// kill is what one kill measured.
type kill struct {
	member   int           // index of the member killed (start order)
	declared time.Duration // kill -> the last survivor no longer lists it
	writes   time.Duration // kill -> every partition accepted a write invoked after the kill
	ok       bool          // writes flowed again within -limit
	rate     float64       // successful increments per second in the second before the kill
	// terminate is how long Terminate took (memberlist lets a probe in
	// flight end first).
	terminate time.Duration
}

// result is one run.
type result struct{ kills []kill }

func (r result) String() string {
	var b strings.Builder
	for i, k := range r.kills {
		if i > 0 {
			b.WriteString("; ")
		}
		w := "never"
		if k.ok {
			w = fmtDur(k.writes)
		}
		rate := "rate not taken"
		if k.rate >= 0 {
			rate = fmt.Sprintf("%.0f ops/s before", k.rate)
		}
		fmt.Fprintf(&b, "kill %d (member %d, %s, terminated in %s): declared dead %s, writes flowing %s",
			i+1, k.member, rate, fmtDur(k.terminate), fmtDur(k.declared), w)
	}
	return b.String()
}

// configure sets member i's config: the preset and the backups.
func configure(o options, preset string) func(int, *config.Config) {
	return func(i int, cfg *config.Config) {
		cfg.Source = fmt.Sprintf("cmd/failover member %d", i)
		if preset == "fast" {
			cfg.UseFastFailureDetection()
		}
		if o.mult > 0 {
			cfg.Membership.SuspicionMult = o.mult
		}
		if o.maxMult > 0 {
			cfg.Membership.SuspicionMaxTimeoutMult = o.maxMult
		}
		cfg.Membership.DeadOnRefusedPort = o.refusedPort
		cfg.Partitions.BackupCount = max(o.syncBackups, cfg.Partitions.BackupCount)
		for j, sc := range cfg.Services {
			if sc.Type == counter.TypeName {
				cfg.Services[j].Properties = sc.Properties.
					With("backup-count", strconv.Itoa(o.syncBackups)).
					With("async-backup-count", "0")
			}
		}
	}
}

// measure runs one cluster of n members: load, kill, measure, kill again,
// measure again.
func measure(o options, n int, preset string, log *slog.Logger) (res result, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	nodes, err := nodeengine.StartLocal(ctx, n, configure(o, preset), nodeengine.WithLogger(log))
	if err != nil {
		return res, err
	}
	killed := make([]bool, n)
	defer func() {
		// Terminate the rest: the run is over and nothing is kept.
		for i, nd := range nodes {
			if !killed[i] {
				nd.Terminate()
			}
		}
	}()
	if err := nodeengine.WaitStable(ctx, nodes); err != nil {
		return res, err
	}
	if err := waitSafe(ctx, nodes[0]); err != nil {
		return res, err
	}
	parts := nodes[0].Partitions().PartitionCount()
	names := counterNames(nodes[0], parts)
	// proxies[m][p]: member m's proxy of partition p's counter.
	proxies := make([][]*counter.Counter, n)
	for m, nd := range nodes {
		proxies[m] = make([]*counter.Counter, parts)
		for p, name := range names {
			obj, err := nd.Proxies().Get(ctx, counter.ServiceName, name)
			if err != nil {
				return res, fmt.Errorf("member %d: proxy of %s: %w", m, name, err)
			}
			proxies[m][p] = obj.(*counter.Counter)
		}
	}

	ld := newLoad(parts, o.kills)
	var alive atomic.Pointer[[]int]
	setAlive := func() {
		var a []int
		for i := range n {
			if !killed[i] {
				a = append(a, i)
			}
		}
		alive.Store(&a)
	}
	setAlive()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for p := range parts {
		wg.Go(func() { ld.caller(p, proxies, &alive, stop) })
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	loadStart := time.Now()
	order := make([]int, 0, n)
	if o.killMaster {
		order = append(order, 0)
	}
	for i := n - 1; i >= 0 && len(order) < o.kills; i-- {
		if i != 0 || !o.killMaster {
			order = append(order, i)
		}
	}
	var first time.Time
	res.kills = make([]kill, len(order))
	var measuring sync.WaitGroup
	for k, victim := range order {
		planned := loadStart.Add(o.warmup)
		if k > 0 {
			planned = first.Add(o.secondAfter)
			if !o.overlap {
				prev := res.kills[k-1]
				if !prev.ok {
					res.kills = res.kills[:k]
					break
				}
				if first.Add(prev.writes + o.settle).After(planned) {
					planned = first.Add(prev.writes + o.settle)
				}
			}
		}
		// The rate is taken over the second before the kill, when there
		// is one (not with -overlap and -second-after under 1s).
		rate := -1.0
		if time.Until(planned) >= time.Second {
			time.Sleep(time.Until(planned.Add(-time.Second)))
			rate = ld.rate(time.Second)
		}
		time.Sleep(time.Until(planned))
		killed[victim] = true
		setAlive()
		id := nodes[victim].LocalMember().ID
		at := time.Now()
		if k == 0 {
			first = at
		}
		// The survivors may declare the death while Terminate still waits
		// for memberlist's last probe (up to a probe interval).
		declared := make(chan time.Duration, 1)
		go func() { declared <- waitDeclared(nodes, &alive, id, at, o.limit) }()
		nodes[victim].Terminate()
		// Increments invoked while Terminate runs may still reach the
		// member dying (its executors finish what they hold): only those
		// invoked once it returned count, timed from its start.
		ld.killAt(k, time.Now())
		kr := &res.kills[k]
		*kr = kill{member: victim, rate: rate, terminate: time.Since(at)}
		measuring.Go(func() {
			kr.declared = <-declared
			kr.writes, kr.ok = ld.waitRecovered(k, at, o.limit)
		})
		if !o.overlap {
			measuring.Wait()
		}
	}
	measuring.Wait()
	return res, nil
}

// waitSafe waits until every backup holds what its primary holds.
func waitSafe(ctx context.Context, n *nodeengine.Node) error {
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		safe, err := n.Partitions().IsClusterSafe(sctx)
		cancel()
		if err == nil && safe {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not safe: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// counterNames returns, for each partition, the name of a counter that
// lives in it.
func counterNames(n *nodeengine.Node, parts int) []string {
	names := make([]string, parts)
	left := parts
	for i := 0; left > 0; i++ {
		name := "failover-" + strconv.Itoa(i)
		p := n.Partitions().PartitionID(name)
		if names[p] == "" {
			names[p] = name
			left--
		}
	}
	return names
}

// waitDeclared returns how long after at every survivor had dropped the
// member id from its member list (or limit).
func waitDeclared(nodes []*nodeengine.Node, alive *atomic.Pointer[[]int], id string, at time.Time, limit time.Duration) time.Duration {
	for time.Since(at) < limit {
		listed := false
		for _, i := range *alive.Load() {
			if slices.ContainsFunc(nodes[i].Members(), func(m spi.Member) bool { return m.ID == id }) {
				listed = true
				break
			}
		}
		if !listed {
			return time.Since(at)
		}
		time.Sleep(pollEvery)
	}
	return limit
}

func fmtDur(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
