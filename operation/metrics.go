package operation

import (
	"math/rand/v2"
	"reflect"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metrics of the operation service. The label children of every registered
// operation type are resolved once, at Register, so that the hot path only
// adds to counters and observes histograms (atomic operations, no map
// lookup by label).

// latencyBuckets cover 10 µs to about 9 s.
var latencyBuckets = prometheus.ExponentialBuckets(10e-6, 2.5, 16)

// metrics are the vectors; opStats are their children for one operation
// type.
type metrics struct {
	runs, runErrors        *prometheus.CounterVec
	runSeconds             *prometheus.HistogramVec
	invSeconds             *prometheus.HistogramVec
	invErrors, invRetries  *prometheus.CounterVec
	invTimeouts            *prometheus.CounterVec
	queueWait              *prometheus.HistogramVec
	waitPartition          prometheus.Observer
	waitGeneric            prometheus.Observer
	backupSent             *prometheus.CounterVec
	backupSync, backupAsyn prometheus.Counter
	backupAcked            prometheus.Counter
	backupLate             prometheus.Counter
	backupFailed           prometheus.Counter
	backupAckSeconds       prometheus.Histogram
	backupGaps             prometheus.Counter
	backupAnswers          prometheus.Counter
	answersHeld            prometheus.Counter
	splitBrainRejected     *prometheus.CounterVec
}

// opStats are the metrics of one operation type.
type opStats struct {
	runs, runErrors prometheus.Counter
	run             prometheus.Observer
	inv             prometheus.Observer
	invErrors       prometheus.Counter
	retries         prometheus.Counter
	timeouts        prometheus.Counter
}

func newMetrics() *metrics {
	opLabels := []string{"service", "op"}
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_operation_runs_total",
			Help: "Operations run on this member (primaries and backups), by service and operation type.",
		}, opLabels),
		runErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_operation_errors_total",
			Help: "Operations run on this member whose Run returned an error or panicked.",
		}, opLabels),
		runSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "partita_operation_run_seconds", Buckets: latencyBuckets,
			Help: "Time an operation's Run took on its executor.",
		}, opLabels),
		invSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "partita_invocation_duration_seconds", Buckets: latencyBuckets,
			Help: "Invocations started on this member, from the call to the answer (retries and synchronous backups included).",
		}, opLabels),
		invErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_invocation_errors_total",
			Help: "Invocations started on this member that ended with an error.",
		}, opLabels),
		invRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_invocation_retries_total",
			Help: "Attempts after the first one (wrong target, migrating partition, member left, ...).",
		}, opLabels),
		invTimeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_invocation_timeouts_total",
			Help: "Invocations that ended with spi.ErrTimeout.",
		}, opLabels),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "partita_executor_wait_seconds", Buckets: latencyBuckets,
			Help: "Time a task waited in an executor queue before it ran.",
		}, []string{"executor"}),
		backupSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_backup_sent_total",
			Help: "Backups this member sent as a primary, by mode (sync, async); re-sends not counted.",
		}, []string{"mode"}),
		backupAcked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_backup_acked_total",
			Help: "Synchronous backups acknowledged by their replica.",
		}),
		backupLate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_backup_late_total",
			Help: "Synchronous backups not acknowledged on the first send (refused or lost) and sent again.",
		}),
		backupFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_backup_failed_total",
			Help: "Synchronous backups never acknowledged (the replica member left, or retries ran out).",
		}),
		backupAckSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "partita_backup_ack_seconds", Buckets: latencyBuckets,
			Help: "Time from sending a synchronous backup to its acknowledgement.",
		}),
		backupGaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_backup_gaps_total",
			Help: "Backups this member received, as a replica, ahead of a missing one (the replica asks for a sync).",
		}),
		backupAnswers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_backup_answers_total",
			Help: "Invocations of this member answered by the partition's only synchronous backup (held here, or forwarding the answer) before the primary's answer, if any.",
		}),
		answersHeld: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "partita_operation_answers_held_total",
			Help: "Answers of operations without synchronous backups of their own (reads) held until the synchronous backups of the writes before them on their partition were done.",
		}),
		splitBrainRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "partita_split_brain_protection_rejected_total",
			Help: "Operations this member refused with spi.ErrSplitBrainProtection (as the member that would run them, or as the caller failing fast), by service: its member list was shorter than the service's split-brain-protection.min-size.",
		}, []string{"service"}),
	}
	m.waitPartition = m.queueWait.WithLabelValues("partition")
	m.waitGeneric = m.queueWait.WithLabelValues("generic")
	m.backupSync = m.backupSent.WithLabelValues("sync")
	m.backupAsyn = m.backupSent.WithLabelValues("async")
	return m
}

// RegisterMetrics adds the service's metrics to r (call it once).
func (s *Service) RegisterMetrics(r prometheus.Registerer) error {
	m := s.m
	for _, c := range []prometheus.Collector{m.runs, m.runErrors, m.runSeconds, m.invSeconds, m.invErrors,
		m.invRetries, m.invTimeouts, m.queueWait, m.backupSent, m.backupAcked, m.backupLate, m.backupFailed,
		m.backupAckSeconds, m.backupGaps, m.backupAnswers, m.answersHeld, m.splitBrainRejected, stateCollector{s}} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) forType(service string, t reflect.Type) *opStats {
	name := t.Name()
	if t.Kind() == reflect.Pointer {
		name = t.Elem().Name()
	}
	return &opStats{
		runs:      m.runs.WithLabelValues(service, name),
		runErrors: m.runErrors.WithLabelValues(service, name),
		run:       m.runSeconds.WithLabelValues(service, name),
		inv:       m.invSeconds.WithLabelValues(service, name),
		invErrors: m.invErrors.WithLabelValues(service, name),
		retries:   m.invRetries.WithLabelValues(service, name),
		timeouts:  m.invTimeouts.WithLabelValues(service, name),
	}
}

// stats returns the metrics of op's type (nil for an unregistered type).
func (e *serviceEntry) stats(op any) *opStats { return e.statsByType[reflect.TypeOf(op)] }

// OperationsRun returns how many operations this member ran since it
// started, all services and types together (for the cluster view's rates).
func (s *Service) OperationsRun() uint64 {
	var total float64
	var d dto.Metric
	for _, e := range s.byID {
		for _, st := range e.statsByType {
			if st.runs.Write(&d) == nil && d.Counter != nil {
				total += d.Counter.GetValue()
			}
		}
	}
	return uint64(total)
}

// stateCollector reads gauges of the service's state when scraped.
type stateCollector struct{ s *Service }

var (
	queueDepthDesc = prometheus.NewDesc("partita_executor_queue_depth",
		"Tasks waiting in an executor's queue (partition executors by index; the generic executors share one queue).",
		[]string{"executor"}, nil)
	dedupDesc = prometheus.NewDesc("partita_exactlyonce_records",
		"Invocation records held for exactly-once retries (all partitions of this member, within operations.dedup-window).",
		nil, nil)
	syncsDesc = prometheus.NewDesc("partita_replica_syncs_pending",
		"Backup replicas on this member waiting for a full copy from their primary.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueDepthDesc
	ch <- dedupDesc
	ch <- syncsDesc
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	if s.running.Load() {
		for i, e := range s.partition {
			ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(len(e.queue)), strconv.Itoa(i))
		}
		ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(len(s.generic.queue)), "generic")
	}
	var records int64
	for i := range s.records {
		records += s.records[i].n.Load()
	}
	ch <- prometheus.MustNewConstMetric(dedupDesc, prometheus.GaugeValue, float64(records))
	ch <- prometheus.MustNewConstMetric(syncsDesc, prometheus.GaugeValue, float64(s.SyncsPending()))
}

// One task in sampleEvery is timed (queue wait, run time, backup ack
// time): on some machines reading the clock costs more than all the rest
// of the metrics, and a sample is enough for latency quantiles. The
// counters count every task.
const sampleEvery = 8

// sampled decides whether a task entering a queue is timed.
func sampled() bool { return rand.Uint32()%sampleEvery == 0 }

// since returns the seconds from start (unix nanoseconds) to now.
func since(start, now int64) float64 { return float64(now-start) / float64(time.Second) }
