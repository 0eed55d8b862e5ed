package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/services/counter"
)

// load is one caller per partition, each incrementing its partition's
// counter through a random live member, and what they saw of the kills.
type load struct {
	successes atomic.Int64
	errors    atomic.Int64
	// killTimes[k] is when kill k happened (UnixNano; 0: not yet).
	killTimes []atomic.Int64
	// recovered[k][p] is when the first successful increment of partition
	// p invoked at or after kill k completed (UnixNano; 0: none yet).
	recovered [][]atomic.Int64
}

func newLoad(parts, kills int) *load {
	ld := &load{killTimes: make([]atomic.Int64, kills), recovered: make([][]atomic.Int64, kills)}
	for k := range ld.recovered {
		ld.recovered[k] = make([]atomic.Int64, parts)
	}
	return ld
}

// caller increments partition p's counter until stop, each time through a
// member picked at random among the live ones (alive is updated before a
// kill, so no increment invoked after a kill goes through the member
// killed). An increment has no deadline of its own: the members'
// invocation timeout bounds it, as for a user who keeps the defaults.
func (ld *load) caller(p int, proxies [][]*counter.Counter, alive *atomic.Pointer[[]int], stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	rng := rand.New(rand.NewPCG(uint64(p)+1, 0x5bd1e995))
	for ctx.Err() == nil {
		a := *alive.Load()
		m := a[rng.IntN(len(a))]
		began := time.Now().UnixNano()
		_, err := proxies[m][p].Inc(ctx, 1)
		if err != nil {
			ld.errors.Add(1)
			time.Sleep(time.Millisecond) // no spinning on fast failures
			continue
		}
		ld.successes.Add(1)
		end := time.Now().UnixNano()
		for k := range ld.killTimes {
			if kt := ld.killTimes[k].Load(); kt != 0 && began >= kt {
				ld.recovered[k][p].CompareAndSwap(0, end)
			}
		}
	}
}

// killAt records that kill k happens at t.
func (ld *load) killAt(k int, t time.Time) { ld.killTimes[k].Store(t.UnixNano()) }

// rate returns the successful increments per second over the next d.
func (ld *load) rate(d time.Duration) float64 {
	s0 := ld.successes.Load()
	time.Sleep(d)
	return float64(ld.successes.Load()-s0) / d.Seconds()
}

// waitRecovered waits until every partition has completed an increment
// invoked after kill k (at at), and returns how long after at the last of
// them completed; false if that did not happen within limit.
func (ld *load) waitRecovered(k int, at time.Time, limit time.Duration) (time.Duration, bool) {
	for {
		var last int64
		done := true
		for p := range ld.recovered[k] {
			r := ld.recovered[k][p].Load()
			if r == 0 {
				done = false
				break
			}
			last = max(last, r)
		}
		if done {
			return time.Duration(last - at.UnixNano()), true
		}
		if time.Since(at) > limit {
			return limit, false
		}
		time.Sleep(pollEvery)
	}
}

// row is one cell of the table: a preset and a cluster size, its runs.
type row struct {
	preset  string
	members int
	runs    []result
}

// median returns the median of kill k's field f over the runs that got
// that far, with "never" for runs whose writes did not flow again (ranked
// last), and the values sorted.
func (r row) median(k int, f func(kill) (time.Duration, bool)) (string, []string) {
	type v struct {
		d  time.Duration
		ok bool
	}
	var vs []v
	for _, res := range r.runs {
		if k < len(res.kills) {
			d, ok := f(res.kills[k])
			vs = append(vs, v{d, ok})
		}
	}
	if len(vs) == 0 {
		return "-", nil
	}
	slices.SortFunc(vs, func(a, b v) int {
		switch {
		case a.ok != b.ok:
			if a.ok {
				return -1
			}
			return 1
		case a.d < b.d:
			return -1
		case a.d > b.d:
			return 1
		}
		return 0
	})
	all := make([]string, len(vs))
	for i, x := range vs {
		all[i] = "never"
		if x.ok {
			all[i] = fmtDur(x.d)
		}
	}
	return all[len(all)/2], all
}

func writesOf(k kill) (time.Duration, bool)   { return k.writes, k.ok }
func declaredOf(k kill) (time.Duration, bool) { return k.declared, true }

// printTable prints the medians as a Markdown table.
func printTable(w io.Writer, o options, rows []row) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Kill -> writes flowing again (median of %d runs; in brackets: declared dead, median; then all runs' writes times)\n\n", o.runs)
	head := "| preset | members |"
	sep := "|---|---|"
	for k := range o.kills {
		head += fmt.Sprintf(" kill %d: writes (declared) | kill %d: runs |", k+1, k+1)
		sep += "---|---|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, sep)
	for _, r := range rows {
		line := fmt.Sprintf("| %s | %d |", r.preset, r.members)
		for k := range o.kills {
			wm, all := r.median(k, writesOf)
			dm, _ := r.median(k, declaredOf)
			line += fmt.Sprintf(" %s (%s) | %s |", wm, dm, strings.Join(all, " "))
		}
		fmt.Fprintln(w, line)
	}
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
