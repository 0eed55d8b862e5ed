package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/partita-go/partita/spi"
)

// fakeCounter stands in for services/counter, which registers itself but
// cannot be imported here (it imports config).
type fakeCounter struct{}

func TestMain(m *testing.M) {
	RegisterService("counter", func() spi.Service { return &fakeCounter{} })
	os.Exit(m.Run())
}

// register registers a test-only type and removes it when t ends.
func register(t *testing.T, typeName string) {
	t.Helper()
	RegisterService(typeName, func() spi.Service { return struct{}{} })
	t.Cleanup(func() {
		registry.Lock()
		delete(registry.factories, typeName)
		registry.Unlock()
	})
}

func TestDefault(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	want := &Config{
		Source:  DefaultSource,
		Cluster: ClusterConfig{Name: "dev"},
		Network: NetworkConfig{
			Bind:                  "127.0.0.1:5701",
			PortAutoIncrement:     true,
			PortCount:             100,
			MaxPendingConnections: 1024,
			MaxPendingPerAddress:  256,
			Join: JoinConfig{
				Members:   []string{},
				Multicast: MulticastConfig{Enabled: true, Group: "224.2.2.3:54327"},
			},
		},
		Partitions: PartitionsConfig{Count: 271, BackupCount: 1, AntiEntropyInterval: 30 * time.Second},
		Operations: OperationsConfig{
			PartitionThreads:  0,
			QueueSize:         4096,
			InvocationTimeout: 120 * time.Second,
			RetryPause:        10 * time.Millisecond,
			DedupWindow:       10 * time.Second,
			BackupAckTimeout:  10 * time.Second,
			FrameBodyTimeout:  10 * time.Second,
		},
		Membership: MembershipConfig{
			ProbeInterval:           time.Second,
			ProbeTimeout:            500 * time.Millisecond,
			SuspicionMult:           4,
			SuspicionMaxTimeoutMult: 2,
			DeadOnRefusedPort:       true,
			GossipInterval:          200 * time.Millisecond,
			PushPullInterval:        15 * time.Second,
		},
		Migration:  MigrationConfig{Parallel: 4, StepTimeout: 30 * time.Second, ShutdownTimeout: time.Minute},
		SplitBrain: SplitBrainConfig{FirstProbeDelay: 300 * time.Second, ProbeInterval: 120 * time.Second, RememberDead: time.Hour},
		Metrics:    MetricsConfig{Address: "127.0.0.1:9701"},
	}
	got := *c
	got.Services, got.lines = nil, nil
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("Default() =\n%+v\nwant\n%+v", got, *want)
	}
	if len(c.Services) != 1 {
		t.Fatalf("Default().Services = %+v, want one", c.Services)
	}
	s := c.Services[0]
	if s.Name != "CounterService" || s.Type != "counter" || !s.Enabled || s.Configuration != nil {
		t.Errorf("default service = %+v", s)
	}
	if !strings.HasPrefix(s.Where, DefaultSource+":") {
		t.Errorf("default service Where = %q", s.Where)
	}
	if got := s.Properties.String("log-level", ""); got != "debug" {
		t.Errorf("log-level = %q, want debug", got)
	}
	if got := s.Properties.Keys(); !reflect.DeepEqual(got, []string{"log-level"}) {
		t.Errorf("property keys = %v", got)
	}
}

func TestDefaultIsFresh(t *testing.T) {
	a := Default()
	a.Cluster.Name = "changed"
	a.Services[0].Name = "changed"
	b := Default()
	if b.Cluster.Name != "dev" || b.Services[0].Name != "CounterService" {
		t.Errorf("Default() shares state between calls: %+v", b)
	}
}

const fullYAML = `# every key
cluster:
  name: prod
network:
  bind: 10.0.0.1:6000
  port-auto-increment: false
  port-count: 10
  max-pending-connections: 50
  max-pending-per-address: 5
  join:
    members:
      - 10.0.0.2:6000
      - node-3.example.com:6000
    multicast:
      enabled: false
      group: 239.1.1.1:5000
partitions:
  count: 1021
operations:
  partition-threads: 8
  queue-size: 1000
  invocation-timeout: 2m
  retry-pause: 500ms
  backup-ack-timeout: 3s
  frame-body-timeout: 4s
membership:
  probe-interval: 2s
  probe-timeout: 1s
  suspicion-mult: 6
  suspicion-max-timeout-mult: 3
  dead-on-refused-port: false
  gossip-interval: 100ms
  push-pull-interval: 5s
metrics:
  address: :9091
services:
  - name: CounterService
    type: counter
    enabled: true
    properties:
      log-level: debug
      batch: 10
      fast: true
      flush: 250ms
      bad-int: ten
  - name: Spare
    type: counter
    enabled: false
`

func TestParseFull(t *testing.T) {
	c, err := Parse("full.yaml", []byte(fullYAML))
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != "full.yaml" {
		t.Errorf("Source = %q", c.Source)
	}
	n := c.Network
	if c.Cluster.Name != "prod" || n.Bind != "10.0.0.1:6000" || n.PortAutoIncrement || n.PortCount != 10 ||
		n.MaxPendingConnections != 50 || n.MaxPendingPerAddress != 5 {
		t.Errorf("cluster/network = %+v %+v", c.Cluster, n)
	}
	if want := []string{"10.0.0.2:6000", "node-3.example.com:6000"}; !reflect.DeepEqual(n.Join.Members, want) {
		t.Errorf("members = %q, want %q", n.Join.Members, want)
	}
	if n.Join.Multicast != (MulticastConfig{Enabled: false, Group: "239.1.1.1:5000"}) {
		t.Errorf("multicast = %+v", n.Join.Multicast)
	}
	if c.Partitions.Count != 1021 {
		t.Errorf("partitions = %d", c.Partitions.Count)
	}
	if want := (OperationsConfig{8, 1000, 2 * time.Minute, 500 * time.Millisecond, 10 * time.Second, 3 * time.Second, 4 * time.Second}); c.Operations != want {
		t.Errorf("operations = %+v, want %+v", c.Operations, want)
	}
	if want := (MembershipConfig{2 * time.Second, time.Second, 6, 3, false, 100 * time.Millisecond, 5 * time.Second}); c.Membership != want {
		t.Errorf("membership = %+v, want %+v", c.Membership, want)
	}
	if c.Metrics.Address != ":9091" {
		t.Errorf("metrics = %q", c.Metrics.Address)
	}
	if len(c.Services) != 2 || c.Services[1].Enabled || c.Services[1].Where != "full.yaml:46" {
		t.Fatalf("services = %+v", c.Services)
	}
	enabled := c.EnabledServices()
	if len(enabled) != 1 || enabled[0].Name != "CounterService" || enabled[0].Where != "full.yaml:37" {
		t.Errorf("EnabledServices() = %+v", enabled)
	}

	p := c.Services[0].Properties
	if got := p.String("log-level", "info"); got != "debug" {
		t.Errorf("String(log-level) = %q", got)
	}
	if got := p.String("absent", "dflt"); got != "dflt" {
		t.Errorf("String(absent) = %q", got)
	}
	if got, err := p.Int("batch", 1); got != 10 || err != nil {
		t.Errorf("Int(batch) = %d, %v", got, err)
	}
	if got, err := p.Int("absent", 7); got != 7 || err != nil {
		t.Errorf("Int(absent) = %d, %v", got, err)
	}
	if got, err := p.Bool("fast", false); !got || err != nil {
		t.Errorf("Bool(fast) = %v, %v", got, err)
	}
	if got, err := p.Duration("flush", time.Second); got != 250*time.Millisecond || err != nil {
		t.Errorf("Duration(flush) = %v, %v", got, err)
	}
	_, err = p.Int("bad-int", 1)
	for _, want := range []string{"full.yaml:45", `"bad-int"`, "CounterService", `"ten"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Int(bad-int) error = %v, want it to contain %s", err, want)
		}
	}
	if _, err := p.Bool("log-level", false); err == nil || !strings.Contains(err.Error(), "full.yaml:41") {
		t.Errorf("Bool(log-level) error = %v, want full.yaml:41", err)
	}
	if _, err := p.Duration("batch", 0); err == nil || !strings.Contains(err.Error(), "full.yaml:42") {
		t.Errorf("Duration(batch) error = %v, want full.yaml:42", err)
	}
}

func TestParseKeepsDefaults(t *testing.T) {
	c, err := Parse("part.yaml", []byte("network:\n  bind: 0.0.0.0:0\noperations:\n  queue-size: 8\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.Network.Bind != "0.0.0.0:0" || c.Operations.QueueSize != 8 {
		t.Errorf("set values lost: %+v", c)
	}
	if c.Network.PortCount != d.Network.PortCount || c.Operations.InvocationTimeout != d.Operations.InvocationTimeout ||
		c.Partitions.Count != d.Partitions.Count || len(c.Services) != 1 {
		t.Errorf("defaults lost: %+v", c)
	}
}

func TestParseEmptyValues(t *testing.T) {
	for _, tc := range []struct{ name, yaml string }{
		{"empty file", ""},
		{"comments only", "# nothing\n"},
		{"null document", "~\n"},
		{"null sections", "cluster:\nnetwork:\n  join:\n"},
		{"null scalar", "partitions:\n  count:\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("e.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			d := Default()
			d.Source, c.lines = "e.yaml", nil
			if !reflect.DeepEqual(c, d) {
				t.Errorf("Parse(%q) =\n%+v\nwant the defaults\n%+v", tc.yaml, c, d)
			}
		})
	}
	// A null or empty list empties the default list.
	for _, y := range []string{"services:\n", "services: []\n"} {
		c, err := Parse("e.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Services) != 0 {
			t.Errorf("Parse(%q).Services = %+v, want none", y, c.Services)
		}
	}
}

func TestParseAliases(t *testing.T) {
	y := `services:
  - name: A
    type: counter
    properties: &props
      log-level: debug
  - name: B
    type: counter
    properties: *props
`
	c, err := Parse("a.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Services[1].Properties.String("log-level", ""); got != "debug" {
		t.Errorf("aliased property = %q", got)
	}
}

func TestInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		line int
		key  string // key path, or the structural message when the error has no key
		msg  string
	}{
		{"unknown top-level key", "cluster:\n  name: x\nclustr:\n  name: y\n", 3, "", `unknown key "clustr" in (top level)`},
		{"unknown network key", "network:\n  bnd: 1.2.3.4:5\n", 2, "", `unknown key "bnd" in network`},
		{"unknown multicast key", "network:\n  join:\n    multicast:\n      enable: false\n", 4, "", `unknown key "enable" in network.join.multicast`},
		{"unknown service key", "services:\n  - name: a\n    type: counter\n    propertes: {}\n", 4, "", `unknown key "propertes" in services[0]`},
		{"repeated key", "cluster:\n  name: a\n  name: b\n", 3, "cluster", `key "name" repeated (first at line 2)`},
		{"syntax error", "cluster:\n  name: a\n bad\n", 2, "", "yaml: did not find expected key"},
		{"second document", "cluster:\n  name: a\n---\ncluster:\n  name: b\n", 3, "", "second YAML document"},
		{"section not a mapping", "\nnetwork: 5\n", 2, "network", `want a mapping, got "5"`},
		{"services not a list", "services:\n  name: a\n", 2, "services", "want a list, got a mapping"},
		{"service not a mapping", "services:\n  - counter\n", 2, "services[0]", `want a mapping with name and type, got "counter"`},

		{"bind port out of range", "network:\n  bind: 127.0.0.1:99999\n", 2, "network.bind", `bad address "127.0.0.1:99999": port must be 1..65535`},
		{"bind without port", "network:\n  bind: 127.0.0.1\n", 2, "network.bind", `bad address "127.0.0.1": want host:port`},
		{"bind bad port", "network:\n  bind: 127.0.0.1:http\n", 2, "network.bind", "port must be a number"},
		{"bind bad host", "network:\n  bind: bad host!:5701\n", 2, "network.bind", `bad host "bad host!"`},
		{"bind not a string", "network:\n  bind: [a]\n", 2, "network.bind", "want a string, got a list"},
		{"port-count zero", "network:\n  port-count: 0\n", 2, "network.port-count", "must be positive"},
		{"max-pending-connections zero", "network:\n  max-pending-connections: 0\n", 2, "network.max-pending-connections", "must be positive, got 0"},
		{"max-pending-per-address negative", "network:\n  max-pending-per-address: -1\n", 2, "network.max-pending-per-address", "must be positive, got -1"},
		{"max-pending-per-address string", "network:\n  max-pending-per-address: lots\n", 2, "network.max-pending-per-address", `want an integer, got "lots"`},
		{"port-auto-increment not bool", "network:\n  port-auto-increment: maybe\n", 2, "network.port-auto-increment", `want true or false, got "maybe"`},
		{"member port zero", "network:\n  join:\n    members:\n      - 10.0.0.1:5701\n      - 10.0.0.2:0\n", 5, "network.join.members[1]", `bad address "10.0.0.2:0": port must be 1..65535`},
		{"member without host", "network:\n  join:\n    members: [':5701']\n", 3, "network.join.members[0]", "missing host"},
		{"member not scalar", "network:\n  join:\n    members:\n      - {a: b}\n", 4, "network.join.members[0]", "want host:port, got a mapping"},
		{"members not a list", "network:\n  join:\n    members: 10.0.0.1:5701\n", 3, "network.join.members", "want a list"},
		{"multicast group not multicast", "network:\n  join:\n    multicast:\n      group: 10.0.0.1:54327\n", 4, "network.join.multicast.group", "IPv4 multicast"},
		{"multicast group ipv6", "network:\n  join:\n    multicast:\n      group: '[ff02::1]:54327'\n", 4, "network.join.multicast.group", "IPv4 multicast"},
		{"multicast group no port", "network:\n  join:\n    multicast:\n      group: 224.2.2.3\n", 4, "network.join.multicast.group", "want host:port"},
		{"metrics address", "metrics:\n  address: localhost\n", 2, "metrics.address", `bad address "localhost"`},

		{"partition count zero", "partitions:\n  count: 0\n", 2, "partitions.count", "must be 1..65535, got 0"},
		{"partition count negative", "partitions:\n  count: -5\n", 2, "partitions.count", "must be 1..65535, got -5"},
		{"partition count too big", "partitions:\n  count: 70000\n", 2, "partitions.count", "must be 1..65535, got 70000"},
		{"partition count string", "partitions:\n  count: many\n", 2, "partitions.count", `want an integer, got "many"`},
		{"partition count float", "partitions:\n  count: 2.5\n", 2, "partitions.count", `want an integer, got "2.5"`},
		{"partition count quoted", "partitions:\n  count: '271'\n", 2, "partitions.count", `want an integer, got "271"`},

		{"negative partition-threads", "operations:\n  partition-threads: -1\n", 2, "operations.partition-threads", "must not be negative"},
		{"queue-size zero", "operations:\n  queue-size: 0\n", 2, "operations.queue-size", "must be positive"},
		{"bad duration", "operations:\n  invocation-timeout: soon\n", 2, "operations.invocation-timeout", `want a duration such as 500ms or 2m, got "soon"`},
		{"duration without unit", "operations:\n  retry-pause: 10\n", 2, "operations.retry-pause", `want a duration such as 500ms or 2m, got "10"`},
		{"negative duration", "membership:\n  gossip-interval: -1s\n", 2, "membership.gossip-interval", "must be positive, got -1s"},
		{"zero duration", "operations:\n  invocation-timeout: 0s\n", 2, "operations.invocation-timeout", "must be positive"},
		{"retry-pause too long", "operations:\n  invocation-timeout: 1s\n  retry-pause: 2s\n", 3, "operations.retry-pause", "must be shorter than invocation-timeout"},
		{"probe-timeout too long", "membership:\n  probe-interval: 1s\n  probe-timeout: 3s\n", 3, "membership.probe-timeout", "must not exceed probe-interval"},
		{"suspicion-mult zero", "membership:\n  suspicion-mult: 0\n", 2, "membership.suspicion-mult", "must be at least 1"},
		{"suspicion-max-timeout-mult zero", "membership:\n  suspicion-max-timeout-mult: 0\n", 2, "membership.suspicion-max-timeout-mult", "must be at least 1"},

		{"empty cluster name", "cluster:\n  name: ''\n", 2, "cluster.name", "must not be empty"},
		{"missing service name", "services:\n  - type: counter\n", 2, "services[0].name", "missing"},
		{"missing service type", "services:\n  - name: a\n", 2, "services[0].type", "missing"},
		{"unknown service type", "services:\n  - name: a\n    type: countr\n", 3, "services[0].type", `unknown service type "countr" (registered: counter)`},
		{"unknown type of disabled service", "services:\n  - name: a\n    type: countr\n    enabled: false\n", 3, "services[0].type", "is the package that registers it"},
		{"duplicate service names", "services:\n  - name: a\n    type: counter\n  - name: a\n    type: counter\n", 4, "services[1].name", `duplicate service name "a", first used at bad.yaml:2`},
		{"property not scalar", "services:\n  - name: a\n    type: counter\n    properties:\n      levels: [info, debug]\n", 5, "services[0].properties.levels", "properties must be scalars, got a list"},
		{"properties not a mapping", "services:\n  - name: a\n    type: counter\n    properties: [a]\n", 4, "services[0].properties", "want a mapping, got a list"},
		{"service enabled not bool", "services:\n  - name: a\n    type: counter\n    enabled: 3\n", 4, "services[0].enabled", `want true or false, got "3"`},
		{"unknown merge policy", "services:\n  - name: a\n    type: counter\n    merge-policy: latest\n", 4, "services[0].merge-policy", `unknown merge policy "latest" (registered: discard, higher-value, pass-through, put-if-absent)`},
		{"merge policy not scalar", "services:\n  - name: a\n    type: counter\n    merge-policy: [discard]\n", 4, "services[0].merge-policy", "want a string, got a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded, want an error")
			}
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("error %q is not one *Error", err)
			}
			if e.Source != "bad.yaml" || e.Line != tc.line || e.Key != tc.key || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("error = %#v\nwant Source bad.yaml, Line %d, Key %q, Msg containing %q", e, tc.line, tc.key, tc.msg)
			}
			prefix := fmt.Sprintf("bad.yaml:%d: ", tc.line)
			if tc.key != "" {
				prefix += tc.key + ": "
			}
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error text %q does not start with %q", err, prefix)
			}
		})
	}
}

func TestValidAddresses(t *testing.T) {
	y := `network:
  bind: '[::1]:0'
  join:
    members: ['[fe80::1%eth0]:5701', my-host_1.local:1, 10.0.0.1:65535]
    multicast:
      enabled: false
      group: not an address
metrics:
  address: localhost:0
`
	if _, err := Parse("ok.yaml", []byte(y)); err != nil {
		t.Fatal(err)
	}
}

func TestMultipleErrors(t *testing.T) {
	y := `cluster:
  name: ""
network:
  bind: nowhere
  bnd: x
partitions:
  count: 0
services:
  - name: a
    type: nope
  - name: a
    type: counter
`
	_, err := Parse("multi.yaml", []byte(y))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		`multi.yaml:2: cluster.name: must not be empty`,
		`multi.yaml:4: network.bind: bad address "nowhere": want host:port`,
		`multi.yaml:5: unknown key "bnd" in network`,
		`multi.yaml:7: partitions.count: must be 1..65535, got 0`,
		`multi.yaml:10: services[0].type: unknown service type "nope"`,
		`multi.yaml:11: services[1].name: duplicate service name "a", first used at multi.yaml:9`,
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(want), err)
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("error %d = %q, want prefix %q", i, lines[i], want[i])
		}
	}
	var n int
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var ce *Error
		if errors.As(e, &ce) && ce.Source == "multi.yaml" {
			n++
		}
	}
	if n != len(want) {
		t.Errorf("%d of %d joined errors are *Error", n, len(want))
	}
}

func TestValidateAfterChange(t *testing.T) {
	c := Default()
	c.Network.Bind = "nope"
	c.Partitions.Count = -1
	c.Services = append(c.Services, ServiceConfig{Name: "CounterService", Type: "counter"})
	err := c.Validate()
	for _, want := range []string{
		DefaultSource + `: network.bind: bad address "nope"`,
		DefaultSource + ": partitions.count: must be 1..65535",
		DefaultSource + `: services[1].name: duplicate service name "CounterService", first used at services[0].name`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v\nwant it to contain %q", err, want)
		}
	}

	var zero Config
	err = zero.Validate()
	if err == nil || !strings.Contains(err.Error(), "\ncluster.name: must not be empty") && !strings.HasPrefix(err.Error(), "cluster.name: must not be empty") {
		t.Errorf("Config{}.Validate() = %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{"c.yaml", 7, "network.bind", "bad"}, "c.yaml:7: network.bind: bad"},
		{Error{"c.yaml", 3, "", `unknown key "x" in (top level)`}, `c.yaml:3: unknown key "x" in (top level)`},
		{Error{"c.yaml", 0, "cluster.name", "bad"}, "c.yaml: cluster.name: bad"},
		{Error{"", 0, "cluster.name", "bad"}, "cluster.name: bad"},
		{Error{"", 4, "k", "bad"}, "line 4: k: bad"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%#v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
}

// parserService implements nothing; the engine, not config, decides
// whether it gets its configuration.
type parserService struct{}

func TestConfigurationNode(t *testing.T) {
	register(t, "plain")
	y := `services:
  - name: A
    type: plain
    configuration:
      maps:
        - name: m1
          backups: 2
      ttl: 5s
  - name: B
    type: plain
  - name: C
    type: plain
    configuration:
  - name: D
    type: plain
    configuration: 42
`
	c, err := Parse("conf.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	n := c.Services[0].Configuration
	if n == nil || n.Kind != yaml.MappingNode || n.Line != 5 {
		t.Fatalf("A configuration = %+v, want a mapping at line 5", n)
	}
	var conf struct {
		Maps []struct {
			Name    string
			Backups int
		}
		TTL time.Duration `yaml:"ttl"`
	}
	if err := n.Decode(&conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Maps) != 1 || conf.Maps[0].Name != "m1" || conf.Maps[0].Backups != 2 || conf.TTL != 5*time.Second {
		t.Errorf("decoded configuration = %+v", conf)
	}
	// Nested nodes keep their lines, for the service's own errors.
	if backups := n.Content[1].Content[0].Content[3]; backups.Value != "2" || backups.Line != 7 {
		t.Errorf("backups node = %q at line %d, want 2 at line 7", backups.Value, backups.Line)
	}
	if c.Services[1].Configuration != nil || c.Services[2].Configuration != nil {
		t.Errorf("absent or empty configuration should be nil: %+v", c.Services[1:3])
	}
	if d := c.Services[3].Configuration; d == nil || d.Kind != yaml.ScalarNode || d.Value != "42" {
		t.Errorf("scalar configuration = %+v", d)
	}
	if _, ok := any(&parserService{}).(spi.ConfigParser); ok {
		t.Fatal("parserService should implement nothing")
	}
}

func TestRegistry(t *testing.T) {
	register(t, "zeta")
	register(t, "alpha")
	if got, want := ServiceTypes(), []string{"alpha", "counter", "zeta"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceTypes() = %v, want %v", got, want)
	}
	f, ok := ServiceFactory("counter")
	if !ok || f == nil {
		t.Fatal("counter not registered")
	}
	if _, ok := f().(*fakeCounter); !ok {
		t.Errorf("counter factory made %T", f())
	}
	if _, ok := ServiceFactory("nope"); ok {
		t.Error("ServiceFactory(nope) found something")
	}

	for _, tc := range []struct {
		name, typ string
		f         func() spi.Service
		panic     string
	}{
		{"duplicate", "counter", func() spi.Service { return nil }, "registered twice"},
		{"empty name", "", func() spi.Service { return nil }, "empty type name"},
		{"nil factory", "other", nil, "nil factory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if s, _ := r.(string); !strings.Contains(s, tc.panic) {
					t.Errorf("panic = %v, want %q", r, tc.panic)
				}
			}()
			RegisterService(tc.typ, tc.f)
		})
	}
	if _, ok := ServiceFactory("other"); ok {
		t.Error("a failed registration left an entry")
	}
}

func TestRegistryConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { register(t, fmt.Sprintf("conc-%d", i)) })
		wg.Go(func() {
			ServiceTypes()
			ServiceFactory("counter")
		})
	}
	wg.Wait()
	var n int
	for _, typ := range ServiceTypes() {
		if strings.HasPrefix(typ, "conc-") {
			n++
		}
	}
	if n != 8 {
		t.Errorf("%d types registered, want 8", n)
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(path, []byte("cluster:\n  name: loaded\nnetwork:\n  bind: 127.0.0.1:99999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := path + `:4: network.bind: bad address "127.0.0.1:99999": port must be 1..65535`; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load = %v, want %q", err, want)
	}
	if err := os.WriteFile(path, []byte("cluster:\n  name: loaded\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil || c.Cluster.Name != "loaded" || c.Source != path {
		t.Errorf("Load = %+v, %v", c, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
}

func TestMergePolicyKey(t *testing.T) {
	c, err := Parse("mp.yaml", []byte("services:\n  - name: a\n    type: counter\n    merge-policy: higher-value\n  - name: b\n    type: counter\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Services[0].MergePolicy; got != "higher-value" {
		t.Fatalf("services[0].MergePolicy = %q, want higher-value", got)
	}
	if got := c.Services[1].MergePolicy; got != "" {
		t.Fatalf("services[1].MergePolicy = %q, want empty (the service's default)", got)
	}
	if got := Default().Services[0].MergePolicy; got != "" {
		t.Fatalf("default CounterService has merge policy %q, want empty", got)
	}
}

type namedPolicy string

func (p namedPolicy) Name() string                       { return string(p) }
func (p namedPolicy) Merge(m, _ any, _ bool) (any, bool) { return m, true }

func TestRegisterMergePolicy(t *testing.T) {
	want := []string{"discard", "higher-value", "pass-through", "put-if-absent"}
	if got := MergePolicies(); !reflect.DeepEqual(got, want) {
		t.Fatalf("MergePolicies() = %v, want %v", got, want)
	}
	for _, name := range want {
		f, ok := MergePolicyFactory(name)
		if !ok || f().Name() != name {
			t.Fatalf("MergePolicyFactory(%q): found %v", name, ok)
		}
	}
	RegisterMergePolicy("test-policy", func() spi.MergePolicy { return namedPolicy("test-policy") })
	t.Cleanup(func() {
		policies.Lock()
		delete(policies.factories, "test-policy")
		policies.Unlock()
	})
	if _, err := Parse("mp.yaml", []byte("services:\n  - name: a\n    type: counter\n    merge-policy: test-policy\n")); err != nil {
		t.Fatalf("a registered service-defined policy is refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		f    func() spi.MergePolicy
	}{
		{"", func() spi.MergePolicy { return namedPolicy("") }},
		{"nil", nil},
		{"test-policy", func() spi.MergePolicy { return namedPolicy("test-policy") }},
		{"other", func() spi.MergePolicy { return namedPolicy("another") }},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RegisterMergePolicy(%q) did not panic", tc.name)
				}
			}()
			RegisterMergePolicy(tc.name, tc.f)
		}()
	}
}
