package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"sync"
	"time"
)

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1 // the self-check failed, or the cluster could not run
	exitUsage  = 2 // bad flags
)

// maxBackups is the most backups a partition (and the counter) can have.
const maxBackups = 6

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the command's flags.
type options struct {
	members          int
	join             string
	callers          int
	counters         int
	hot              bool
	duration         time.Duration
	warmup           time.Duration
	syncBackups      int
	asyncBackups     int
	json             bool
	partitionThreads int
	cpuProfile       string
	trace            string
}

// parseFlags parses args; errors are reported to stderr with the usage.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.members, "members", 3, "members to start in this process (on 127.0.0.1, free ports)")
	fs.StringVar(&o.join, "join", "", "host:port of a running member: start one local member that joins its cluster and drive the load through it")
	fs.IntVar(&o.callers, "callers", 64, "concurrent callers, spread round-robin over the local members")
	fs.IntVar(&o.counters, "counters", 10000, `counters, named "bench-<i>"`)
	fs.BoolVar(&o.hot, "hot", false, `one hot counter ("bench-0") instead of -counters`)
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured load period")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "load before the measured period (not measured, but self-checked)")
	fs.IntVar(&o.syncBackups, "sync-backups", 1, "synchronous backups of each increment (counter backup-count)")
	fs.IntVar(&o.asyncBackups, "async-backups", 0, "asynchronous backups of each increment (counter async-backup-count)")
	fs.BoolVar(&o.json, "json", false, "print one JSON object instead of the text report")
	fs.IntVar(&o.partitionThreads, "partition-threads", 0, "partition executor goroutines per member (0: the member's share of GOMAXPROCS, at least 1)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the load (warm-up included) to `file` (go tool pprof)")
	fs.StringVar(&o.trace, "trace", "", "write a Go execution trace of the load (warm-up included) to `file` (go tool trace; large and slows the load: use a short -duration)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: bench [flags]\n\nA self-checking load generator for the counter service (go doc ./cmd/bench).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	membersSet := false
	fs.Visit(func(f *flag.Flag) { membersSet = membersSet || f.Name == "members" })
	var bad error
	switch {
	case fs.NArg() > 0:
		bad = fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.join != "" && membersSet:
		bad = errors.New("-members and -join exclude each other: -join starts one local member")
	case o.join == "" && o.members < 1:
		bad = fmt.Errorf("-members %d: want at least 1", o.members)
	case o.callers < 1:
		bad = fmt.Errorf("-callers %d: want at least 1", o.callers)
	case o.counters < 1:
		bad = fmt.Errorf("-counters %d: want at least 1", o.counters)
	case o.duration <= 0:
		bad = fmt.Errorf("-duration %v: want more than 0", o.duration)
	case o.warmup < 0:
		bad = fmt.Errorf("-warmup %v: want 0 or more", o.warmup)
	case o.syncBackups < 0 || o.asyncBackups < 0 || o.syncBackups+o.asyncBackups > maxBackups:
		bad = fmt.Errorf("-sync-backups %d + -async-backups %d: each 0 or more, together at most %d",
			o.syncBackups, o.asyncBackups, maxBackups)
	case o.partitionThreads < 0:
		bad = fmt.Errorf("-partition-threads %d: want 0 or more", o.partitionThreads)
	}
	if bad != nil {
		fmt.Fprintln(stderr, "bench:", bad)
		fs.Usage()
		return o, bad
	}
	if o.join != "" {
		o.members = 1
	}
	if o.hot {
		o.counters = 1
	}
	if o.partitionThreads == 0 {
		o.partitionThreads = shareOfCores(o.members)
	}
	return o, nil
}

// shareOfCores is the partition executors each of n members in this
// process gets by default: its share of GOMAXPROCS, at least 1. The members
// share the process's cores, so GOMAXPROCS executors each (a member's own
// default) would put n times as many executor goroutines on the cores as
// there are cores, each waking for fewer operations at a time (at 3
// members on 2 cores, one each measured 1.04×, 0.96× and 1.14× in three
// interleaved series; docs/performance.md, session 8).
func shareOfCores(n int) int {
	return max(1, runtime.GOMAXPROCS(0)/n)
}

// run is the whole command: it parses args, starts the members, runs the
// load, checks the counters, prints the report to stdout (progress and the
// members' warnings to stderr), shuts the members down and returns the exit
// status. SIGINT ends the load early; the self-check still runs.
func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case err != nil:
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	// Members log from their own goroutines, and memberlist may log a
	// line after Shutdown returned: nothing reaches stderr once run has
	// returned.
	sw := &syncWriter{w: stderr}
	defer sw.close()
	log := slog.New(slog.NewTextHandler(sw, &slog.HandlerOptions{Level: slog.LevelWarn}))

	res, err := bench(ctx, stop, opts, log, sw)
	status := exitOK
	if res != nil {
		var werr error
		if opts.json {
			werr = res.writeJSON(stdout)
		} else {
			werr = res.writeText(stdout)
		}
		err = errors.Join(err, werr)
		if !res.OK {
			status = exitFailed
		}
	}
	if err != nil {
		fmt.Fprintln(sw, "bench:", err)
		status = exitFailed
	}
	return status
}

// bench starts the members, runs the load and the self-check, and shuts
// the members down. interrupted ends the load early; stopSignals is called
// then, so that a second SIGINT kills the process. A result comes back
// whenever the load ran, even if the shutdown then failed (err).
func bench(interrupted context.Context, stopSignals func(), o options, log *slog.Logger, progress io.Writer) (res *result, err error) {
	cl, err := startCluster(interrupted, o, log)
	if cl != nil {
		defer func() { err = errors.Join(err, cl.shutdown()) }()
	}
	if err != nil {
		return nil, err
	}
	if err := cl.createProxies(interrupted, o.counters); err != nil {
		return nil, err
	}
	// A cluster joined with -join may hold the counters of earlier runs:
	// the self-check compares the increase. A fresh cluster holds none.
	var baseline []int64
	if o.join != "" {
		vals, ok := cl.readValues()
		if n := countFalse(ok); n > 0 {
			return nil, fmt.Errorf("%d counters could not be read before the load", n)
		}
		baseline = vals
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	if o.trace != "" {
		f, err := os.Create(o.trace)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return nil, err
		}
	}
	ld := runLoad(interrupted, stopSignals, o, cl.proxies, progress)
	if o.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if o.trace != "" {
		trace.Stop()
	}
	res = newResult(o, cl, ld)
	res.selfCheck(cl, ld, baseline)
	return res, nil
}

// syncWriter serialises the writes of the members' loggers and of the
// progress lines, and drops those that come after close.
type syncWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return len(p), nil
	}
	return s.w.Write(p)
}

func (s *syncWriter) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}
