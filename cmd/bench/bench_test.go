package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A short run of the whole command: 3 members, 8 callers on 100 counters
// for 200 ms of warm-up and 1 s of measured load, traced. Every
// acknowledged increment must be in the counters, none twice.
func TestRunSmoke(t *testing.T) {
	var stdout, stderr bytes.Buffer
	tracePath := filepath.Join(t.TempDir(), "trace.out")
	status := run([]string{"-members", "3", "-callers", "8", "-counters", "100",
		"-duration", "1s", "-warmup", "200ms", "-json", "-trace", tracePath}, &stdout, &stderr)
	defer func() {
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	}()
	var res result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("status %d, stdout is not the JSON result: %v", status, err)
	}
	if status != exitOK {
		t.Errorf("exit status %d, want %d", status, exitOK)
	}
	if !res.OK || res.Lost != 0 || res.Duplicated != 0 || res.Unreadable != 0 {
		t.Errorf("self-check failed: ok=%v lost=%d duplicated=%d unreadable=%d", res.OK, res.Lost, res.Duplicated, res.Unreadable)
	}
	if res.ThroughputOps <= 0 || res.MeasuredOps <= 0 {
		t.Errorf("throughput %v ops/s (%d increments), want more than 0", res.ThroughputOps, res.MeasuredOps)
	}
	if res.TotalOps < res.MeasuredOps {
		t.Errorf("%d increments in all, fewer than the %d measured", res.TotalOps, res.MeasuredOps)
	}
	if res.Members != 3 || res.Callers != 8 || res.Counters != 100 || res.SyncBackups != 1 || res.AsyncBackups != 0 {
		t.Errorf("result describes %d members, %d callers, %d counters, %d+%d backups; want 3, 8, 100, 1+0",
			res.Members, res.Callers, res.Counters, res.SyncBackups, res.AsyncBackups)
	}
	if res.P50us <= 0 || res.P50us > res.P99us || res.P99us > res.P999us || res.P999us > res.MaxUs {
		t.Errorf("latencies p50 %v p99 %v p999 %v max %v µs are not ordered and positive", res.P50us, res.P99us, res.P999us, res.MaxUs)
	}
	if res.DurationS != 1 {
		t.Errorf("measured period %vs, want 1s", res.DurationS)
	}
	if !strings.Contains(stderr.String(), "ops/s") {
		t.Errorf("no progress line on stderr")
	}
	if b, err := os.ReadFile(tracePath); err != nil || !bytes.HasPrefix(b, []byte("go 1.")) || len(b) < 1000 {
		t.Errorf("-trace wrote %d bytes (%v), want a Go execution trace", len(b), err)
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-members", "0"},
		{"-members", "2", "-join", "127.0.0.1:5701"},
		{"-callers", "0"},
		{"-counters", "0"},
		{"-duration", "0s"},
		{"-warmup", "-1s"},
		{"-sync-backups", "4", "-async-backups", "3"},
		{"-async-backups", "-1"},
		{"-partition-threads", "-1"},
		{"extra"},
		{"-nope"},
	} {
		var stdout, stderr bytes.Buffer
		if got := run(args, &stdout, &stderr); got != exitUsage {
			t.Errorf("run(%q) = %d, want %d", args, got, exitUsage)
		}
	}
	o, err := parseFlags([]string{"-hot", "-counters", "50"}, &bytes.Buffer{})
	if err != nil || o.counters != 1 || !o.hot {
		t.Errorf("-hot -counters 50: counters %d, hot %v, error %v; want 1 hot counter", o.counters, o.hot, err)
	}
	o, err = parseFlags(nil, &bytes.Buffer{})
	want := options{members: 3, callers: 64, counters: 10000, duration: 10 * time.Second, warmup: 2 * time.Second, syncBackups: 1,
		partitionThreads: max(1, runtime.GOMAXPROCS(0)/3)}
	if err != nil || o != want {
		t.Errorf("defaults %+v (error %v), want %+v", o, err, want)
	}
	// Members in this process share its cores; a member that joins a
	// cluster runs alone here; an explicit count is kept.
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"-members", "1"}, runtime.GOMAXPROCS(0)},
		{[]string{"-join", "127.0.0.1:5701"}, runtime.GOMAXPROCS(0)},
		{[]string{"-members", "64"}, 1},
		{[]string{"-partition-threads", "5"}, 5},
	} {
		o, err := parseFlags(c.args, &bytes.Buffer{})
		if err != nil || o.partitionThreads != c.want {
			t.Errorf("%q: partition threads %d (error %v), want %d", c.args, o.partitionThreads, err, c.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i))
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}} {
		if got := percentile(s, c.p); got != c.want {
			t.Errorf("percentile(1..1000, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v, want 0", got)
	}
}

func TestCheck(t *testing.T) {
	ok := []bool{true, true, true, true}
	for _, c := range []struct {
		name                   string
		expected, values, base []int64
		ok                     []bool
		errors                 int64
		lost, duplicated       int64
		unreadable             int
	}{
		{name: "exact", expected: []int64{3, 0, 5, 1}, values: []int64{3, 0, 5, 1}, ok: ok},
		{name: "lost", expected: []int64{3, 0, 5, 1}, values: []int64{2, 0, 3, 1}, ok: ok, lost: 3},
		{name: "errors may apply", expected: []int64{3, 0, 5, 1}, values: []int64{4, 1, 5, 1}, ok: ok, errors: 2},
		{name: "beyond the errors", expected: []int64{3, 0, 5, 1}, values: []int64{5, 1, 6, 1}, ok: ok, errors: 2, duplicated: 2},
		{name: "lost and duplicated do not cancel", expected: []int64{3, 0, 5, 1}, values: []int64{2, 1, 5, 1}, ok: ok, lost: 1, duplicated: 1},
		{name: "baseline", expected: []int64{3, 0, 5, 1}, values: []int64{13, 7, 5, 1}, base: []int64{10, 7, 0, 0}, ok: ok},
		{name: "unreadable", expected: []int64{3, 0, 5, 1}, values: []int64{0, 0, 5, 1}, ok: []bool{false, true, true, true}, unreadable: 1},
	} {
		lost, dup, unreadable := check(c.expected, c.values, c.ok, c.base, c.errors)
		if lost != c.lost || dup != c.duplicated || unreadable != c.unreadable {
			t.Errorf("%s: lost=%d duplicated=%d unreadable=%d, want %d %d %d", c.name, lost, dup, unreadable, c.lost, c.duplicated, c.unreadable)
		}
	}
}
