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
	"strings"
	"syscall"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"

	// Registers the "counter" service type used by the default config.
	_ "github.com/partita-go/partita/services/counter"
)

// Exit statuses.
const (
	exitOK    = 0
	exitStart = 1 // the member could not start or stop cleanly
	exitUsage = 2 // bad flags or configuration
)

// shutdownTimeout bounds the graceful leave after a signal.
const shutdownTimeout = 30 * time.Second

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is the whole command: it parses args, loads the configuration, runs
// the member until SIGINT or SIGTERM and returns the exit status. Errors go
// to stderr, the start-up line to stdout.
func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case err != nil: // already reported, with the usage
		return exitUsage
	}
	cfg, err := opts.config()
	if err != nil {
		report(stderr, err)
		return exitUsage
	}
	var h slog.Handler
	ho := &slog.HandlerOptions{Level: opts.level.level}
	if opts.format == "json" {
		h = slog.NewJSONHandler(stderr, ho)
	} else {
		h = slog.NewTextHandler(stderr, ho)
	}
	logger := slog.New(h)
	node, err := nodeengine.New(cfg, nodeengine.WithLogger(logger))
	if err != nil {
		report(stderr, err)
		return exitUsage
	}

	// Signals are caught from before Start, so that one arriving while the
	// member joins still ends in a clean shutdown.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := node.Start(ctx); err != nil {
		report(stderr, err)
		return exitStart
	}
	fmt.Fprintf(stdout, "partita member %s listening on %s (cluster %q, %d members)\n",
		node.ID(), node.Address(), cfg.Cluster.Name, len(node.Members()))
	if a := node.MetricsAddress(); a != "" {
		fmt.Fprintf(stdout, "metrics, health and cluster view on http://%s (/metrics, /health/ready, /debug/cluster)\n", a)
	}

	<-ctx.Done()
	node.Logger().Info("shutting down", "reason", context.Cause(ctx).Error())
	stop() // a second signal now stops the process at once
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := node.Shutdown(sctx); err != nil {
		report(stderr, fmt.Errorf("shutdown: %w", err))
		return exitStart
	}
	return exitOK
}

// report writes err to w, each line prefixed "partita: " once (a
// configuration error lists every problem, one per line; the engine's
// errors carry the prefix already).
func report(w io.Writer, err error) {
	for line := range strings.SplitSeq(err.Error(), "\n") {
		fmt.Fprintln(w, "partita: "+strings.TrimPrefix(line, "partita: "))
	}
}

// options are the parsed command line.
type options struct {
	configFile string
	bind       string
	bindSet    bool
	join       joinFlag
	metrics    string
	metricsSet bool
	level      levelFlag
	format     formatFlag
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{format: "text"}
	fs := flag.NewFlagSet("member", flag.ContinueOnError)
	fs.StringVar(&o.configFile, "config", "", "read the configuration from `file` (YAML) instead of the embedded default")
	fs.StringVar(&o.bind, "bind", "", "listen on `host:port`, overriding network.bind (port 0: any free port)")
	fs.Var(&o.join, "join", "join through these members, a comma-separated `list` of host:port, overriding\nnetwork.join.members and disabling multicast (\"\": start alone)")
	fs.StringVar(&o.metrics, "metrics", "", "serve metrics, health and the cluster view on `host:port`, overriding\nmetrics.address (\"\": no HTTP endpoint)")
	fs.Var(&o.level, "log-level", "lowest logged `level`: debug, info, warn or error (default info)")
	fs.Var(&o.format, "log-format", "log line `format`: text or json")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: member [flags]\n\n"+
			"Runs one Partita member until SIGINT or SIGTERM. Without -config it runs the\n"+
			"embedded default configuration: the counter service on 127.0.0.1:5701, joining\n"+
			"by multicast. Logs go to stderr; the start-up line with the address to stdout.\n\n"+
			"Flags:\n")
		fs.PrintDefaults()
	}
	// Parse reports errors itself; silence it so that ours carry the
	// "partita: " prefix, then show the usage after them.
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return nil, err
	}
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q: member takes flags only", fs.Arg(0))
	}
	if err != nil {
		report(stderr, err)
		fs.Usage()
		return nil, errUsageShown
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "bind":
			o.bindSet = true
		case "metrics":
			o.metricsSet = true
		}
	})
	return o, nil
}

// errUsageShown is returned by parseFlags once it has reported a flag
// error and shown the usage.
var errUsageShown = errors.New("bad command line")

// config loads the configuration and applies the flags over it.
func (o *options) config() (*config.Config, error) {
	cfg := config.Default()
	if o.configFile != "" {
		var err error
		if cfg, err = config.Load(o.configFile); err != nil {
			return nil, err
		}
	}
	if o.bindSet {
		cfg.Network.Bind = o.bind
	}
	if o.metricsSet {
		cfg.Metrics.Address = o.metrics
	}
	if o.join.set {
		cfg.Network.Join.Members = o.join.members
		cfg.Network.Join.Multicast.Enabled = false
	}
	if err := cfg.Validate(); err != nil {
		return nil, o.blame(err)
	}
	return cfg, nil
}

// blame rewrites the configuration errors about keys that a flag
// overrode, so that they name the flag rather than a line of the file
// that no longer applies.
func (o *options) blame(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs := j.Unwrap()
		out := make([]error, len(errs))
		for i, e := range errs {
			out[i] = o.blame(e)
		}
		return errors.Join(out...)
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		return err
	}
	var flagName string
	switch {
	case o.bindSet && ce.Key == "network.bind":
		flagName = "-bind"
	case o.join.set && strings.HasPrefix(ce.Key, "network.join.members"):
		flagName = "-join"
	case o.metricsSet && ce.Key == "metrics.address":
		flagName = "-metrics"
	default:
		return err
	}
	c := *ce
	c.Source, c.Line = "flag "+flagName, 0
	return &c
}

// joinFlag is the -join list; set records that the flag was given, even
// empty.
type joinFlag struct {
	set     bool
	members []string
}

func (j *joinFlag) String() string { return strings.Join(j.members, ",") }

func (j *joinFlag) Set(s string) error {
	j.set = true
	j.members = []string{}
	for m := range strings.SplitSeq(s, ",") {
		if m = strings.TrimSpace(m); m != "" {
			j.members = append(j.members, m)
		}
	}
	return nil
}

// levelFlag is -log-level; its zero value is info.
type levelFlag struct{ level slog.Level }

func (l *levelFlag) String() string { return strings.ToLower(l.level.String()) }

func (l *levelFlag) Set(s string) error {
	switch strings.ToLower(s) {
	case "debug":
		l.level = slog.LevelDebug
	case "info":
		l.level = slog.LevelInfo
	case "warn", "warning":
		l.level = slog.LevelWarn
	case "error":
		l.level = slog.LevelError
	default:
		return errors.New("want debug, info, warn or error")
	}
	return nil
}

// formatFlag is -log-format.
type formatFlag string

func (f *formatFlag) String() string { return string(*f) }

func (f *formatFlag) Set(s string) error {
	switch s = strings.ToLower(s); s {
	case "text", "json":
		*f = formatFlag(s)
		return nil
	}
	return errors.New("want text or json")
}
