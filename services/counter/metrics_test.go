package counter_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/services/counter"
)

// After a known number of increments on a 3-member cluster with one
// synchronous backup, the members' /metrics add up exactly: every
// increment ran once on a primary and once on a backup, every invocation
// was timed, every backup sent and acknowledged once, every partition owned
// once, and the counter service exports how many counters each member
// holds.
func TestMetricsAddUpAfterIncrements(t *testing.T) {
	c := clustertest.New(t, 3)
	c.WaitClusterSafe()
	const callers, total, counters = 12, 3000, 50
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		ctrs := make([]interface {
			Inc(context.Context, int64) (int64, error)
		}, counters)
		for k := range ctrs {
			ctrs[k] = getCounter(t, c, g%3, fmt.Sprintf("m%d", k))
		}
		wg.Go(func() {
			for i := g; i < total; i += callers {
				if _, err := ctrs[i%counters].Inc(ctx, 1); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The backups of the last increments are acknowledged before their
	// callers returned, and the cluster is stable: nothing moves now.
	sumOf := func(name string, labels ...string) float64 {
		var v float64
		for _, m := range c.Members() {
			v += clustertest.Scrape(t, m).Value(name, labels...)
		}
		return v
	}
	inc := []string{"service", "CounterService", "op", "IncOperation"}
	checks := []struct {
		what    string
		got     float64
		want    float64
		atLeast bool
	}{
		{"primary runs", sumOf("partita_operation_runs_total", inc...), total, false},
		{"backup runs", sumOf("partita_operation_runs_total", "service", "CounterService", "op", "IncBackupOperation"), total, false},
		{"timed invocations", sumOf("partita_invocation_duration_seconds", inc...), total, false},
		// Run, wait and ack times are sampled (one task in 8).
		{"run latencies", sumOf("partita_operation_run_seconds", inc...), 1, true},
		{"failed invocations", sumOf("partita_invocation_errors_total", inc...), 0, false},
		{"sync backups sent", sumOf("partita_backup_sent_total", "mode", "sync"), total, false},
		{"backups acked", sumOf("partita_backup_acked_total"), total, false},
		{"backup ack latencies", sumOf("partita_backup_ack_seconds"), 1, true},
		{"async backups sent", sumOf("partita_backup_sent_total", "mode", "async"), 0, false},
		{"partitions owned", sumOf("partita_partition_owned"), 271, false},
		{"backup replicas", sumOf("partita_partition_backups"), 271, false},
		{"members seen", sumOf("partita_cluster_size"), 9, false},
		{"masters", sumOf("partita_cluster_master"), 1, false},
		{"ready members", sumOf("partita_member_ready"), 3, false},
		{"primary counters", sumOf("partita_counter_counters", "replica", "primary"), counters, false},
		{"backup counters", sumOf("partita_counter_counters", "replica", "backup"), counters, false},
		{"exactly-once records", sumOf("partita_exactlyonce_records"), 1, true},
		{"queue waits", sumOf("partita_executor_wait_seconds", "executor", "partition"), 1, true},
		{"Go runtime", sumOf("go_goroutines"), 1, true},
	}
	for _, ch := range checks {
		if (!ch.atLeast && ch.got != ch.want) || (ch.atLeast && ch.got < ch.want) {
			t.Errorf("%s: metrics sum to %v, want %v%s", ch.what, ch.got, ch.want, map[bool]string{true: " or more"}[ch.atLeast])
		}
	}
	// Every member holds the same table version and reports the cluster
	// safe.
	versions := map[float64]bool{}
	for _, m := range c.Members() {
		s := clustertest.Scrape(t, m)
		versions[s.Value("partita_partition_table_version")] = true
		if s.Value("partita_cluster_safe") != 1 {
			t.Errorf("member %s: partita_cluster_safe = %v, want 1", m.Address(), s.Value("partita_cluster_safe"))
		}
	}
	if len(versions) != 1 {
		t.Errorf("members report table versions %v, want one", versions)
	}
}

// At info, a member's log tells the cluster's story (joins, tables,
// migrations with their progress) and holds no line per operation.
func TestInfoLogsShowClusterNotOperations(t *testing.T) {
	var logs clustertest.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nodes, err := nodeengine.StartLocal(ctx, 3, func(i int, cfg *config.Config) { cfg.UseFastFailureDetection() },
		nodeengine.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, n := range slices.Backward(nodes) {
			n.Shutdown(context.Background())
		}
	}()
	clustertest.WaitStable(t, 60*time.Second, nodes...)
	obj, err := nodes[1].Proxies().Get(ctx, counter.ServiceName, "logged")
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if _, err := obj.(*counter.Counter).Inc(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	text := logs.String()
	for _, want := range []string{`msg="member joined"`, `msg="partition table installed"`, `msg="migrations planned"`,
		`msg="migration progress"`, `msg="metrics and health endpoints"`} {
		if !strings.Contains(text, want) {
			t.Errorf("info log lacks %s", want)
		}
	}
	if strings.Contains(text, "Executing") {
		t.Errorf("info log holds per-operation lines:\n%s", text)
	}
}
