package clustertest

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics are the metric families one scrape of a member's /metrics
// returned, by name.
type Metrics map[string]*dto.MetricFamily

// Scrape fetches member n's /metrics over HTTP (its metrics.address, which
// the cluster's default config sets to a free loopback port) and parses
// it; it fails the test on any error.
func Scrape(t testing.TB, n *nodeengine.Node) Metrics {
	t.Helper()
	if n.MetricsAddress() == "" {
		t.Fatalf("member %s serves no metrics (metrics.address is empty)", n.Address())
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + n.MetricsAddress() + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", n.Address(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %s: %s", n.Address(), resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: parse: %v", n.Address(), err)
	}
	return Metrics(fams)
}

// Value returns the sum of the samples of metric name whose labels include
// the given name/value pairs (a counter's or gauge's value, a histogram's
// or summary's count). A metric that is absent sums to 0.
func (m Metrics) Value(name string, labels ...string) float64 {
	if len(labels)%2 != 0 {
		panic(fmt.Sprintf("clustertest: Metrics.Value(%q): labels must be name/value pairs", name))
	}
	f := m[name]
	if f == nil {
		return 0
	}
	var sum float64
next:
	for _, s := range f.GetMetric() {
		for i := 0; i < len(labels); i += 2 {
			if !hasLabel(s, labels[i], labels[i+1]) {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		case s.Summary != nil:
			sum += float64(s.Summary.GetSampleCount())
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum
}

func hasLabel(s *dto.Metric, name, value string) bool {
	for _, l := range s.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}
