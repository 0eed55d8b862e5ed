package nodeengine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
	"github.com/partita-go/partita/operation"
	_ "github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTablesConvergeBalanced(t *testing.T) {
	for _, n := range []int{2, 3, 5} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			c := clustertest.New(t, n)
			ref := c.Member(0).Inspect().Table()
			lo, hi := 271/n, (271+n-1)/n
			counts := ref.Counts()
			for _, m := range c.Members() {
				tab := m.Inspect().Table()
				if tab.Version != ref.Version {
					t.Fatalf("member %s has version %d, master %d", m.Address(), tab.Version, ref.Version)
				}
				for p := range tab.Owners {
					if tab.Owners[p] != ref.Owners[p] || tab.Owners[p] == "" {
						t.Fatalf("partition %d: owner %q on %s, %q on the master", p, tab.Owners[p], m.Address(), ref.Owners[p])
					}
				}
				if k := counts[m.ID()]; k < lo || k > hi {
					t.Fatalf("member %s owns %d partitions, want %d..%d", m.Address(), k, lo, hi)
				}
			}
			if !c.Member(0).Inspect().IsMaster() {
				t.Fatal("the oldest member is not the master")
			}
		})
	}
}

// probe is a test service whose operation reports where it ran.
type probe struct{}

type probeOp struct {
	Fail string
	out  string
}

func (o *probeOp) Run(ctx *spi.OpContext) error {
	if o.Fail != "" {
		return errors.New(o.Fail)
	}
	if ctx.PartitionID >= 0 && !ctx.Engine.Partitions().IsLocalOwner(ctx.PartitionID) {
		return fmt.Errorf("partition %d ran on a member that does not own it", ctx.PartitionID)
	}
	o.out = fmt.Sprintf("%s/%d/%d", ctx.Engine.LocalMember().ID, ctx.Executor, goroutineID())
	return nil
}
func (o *probeOp) Response() any                { return o.out }
func (o *probeOp) WriteData(w *spi.Writer)      { w.WriteString(o.Fail) }
func (o *probeOp) ReadData(r *spi.Reader) error { o.Fail = r.ReadString(); return r.Err() }

// unregisteredOp is not among probe's operation types.
type unregisteredOp struct{ probeOp }

func (probe) OperationTypes() []spi.OperationType {
	return []spi.OperationType{{ID: 1, New: func() spi.Operation { return new(probeOp) }}}
}

func goroutineID() uint64 {
	var buf [64]byte
	s := strings.TrimPrefix(string(buf[:runtime.Stack(buf[:], false)]), "goroutine ")
	id, _ := strconv.ParseUint(s[:strings.IndexByte(s, ' ')], 10, 64)
	return id
}

func init() { config.RegisterService("probe", func() spi.Service { return probe{} }) }

func withProbe(i int, c *config.Config) {
	c.Services = append(c.Services, config.ServiceConfig{Name: "Probe", Type: "probe", Enabled: true})
}

func TestOperationRunsOnOwnerAndItsExecutor(t *testing.T) {
	c := clustertest.New(t, 3, clustertest.WithConfig(withProbe))
	ctx := ctxT(t)
	type where struct {
		member   string
		executor int
		gid      uint64
	}
	// executor goroutine seen per (member, executor index)
	gids := map[string]uint64{}
	for _, caller := range c.Members() {
		for p := 0; p < 271; p++ {
			v, err := caller.Operations().Invoke(ctx, "Probe", &probeOp{}, p)
			if err != nil {
				t.Fatal(err)
			}
			var w where
			fmt.Sscanf(strings.ReplaceAll(v.(string), "/", " "), "%s %d %d", &w.member, &w.executor, &w.gid)
			if owner := caller.Inspect().Table().Owners[p]; w.member != owner {
				t.Fatalf("partition %d ran on %s, owner is %s", p, w.member, owner)
			}
			threads := caller.Inspect().OperationService().PartitionThreads()
			if w.executor != p%threads {
				t.Fatalf("partition %d ran on executor %d, want %d", p, w.executor, p%threads)
			}
			key := fmt.Sprintf("%s/%d", w.member, w.executor)
			if g, ok := gids[key]; ok && g != w.gid {
				t.Fatalf("executor %s ran on goroutines %d and %d", key, g, w.gid)
			}
			gids[key] = w.gid
		}
	}
}

func TestRemoteErrorsReachCaller(t *testing.T) {
	c := clustertest.New(t, 2, clustertest.WithConfig(withProbe))
	ctx := ctxT(t)
	a, b := c.Member(0), c.Member(1)
	p := ownedBy(t, a, b.ID())
	_, err := a.Operations().Invoke(ctx, "Probe", &probeOp{Fail: "boom on purpose"}, p)
	var re *spi.RemoteError
	if !errors.As(err, &re) || re.Message != "boom on purpose" || re.Member != b.Address() {
		t.Fatalf("remote failure = %#v (%v), want a RemoteError from %s", err, err, b.Address())
	}
	// Run on a member directly, not bound to a partition.
	if _, err := a.Operations().InvokeOnMember(ctx, "Probe", &probeOp{}, b.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Operations().Invoke(ctx, "Probe", &unregisteredOp{}, p); !errors.Is(err, spi.ErrUnknownOperation) {
		t.Fatalf("unregistered operation type: %v", err)
	}
	if _, err := a.Operations().Invoke(ctx, "NoSuchService", &probeOp{}, p); !errors.Is(err, spi.ErrUnknownService) {
		t.Fatalf("unknown service: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	<-short.Done()
	if _, err := a.Operations().Invoke(short, "Probe", &probeOp{}, p); !errors.Is(err, spi.ErrTimeout) {
		t.Fatalf("expired context: %v", err)
	}
}

// ownedBy returns a partition that member id owns in n's table.
func ownedBy(t *testing.T, n *nodeengine.Node, id string) int {
	t.Helper()
	for p, o := range n.Inspect().Table().Owners {
		if o == id {
			return p
		}
	}
	t.Fatalf("member %s owns no partition", id)
	return -1
}

func testConfig(bind string, join ...string) *config.Config {
	cfg := config.Default()
	cfg.Network.Bind = bind
	cfg.Metrics.Address = "127.0.0.1:0"
	cfg.Network.Join.Multicast.Enabled = false
	cfg.Network.Join.Members = join
	cfg.Membership.ProbeInterval = 200 * time.Millisecond
	cfg.Membership.ProbeTimeout = 100 * time.Millisecond
	cfg.Membership.GossipInterval = 50 * time.Millisecond
	cfg.Membership.PushPullInterval = time.Second
	for i, sc := range cfg.Services {
		cfg.Services[i].Properties = sc.Properties.With("log-level", "debug")
	}
	return cfg
}

func start(t *testing.T, cfg *config.Config, logs *clustertest.LogBuffer) *nodeengine.Node {
	t.Helper()
	var opts []nodeengine.Option
	if logs != nil {
		opts = append(opts, nodeengine.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	}
	n, err := nodeengine.New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown(context.Background()) })
	return n
}

func TestOtherClusterNameRefused(t *testing.T) {
	var logs clustertest.LogBuffer
	a := start(t, testConfig("127.0.0.1:0"), &logs)
	cfg := testConfig("127.0.0.1:0", a.Address())
	cfg.Cluster.Name = "other"
	var blogs clustertest.LogBuffer
	b := start(t, cfg, &blogs)
	clustertest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String()+blogs.String(), "refusing member") {
			return errors.New("no refusal logged")
		}
		return nil
	})
	if len(a.Members()) != 1 || len(b.Members()) != 1 {
		t.Fatalf("members: a sees %d, b sees %d; want 1 each", len(a.Members()), len(b.Members()))
	}
	all := logs.String() + blogs.String()
	if !strings.Contains(all, `cluster \"other\", we are \"dev\"`) && !strings.Contains(all, `cluster \"dev\", we are \"other\"`) {
		t.Fatalf("refusal does not name both clusters:\n%s", all)
	}
}

func TestMalformedFrameClosesOnlyThatConnection(t *testing.T) {
	var logs clustertest.LogBuffer
	a := start(t, testConfig("127.0.0.1:0"), &logs)
	// A peer that says hello properly, then sends a frame of an unknown kind.
	nc, err := net.Dial("tcp", a.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hello := helloFrame("dev", operation.ProtocolVersion)
	bad := []byte{9, 0, 0, 0, 77, 0, 0, 0, 0, 0, 0, 0, 0}
	nc.Write(append(append([]byte{'P'}, hello...), bad...))
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for { // the member answers the hello, then closes the connection
		if _, err := nc.Read(buf); err != nil {
			break
		}
	}
	clustertest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String(), "closing connection after a malformed frame") ||
			!strings.Contains(logs.String(), "unknown frame kind 77") {
			return errors.New("malformed frame not logged")
		}
		return nil
	})
	// The member keeps serving others.
	b := start(t, testConfig("127.0.0.1:0", a.Address()), nil)
	clustertest.WaitStable(t, 10*time.Second, a, b)
	obj, err := b.Proxies().Get(ctxT(t), "CounterService", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obj.(interface {
		Inc(context.Context, int64) (int64, error)
	}).Inc(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	// A peer of another cluster is told why and disconnected.
	nc2, err := net.Dial("tcp", a.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	nc2.Write(append([]byte{'P'}, helloFrame("prod", operation.ProtocolVersion)...))
	nc2.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	for {
		n, err := nc2.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if !bytes.Contains(got, []byte(`belongs to cluster "prod", this member to "dev"`)) {
		t.Fatalf("other-cluster peer got %q", got)
	}
	nc3, err := net.Dial("tcp", a.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer nc3.Close()
	nc3.Write(append([]byte{'P'}, helloFrame("dev", 99)...))
	nc3.SetReadDeadline(time.Now().Add(10 * time.Second))
	got = got[:0]
	for {
		n, err := nc3.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if !bytes.Contains(got, []byte("speaks protocol version 99")) {
		t.Fatalf("other-protocol peer got %q", got)
	}
}

// helloFrame builds a connection's first frame by hand, as a foreign
// client would.
func helloFrame(cluster string, version byte) []byte {
	w := spi.NewWriter(nil)
	w.WriteUint8(1) // kind hello
	w.WriteUint64(0)
	for _, b := range []byte("PRTA") {
		w.WriteUint8(b)
	}
	w.WriteUint8(version)
	w.WriteString(cluster)
	w.WriteString("stranger")
	w.WriteString("127.0.0.1:1")
	body := w.Bytes()
	l := spi.NewWriter(nil)
	l.WriteUint32(uint32(len(body)))
	return append(l.Bytes(), body...)
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestShutdownReleasesPortAndRestarts(t *testing.T) {
	cfg := testConfig(freePort(t))
	cfg.Network.PortAutoIncrement = false
	var logs clustertest.LogBuffer
	for round := 0; round < 2; round++ {
		n, err := nodeengine.New(cfg, nodeengine.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(ctxT(t)); err != nil {
			t.Fatalf("start round %d: %v", round, err)
		}
		if n.Address() != cfg.Network.Bind {
			t.Fatalf("bound %s, want %s", n.Address(), cfg.Network.Bind)
		}
		if err := n.Shutdown(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if err := n.Start(ctxT(t)); err == nil {
			t.Fatal("a stopped Node started again")
		}
		// Both protocols' sockets are free again.
		l, err := net.Listen("tcp", cfg.Network.Bind)
		if err != nil {
			t.Fatalf("tcp port still taken: %v", err)
		}
		l.Close()
		u, err := net.ListenPacket("udp", cfg.Network.Bind)
		if err != nil {
			t.Fatalf("udp port still taken: %v", err)
		}
		u.Close()
	}
	for _, want := range []string{"CounterService.init", "CounterService.shutdown", "member stopped"} {
		if strings.Count(logs.String(), want) != 2 {
			t.Errorf("log has %d %q lines, want 2", strings.Count(logs.String(), want), want)
		}
	}
}

// parsedService records the order of its lifecycle calls.
type parsedService struct {
	calls []string
	limit int
}

func (s *parsedService) ParseConfig(node *yaml.Node) error {
	var v struct {
		Limit int `yaml:"limit"`
	}
	if err := node.Decode(&v); err != nil {
		return err
	}
	s.limit = v.Limit
	s.calls = append(s.calls, "parse")
	return nil
}

func (s *parsedService) Init(engine spi.NodeEngine, props spi.Properties) error {
	n, err := props.Int("batch", 1)
	if err != nil {
		return err
	}
	s.calls = append(s.calls, fmt.Sprintf("init batch=%d limit=%d", n, s.limit))
	return nil
}
func (s *parsedService) Shutdown(bool) { s.calls = append(s.calls, "shutdown") }
func (s *parsedService) Reset()        {}

func init() { config.RegisterService("parsed", func() spi.Service { return new(parsedService) }) }

func TestServiceConfigurationAndLifecycle(t *testing.T) {
	cfg, err := config.Parse("svc.yaml", []byte(`
network:
  bind: 127.0.0.1:0
  join:
    multicast: {enabled: false}
metrics:
  address: 127.0.0.1:0
services:
  - name: Parsed
    type: parsed
    properties:
      batch: 5
    configuration:
      limit: 42
  - name: Off
    type: parsed
    enabled: false
`))
	if err != nil {
		t.Fatal(err)
	}
	n := start(t, cfg, nil)
	svc, ok := n.Service("Parsed")
	if _, off := n.Service("Off"); !ok || off {
		t.Fatalf("enabled service present: %v, disabled service present: %v", ok, off)
	}
	n.Shutdown(ctxT(t))
	got := strings.Join(svc.(*parsedService).calls, ", ")
	if got != "parse, init batch=5 limit=42, shutdown" {
		t.Fatalf("lifecycle = %s", got)
	}

	// A bad property fails Start with the file, line and key.
	err = startErr(t, `
network: {bind: "127.0.0.1:0", join: {multicast: {enabled: false}}}
services:
  - name: Parsed
    type: parsed
    properties:
      batch: many
`)
	if err == nil || !strings.Contains(err.Error(), `bad.yaml:7: service "Parsed": property "batch": want an integer, got "many"`) {
		t.Fatalf("start with a bad property: %v", err)
	}
}

// defaultingService names its own default merge policy.
type defaultingService struct{ policy string }

func (s *defaultingService) DefaultMergePolicy() string { return s.policy }

func init() {
	config.RegisterService("defaulting", func() spi.Service { return &defaultingService{policy: "discard"} })
	config.RegisterService("bad-default", func() spi.Service { return &defaultingService{policy: "no-such-policy"} })
}

// Each service gets the merge policy of its config entry, else the one it
// names as its default, else put-if-absent; a default that is not
// registered stops Start.
func TestMergePolicyPerService(t *testing.T) {
	cfg, err := config.Parse("mp.yaml", []byte(`
network: {bind: "127.0.0.1:0", join: {multicast: {enabled: false}}}
metrics: {address: ""}
services:
  - name: Plain
    type: parsed
  - name: Chosen
    type: parsed
    merge-policy: higher-value
  - name: OwnDefault
    type: defaulting
  - name: Overridden
    type: defaulting
    merge-policy: pass-through
`))
	if err != nil {
		t.Fatal(err)
	}
	n := start(t, cfg, nil)
	for svc, want := range map[string]string{"Plain": "put-if-absent", "Chosen": "higher-value",
		"OwnDefault": "discard", "Overridden": "pass-through"} {
		if p := n.MergePolicy(svc); p == nil || p.Name() != want {
			t.Errorf("MergePolicy(%q) = %v, want %s", svc, p, want)
		}
	}
	if p := n.MergePolicy("NoSuchService"); p != nil {
		t.Errorf("MergePolicy of an unknown service = %v, want nil", p)
	}
	n.Shutdown(ctxT(t))

	err = startErr(t, `
network: {bind: "127.0.0.1:0", join: {multicast: {enabled: false}}}
metrics: {address: ""}
services:
  - name: Bad
    type: bad-default
`)
	if err == nil || !strings.Contains(err.Error(), `bad.yaml:5: service "Bad": unknown merge policy "no-such-policy" from the service's DefaultMergePolicy`) {
		t.Fatalf("start with an unregistered default policy: %v", err)
	}
}

// startErr starts a member from the config bad.yaml holding yml, which
// must parse, and returns the error of its Start.
func startErr(t *testing.T, yml string) error {
	t.Helper()
	cfg, err := config.Parse("bad.yaml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	n, err := nodeengine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n.Start(ctxT(t))
}
