// Package demo holds what the example programs share to print a readable
// story: members and the program write to one writer.
package demo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/services/counter"
)

// Main runs an example: run gets a context that SIGINT cancels and
// standard output; an error is printed, prefixed with the example's name,
// and ends the process with status 1.
func Main(name string, run func(ctx context.Context, w io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// DropTime is a slog ReplaceAttr that drops the time: the members run in
// this process, so it adds nothing and the lines stay close to the seed's.
func DropTime(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		return slog.Attr{}
	}
	return a
}

// Writer serialises the writes of the members' loggers and of the
// program, and drops those that come after Close.
type Writer struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

// NewWriter returns a Writer over w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write implements io.Writer.
func (s *Writer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return len(p), nil
	}
	return s.w.Write(p)
}

// Close drops every later write.
func (s *Writer) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// MemberIndex returns the start-order index of the member with that id, or
// -1.
func MemberIndex(members []*nodeengine.Node, id string) int {
	return slices.IndexFunc(members, func(n *nodeengine.Node) bool { return n.ID() == id })
}

// CounterLogLevel sets the level ("info" or "debug") of the counter
// service's per-increment "Executing ..." lines in cfg.
func CounterLogLevel(cfg *config.Config, level string) {
	for j, sc := range cfg.Services {
		if sc.Type == counter.TypeName {
			cfg.Services[j].Properties = sc.Properties.With("log-level", level)
		}
	}
}
