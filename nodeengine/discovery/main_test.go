package discovery

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// logRecord is one captured log record.
type logRecord struct {
	Level   slog.Level
	Message string
}

// logRecorder is a slog.Handler that keeps every record, shared by the
// handlers derived from it with WithAttrs and WithGroup.
type logRecorder struct {
	mu      *sync.Mutex
	records *[]logRecord
}

func newLogRecorder() logRecorder {
	return logRecorder{mu: new(sync.Mutex), records: new([]logRecord)}
}

func (r logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.records = append(*r.records, logRecord{Level: rec.Level, Message: rec.Message})
	return nil
}

func (r logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r logRecorder) WithGroup(string) slog.Handler      { return r }

// count returns how many records have exactly this level and message.
func (r logRecorder) count(level slog.Level, msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range *r.records {
		if rec.Level == level && rec.Message == msg {
			n++
		}
	}
	return n
}

// dump returns all records, one a line, for failure messages.
func (r logRecorder) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var sb strings.Builder
	for _, rec := range *r.records {
		sb.WriteString(rec.Level.String() + " " + rec.Message + "\n")
	}
	return sb.String()
}
