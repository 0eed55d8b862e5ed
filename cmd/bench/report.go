package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"time"
)

// result is the bench's outcome: the text report and the JSON object.
type result struct {
	ThroughputOps float64 `json:"throughput_ops"` // successful increments per second, measured period
	P50us         float64 `json:"p50_us"`
	P99us         float64 `json:"p99_us"`
	P999us        float64 `json:"p999_us"`
	MaxUs         float64 `json:"max_us"`
	Errors        int64   `json:"errors"`        // failed increments, warm-up included
	CPUsPer1k     float64 `json:"cpu_s_per_1k"`  // process CPU seconds (user+sys) per 1,000 measured increments
	Lost          int64   `json:"lost"`          // acknowledged increments missing from the counters
	Duplicated    int64   `json:"duplicated"`    // increments applied beyond the successes and the errors
	Indeterminate int64   `json:"indeterminate"` // errored increments, which may or may not have applied
	Unreadable    int     `json:"unreadable"`    // counters the self-check could not read
	OK            bool    `json:"ok"`            // lost, duplicated and unreadable are all 0

	MeasuredOps      int64    `json:"measured_ops"`    // successful increments in the measured period
	TotalOps         int64    `json:"total_ops"`       // successful increments, warm-up included
	MeasuredErrors   int64    `json:"measured_errors"` // failed increments in the measured period
	CPUs             float64  `json:"cpu_s"`           // process CPU seconds in the measured period
	DurationS        float64  `json:"duration_s"`      // length of the measured period
	WarmupS          float64  `json:"warmup_s"`
	Members          int      `json:"members"`       // members of the cluster
	LocalMembers     int      `json:"local_members"` // of which in this process
	Callers          int      `json:"callers"`
	Counters         int      `json:"counters"`
	Hot              bool     `json:"hot"`
	SyncBackups      int      `json:"sync_backups"`
	AsyncBackups     int      `json:"async_backups"`
	PartitionThreads int      `json:"partition_threads"` // per member
	GOMAXPROCS       int      `json:"gomaxprocs"`
	GoVersion        string   `json:"go_version"`
	FirstErrors      []string `json:"first_errors,omitempty"`
	Stopped          string   `json:"stopped,omitempty"` // why the load ended early
}

// newResult computes the performance figures of ld.
func newResult(o options, cl *cluster, ld *load) *result {
	r := &result{Members: cl.size, LocalMembers: len(cl.members), Callers: o.callers, Counters: o.counters,
		Hot: o.hot, SyncBackups: o.syncBackups, AsyncBackups: o.asyncBackups, PartitionThreads: o.partitionThreads,
		GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
		DurationS: ld.measured.Seconds(), WarmupS: ld.warmup.Seconds(), CPUs: round(ld.cpu.Seconds(), 1e3), Stopped: ld.stoppedBy}
	var samples []time.Duration
	var firstErrors []timedError
	for i := range ld.callers {
		c := &ld.callers[i]
		r.MeasuredOps += c.measured
		r.TotalOps += c.successes
		r.Errors += c.errors
		r.MeasuredErrors += c.measuredErrs
		samples = append(samples, c.latencies...)
		firstErrors = append(firstErrors, c.firstErrors...)
	}
	if ld.measured > 0 {
		r.ThroughputOps = math.Round(float64(r.MeasuredOps) / ld.measured.Seconds())
	}
	if r.MeasuredOps > 0 {
		r.CPUsPer1k = round(ld.cpu.Seconds()/float64(r.MeasuredOps)*1000, 1e6)
	}
	slices.Sort(samples)
	r.P50us = micros(percentile(samples, 0.50))
	r.P99us = micros(percentile(samples, 0.99))
	r.P999us = micros(percentile(samples, 0.999))
	r.MaxUs = micros(percentile(samples, 1))
	slices.SortFunc(firstErrors, func(a, b timedError) int { return a.at.Compare(b.at) })
	for _, e := range firstErrors[:min(len(firstErrors), maxFirstErrors)] {
		r.FirstErrors = append(r.FirstErrors, e.text)
	}
	return r
}

// percentile returns the nearest-rank p-quantile (0 < p <= 1) of sorted,
// or 0 when it is empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// micros is d in microseconds, to 0.1 µs.
func micros(d time.Duration) float64 { return round(float64(d)/1e3, 10) }

// round rounds x to 1/per.
func round(x, per float64) float64 { return math.Round(x*per) / per }

// selfCheck reads every counter once the load has stopped and compares it
// with the successful increments the callers counted (plus baseline, the
// values before the load, when not nil).
func (r *result) selfCheck(cl *cluster, ld *load, baseline []int64) {
	expected := make([]int64, r.Counters)
	for i := range ld.callers {
		for k, n := range ld.callers[i].counts {
			expected[k] += n
		}
	}
	values, ok := cl.readValues()
	r.Lost, r.Duplicated, r.Unreadable = check(expected, values, ok, baseline, r.Errors)
	r.Indeterminate = r.Errors
	r.OK = r.Lost == 0 && r.Duplicated == 0 && r.Unreadable == 0
}

// check compares each counter's value (minus its baseline, if any) that
// could be read (ok) with its expected count of acknowledged increments.
// lost sums the missing increments; duplicated sums the extra ones beyond
// the errors, each of which may have been applied.
func check(expected, values []int64, ok []bool, baseline []int64, errors int64) (lost, duplicated int64, unreadable int) {
	var extra int64
	for k, v := range values {
		if !ok[k] {
			unreadable++
			continue
		}
		if baseline != nil {
			v -= baseline[k]
		}
		lost += max(0, expected[k]-v)
		extra += max(0, v-expected[k])
	}
	return lost, max(0, extra-errors), unreadable
}

func countFalse(ok []bool) int {
	n := 0
	for _, b := range ok {
		if !b {
			n++
		}
	}
	return n
}

// selfCheckLine is the self-check verdict.
func (r *result) selfCheckLine() string {
	var b strings.Builder
	fmt.Fprintf(&b, "self-check: lost=%d duplicated=%d indeterminate=%d", r.Lost, r.Duplicated, r.Indeterminate)
	if r.Unreadable > 0 {
		fmt.Fprintf(&b, " unreadable=%d", r.Unreadable)
	}
	if r.OK {
		b.WriteString(" OK")
	} else {
		b.WriteString(" FAILED")
	}
	return b.String()
}

// writeText writes the human report.
func (r *result) writeText(w io.Writer) error {
	var b strings.Builder
	counters := plural(r.Counters, "counter")
	if r.Hot {
		counters = "1 hot counter"
	}
	members := fmt.Sprintf("%d members", r.Members)
	if r.LocalMembers != r.Members {
		members = fmt.Sprintf("%d members (%d in this process)", r.Members, r.LocalMembers)
	}
	fmt.Fprintf(&b, "partita bench: %s, %d callers, %s, backups %d sync + %d async\n",
		members, r.Callers, counters, r.SyncBackups, r.AsyncBackups)
	fmt.Fprintf(&b, "runtime:    GOMAXPROCS %d, partition threads %d per member, %s\n", r.GOMAXPROCS, r.PartitionThreads, r.GoVersion)
	if r.Stopped != "" {
		fmt.Fprintf(&b, "stopped:    %s\n", r.Stopped)
	}
	fmt.Fprintf(&b, "throughput: %.0f ops/s (%d increments in %s, after %s of warm-up)\n",
		r.ThroughputOps, r.MeasuredOps, seconds(r.DurationS), seconds(r.WarmupS))
	fmt.Fprintf(&b, "latency:    p50 %s  p99 %s  p999 %s  max %s\n",
		usText(r.P50us), usText(r.P99us), usText(r.P999us), usText(r.MaxUs))
	fmt.Fprintf(&b, "errors:     %d (%d in the measured period)\n", r.Errors, r.MeasuredErrors)
	for _, e := range r.FirstErrors {
		fmt.Fprintf(&b, "            %s\n", e)
	}
	fmt.Fprintf(&b, "cpu:        %.4f s per 1,000 increments (%.2f s user+sys in the measured period)\n",
		r.CPUsPer1k, r.CPUs)
	fmt.Fprintf(&b, "checked:    %d increments on %s, warm-up included\n", r.TotalOps, plural(r.Counters, "counter"))
	b.WriteString(r.selfCheckLine() + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// writeJSON writes the result as one JSON object.
func (r *result) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

func usText(us float64) string {
	return time.Duration(us * float64(time.Microsecond)).Round(time.Microsecond).String()
}
