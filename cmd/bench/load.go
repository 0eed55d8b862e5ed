package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/services/counter"
)

const (
	// maxFirstErrors is how many error texts are kept.
	maxFirstErrors = 5
	// publishEvery is how often a caller publishes its counts for the
	// progress line: the only shared writes of the hot path.
	publishEvery = 50 * time.Millisecond
	// sampleBudget bounds the latency samples preallocated for all callers
	// per second of the measured period (a slice grows past it if needed).
	sampleBudget = 200_000
	// callerSamplesPerSec bounds one caller's preallocation per second.
	callerSamplesPerSec = 20_000
)

// load is what the callers did.
type load struct {
	callers   []callerResult
	measured  time.Duration // length of the measured period
	cpu       time.Duration // user+sys CPU time of the process in it
	warmup    time.Duration
	stoppedBy string // "" or why the load ended early
}

// callerResult is one caller's record, written by it alone and read once
// it has finished.
type callerResult struct {
	latencies    []time.Duration // successful increments completed in the measured period
	counts       []int64         // successful increments by counter, warm-up included
	successes    int64           // all successful increments
	measured     int64           // successful increments completed in the measured period
	errors       int64           // all failed increments
	measuredErrs int64           // failed increments completed in the measured period
	firstErrors  []timedError
}

type timedError struct {
	at   time.Time
	text string
}

// published is a caller's running totals for the progress line, stored
// every publishEvery and on each error.
type published struct {
	successes, errors atomic.Int64
	_                 [48]byte
}

// runLoad runs o.callers callers for o.warmup then o.duration over the
// proxies (caller c uses the proxies of local member c % members), printing
// a progress line to progress every second, and returns when all callers
// have finished their last increment. interrupted ends the load early.
func runLoad(interrupted context.Context, stopSignals func(), o options, proxies [][]*counter.Counter, progress io.Writer) *load {
	ld := &load{callers: make([]callerResult, o.callers), warmup: o.warmup}
	pub := make([]published, o.callers)
	perCaller := int(o.duration.Seconds()*float64(min(callerSamplesPerSec, sampleBudget/o.callers))) + 1
	for i := range ld.callers {
		ld.callers[i].latencies = make([]time.Duration, 0, perCaller)
		ld.callers[i].counts = make([]int64, o.counters)
	}

	var stop atomic.Bool
	start := time.Now()
	t0 := start.Add(o.warmup)
	t1 := t0.Add(o.duration)
	var ru0, ru1 time.Duration
	measuring := o.warmup == 0
	if measuring {
		ru0 = cpuTime()
	}
	var wg sync.WaitGroup
	for i := range ld.callers {
		ps := proxies[i%len(proxies)]
		wg.Go(func() { callerLoop(i, ps, o.hot, t0, t1, &stop, &ld.callers[i], &pub[i]) })
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()

	t0Timer := time.NewTimer(time.Until(t0))
	t1Timer := time.NewTimer(time.Until(t1))
	defer t0Timer.Stop()
	defer t1Timer.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := t1
	ended := false
	var lastOps int64
	lastTick := start
	for {
		select {
		case <-t0Timer.C:
			if !measuring {
				ru0 = cpuTime()
				measuring = true
			}
		case <-t1Timer.C:
			if !ended {
				ru1 = cpuTime()
				ended = true
			}
		case <-interrupted.Done():
			stopSignals() // a second SIGINT kills the process
			interrupted = context.Background()
			stop.Store(true)
			if !ended {
				now := time.Now()
				ru1 = cpuTime()
				ended = true
				end = now
				ld.stoppedBy = fmt.Sprintf("interrupted after %v", now.Sub(start).Round(time.Millisecond))
				fmt.Fprintf(progress, "bench: %s; finishing the calls in flight\n", ld.stoppedBy)
			}
		case now := <-tick.C:
			var ops, errs int64
			for i := range pub {
				ops += pub[i].successes.Load()
				errs += pub[i].errors.Load()
			}
			// The phase of the second that ended.
			phase := "measuring"
			if lastTick.Before(t0) {
				phase = "warm-up"
			} else if !lastTick.Before(end) {
				phase = "finishing"
			}
			lastTick = now
			fmt.Fprintf(progress, "bench: %5.1fs %-9s %8d ops/s  errors %d\n",
				now.Sub(start).Seconds(), phase, ops-lastOps, errs)
			lastOps = ops
		case <-done:
			if !ended {
				ru1 = cpuTime()
				end = time.Now()
			}
			if !measuring { // interrupted during the warm-up
				ru0, end = ru1, t0
			}
			if end.After(t1) {
				end = t1
			}
			ld.measured = max(0, end.Sub(t0))
			ld.cpu = ru1 - ru0
			return ld
		}
	}
}

// callerLoop increments counters until t1 (or stop): a uniformly random one
// of ps with a PCG source of its own, or the first one when hot. Every
// success is counted for the self-check; successes and failures that
// complete in [t0, t1) are the measured ones, and the latencies of those
// successes are recorded. The loop writes nothing shared but pub, every
// publishEvery; it reads the stop flag.
func callerLoop(id int, ps []*counter.Counter, hot bool, t0, t1 time.Time, stop *atomic.Bool, res *callerResult, pub *published) {
	rng := rand.New(rand.NewPCG(uint64(id)+1, 0x9e3779b97f4a7c15))
	latencies, counts := res.latencies, res.counts
	var successes, measured, errs, measuredErrs int64
	var firstErrors []timedError
	now := time.Now()
	lastPublish := now
	for !stop.Load() {
		k := 0
		if !hot {
			k = rng.IntN(len(ps))
		}
		// One clock read per increment: an increment's latency runs from
		// the end of the previous one, so it includes this loop's own
		// bookkeeping (tens of nanoseconds).
		began := now
		_, err := ps[k].Inc(context.Background(), 1) // bounded by the invocation timeout (configure)
		now = time.Now()
		inPeriod := !now.Before(t0) && now.Before(t1)
		if err != nil {
			errs++
			if inPeriod {
				measuredErrs++
			}
			if len(firstErrors) < maxFirstErrors {
				firstErrors = append(firstErrors, timedError{now, err.Error()})
			}
		} else {
			successes++
			counts[k]++
			if inPeriod {
				measured++
				latencies = append(latencies, now.Sub(began))
			}
		}
		if err != nil || now.Sub(lastPublish) >= publishEvery {
			pub.successes.Store(successes)
			pub.errors.Store(errs)
			lastPublish = now
		}
		if !now.Before(t1) {
			break
		}
	}
	pub.successes.Store(successes)
	pub.errors.Store(errs)
	*res = callerResult{latencies: latencies, counts: counts, successes: successes, measured: measured,
		errors: errs, measuredErrs: measuredErrs, firstErrors: firstErrors}
}
