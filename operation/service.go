package operation

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/operation/replica"
	"github.com/partita-go/partita/spi"
)

// Routing tells the operation service where partitions and members are.
// Its methods are called on any goroutine, often, and must not block.
type Routing interface {
	// Backups appends partition p's backup replicas to dst: the serving
	// ones in replica order (only the ones set in the table), then the
	// incoming ones, each naming the replica it takes over.
	Backups(p int, dst []Replica) []Replica
	// ReplicaIndex returns this member's replica index of partition p.
	ReplicaIndex(p int) int
	// Owner returns the ID and address of partition p's owner; false when
	// this member has no table yet.
	Owner(p int) (id, address string, ok bool)
	// MemberAddress returns the operation address of a member by ID.
	MemberAddress(id string) (string, bool)
}

// Config configures a Service.
type Config struct {
	ClusterName       string
	LocalID           string
	LocalAddress      string
	PartitionCount    int
	PartitionThreads  int // 0: GOMAXPROCS
	GenericThreads    int // 0: 2
	QueueSize         int // per executor; 0: 4096
	InvocationTimeout time.Duration
	RetryPause        time.Duration
	DedupWindow       time.Duration // how long invocation records are kept; 0: 10s
	// PinKeep is how long the records of the invocations of a member
	// this member lost are kept (pins.go); 0: an hour.
	PinKeep          time.Duration
	BackupAckTimeout time.Duration // a synchronous backup's ack, re-sends included; 0: 10s
	// FrameBodyTimeout bounds how long a frame may take to arrive once its
	// first bytes have: a connection that sends part of a frame and not
	// the rest in time is closed (a connection idle between frames is
	// not). 0: 10s.
	FrameBodyTimeout time.Duration
	Engine           spi.NodeEngine // handed to operations in OpContext
	Routing          Routing
	Logger           *slog.Logger
	// Dial opens a connection to another member's operation port. The
	// node engine's dialer writes the protocol selector byte first.
	Dial func(ctx context.Context, address string) (net.Conn, error)
	// Hook, when set, wraps the transport in a transport.Faults that asks
	// it the fate of every request, backup and forwarded answer before
	// it leaves for another member, and of every successful answer when
	// it arrives (tests use it to drop, delay, hold, reorder messages or
	// cut connections). It must return at once.
	Hook func(m Message) Verdict
	// Member, when set, tells whether a member ID is in the cluster: the
	// connections of a peer that is not are closed after
	// transport.DefaultUnknownPeerGrace.
	Member func(id string) bool
	// Reject, when set, is told of the connections refused or cut for
	// their input (see transport.Config.Reject); else they are logged.
	Reject func(reason, remote string, err error)
	// Members, when set, returns how many members this member's list
	// holds, itself included (0: no list yet), for split-brain
	// protection (ProtectService). It is called before every operation
	// of a protected service, on any goroutine: it must be cheap and
	// must not block (an atomic load).
	Members func() int
	// OnReplicaGap is called as partition p's executor (on its goroutine,
	// or a reader's running a backup in its place) when a backup
	// arrives ahead of a missing one: this replica needs a full sync from
	// the primary (see ReplicaSynced). It must not block.
	OnReplicaGap func(p int)
	// Reachable, when set, tells whether the member whose operation
	// address is address may be reached: connections to and from the
	// members it refuses are closed as they open, and CloseUnreachable
	// closes the open ones after its answers change (see
	// transport.Config.Reachable). A test facility for network splits.
	Reachable func(address string) bool
}

// Replica is one backup replica of a partition.
type Replica struct {
	ID, Address string
	// Index is the replica's index in the table (1 for the first backup;
	// 0 when unknown: the replicas' order then gives it).
	Index int
	// Incoming marks a member taking over backup replica Index from the
	// serving one: it gets the same backups until the master swaps them.
	Incoming bool
}

// Message and Verdict are the fault rules' view of a message and their
// decision about it (see Config.Hook and transport.Faults).
type (
	Message = transport.Message
	Verdict = transport.Verdict
)

// OwnerCheckExempt is implemented by engine operations that run on a
// partition's executor whatever its owner and migration state (the
// migration steps themselves). They check what they need on their own.
type OwnerCheckExempt interface {
	OwnerCheckExempt()
}

// WaitsForWrites is implemented by an OwnerCheckExempt operation whose
// answer, like a read's, must wait until the synchronous backups of the
// writes that ran before it are done (readgate.go): a migration's
// prepare, whose answer carries the partition's data to its next owner.
// (Other engine operations are answered at once: a replica sync must not
// wait for acks that its own replica holds back until it is synced.)
type WaitsForWrites interface {
	OwnerCheckExempt
	WaitsForWrites()
}

// serviceEntry is one registered service.
type serviceEntry struct {
	name     string
	id       uint32
	instance spi.Service
	types    map[uint16]func() spi.Operation
	typeIDs  map[reflect.Type]uint16
	// metrics of each operation type
	statsByType map[reflect.Type]*opStats
	statsByID   map[uint16]*opStats
	protect     protection // split-brain protection (quorum.go)
}

// Service is the operation service of one member. It implements
// spi.OperationService.
type Service struct {
	cfg       Config
	log       *slog.Logger
	byName    map[string]*serviceEntry
	byID      map[uint32]*serviceEntry
	partition []*executor
	migrating []atomic.Bool         // by partition: operations are refused
	replicas  []replica.State[task] // by partition (see backup.go)
	gates     []readGate            // by partition: answers held behind unacknowledged writes (readgate.go)
	origin    uint64                // this member's incarnation, for invocation ids
	// departed: the incarnations of the members this member lost
	// (pins.go); written under departedMu.
	departed   atomic.Pointer[[]departure]
	departedMu sync.Mutex
	// spawnMu orders a goroutine's wg.Add made off the executors
	// (spawn) before Shutdown's closing, so never during its wg.Wait.
	spawnMu  sync.Mutex
	seq      atomic.Uint64
	generic  *executor // generic executors share one queue
	quit     chan struct{}
	clock    timeoutClock  // see invoke.go
	ticks    atomic.Uint64 // the clock's ticks so far
	ackTicks uint64        // BackupAckTimeout in ticks
	wg       sync.WaitGroup
	started  atomic.Bool
	running  atomic.Bool // the executors exist
	closed   atomic.Bool
	cut      atomic.Bool // CloseConnections ran: no retry can reach another member
	stopped  atomic.Bool // Shutdown is over: no executor runs
	m        *metrics
	records  []recordCount // exactly-once records, by partition executor
	nextCall atomic.Uint64

	// The member-to-member transport: tr is stream, or faults wrapping
	// it when Config.Hook is set (send uses the concrete ones).
	tr      transport.Transport
	stream  *transport.Stream
	faults  *transport.Faults
	handler transport.Handler // the stream's: s, or faults in front of it
}

var _ spi.OperationService = (*Service)(nil)

// New returns a Service; register services, then Start it.
func New(cfg Config) *Service {
	if cfg.PartitionThreads <= 0 {
		cfg.PartitionThreads = runtime.GOMAXPROCS(0)
	}
	if cfg.GenericThreads <= 0 {
		cfg.GenericThreads = 2
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.InvocationTimeout <= 0 {
		cfg.InvocationTimeout = 2 * time.Minute
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 10 * time.Second
	}
	if cfg.PinKeep <= 0 {
		cfg.PinKeep = defaultPinKeep
	}
	if cfg.RetryPause <= 0 {
		cfg.RetryPause = 10 * time.Millisecond
	}
	if cfg.BackupAckTimeout <= 0 {
		cfg.BackupAckTimeout = 10 * time.Second
	}
	if cfg.FrameBodyTimeout <= 0 {
		cfg.FrameBodyTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		migrating: make([]atomic.Bool, cfg.PartitionCount),
		replicas:  make([]replica.State[task], cfg.PartitionCount),
		gates:     make([]readGate, cfg.PartitionCount),
		origin:    newIncarnation(),
		m:         newMetrics(),
		records:   make([]recordCount, cfg.PartitionThreads),
		cfg:       cfg,
		log:       cfg.Logger,
		byName:    make(map[string]*serviceEntry),
		byID:      make(map[uint32]*serviceEntry),
		quit:      make(chan struct{}),
	}
	if cfg.LocalID != "" {
		s.origin = OriginOf(cfg.LocalID) // so that others can tell its invocations
	}
	s.clock.init()
	period := clockPeriod(cfg.InvocationTimeout)
	s.ackTicks = uint64((cfg.BackupAckTimeout + period - 1) / period)
	s.handler = s
	if cfg.Hook != nil {
		s.faults = transport.NewFaults(cfg.LocalID, cfg.Hook, s)
		s.handler = s.faults
	}
	s.stream = transport.NewStream(transport.Config{
		Local:            transport.Hello{Version: transport.ProtocolVersion, Cluster: cfg.ClusterName, ID: cfg.LocalID, Address: cfg.LocalAddress},
		Dial:             cfg.Dial,
		Handler:          s.handler,
		Logger:           cfg.Logger,
		FrameBodyTimeout: cfg.FrameBodyTimeout,
		TickPeriod:       period,
		Member:           cfg.Member,
		Reject:           cfg.Reject,
		Reachable:        cfg.Reachable,
	})
	s.tr = s.stream
	if s.faults != nil {
		s.faults.Wrap(s.stream)
		s.tr = s.faults
	}
	return s
}

// Register makes a service's operations invocable and decodable. It must be
// called before Start. The service travels on the wire as a 32-bit hash of
// its name; two names with one hash are an error.
func (s *Service) Register(name string, instance spi.Service, types []spi.OperationType) error {
	if s.started.Load() {
		return fmt.Errorf("register service %q: operation service already started", name)
	}
	if _, dup := s.byName[name]; dup {
		return fmt.Errorf("register service %q: registered twice", name)
	}
	id := uint32(xxhash.Sum64String(name))
	if other, dup := s.byID[id]; dup {
		return fmt.Errorf("register service %q: its wire id %#x collides with service %q; rename one of them", name, id, other.name)
	}
	e := &serviceEntry{name: name, id: id, instance: instance,
		types: make(map[uint16]func() spi.Operation), typeIDs: make(map[reflect.Type]uint16),
		statsByType: make(map[reflect.Type]*opStats), statsByID: make(map[uint16]*opStats)}
	for _, t := range types {
		if t.New == nil {
			return fmt.Errorf("register service %q: operation type %d has no factory", name, t.ID)
		}
		if _, dup := e.types[t.ID]; dup {
			return fmt.Errorf("register service %q: operation type id %d used twice", name, t.ID)
		}
		rt := reflect.TypeOf(t.New())
		if prev, dup := e.typeIDs[rt]; dup {
			return fmt.Errorf("register service %q: %v registered as type %d and %d", name, rt, prev, t.ID)
		}
		e.types[t.ID] = t.New
		e.typeIDs[rt] = t.ID
	}
	// Checked once every type is known: a backup type may come later in
	// the list than the type it backs up.
	for _, t := range types {
		if err := e.checkType(t); err != nil {
			return fmt.Errorf("register service %q: %w", name, err)
		}
	}
	for _, t := range types {
		rt := reflect.TypeOf(t.New())
		st := s.m.forType(name, rt)
		e.statsByType[rt], e.statsByID[t.ID] = st, st
	}
	s.byName[name] = e
	s.byID[id] = e
	return nil
}

// checkType refuses an operation type that could only fail at run time:
// a spi.BackupAwareOperation whose backup operation is not among the
// service's types (its writes would be acknowledged with no backup), or
// a spi.ResponseOperation whose response cannot travel (not a built-in
// type, and the operation is no spi.ResponseCodec). It learns both types
// by calling BackupOperation and Response on a value from the type's
// factory (spi.OperationType documents it): a panic there, or a nil
// backup operation, is refused as well.
func (e *serviceEntry) checkType(t spi.OperationType) error {
	op := t.New()
	if bo, ok := op.(spi.BackupAwareOperation); ok {
		bop, err := probe(bo.BackupOperation)
		switch {
		case err != nil:
			return fmt.Errorf("operation type %d (%T): BackupOperation, called on a value from New to learn the backup operation's type, %w", t.ID, op, err)
		case bop == nil:
			return fmt.Errorf("operation type %d (%T): BackupOperation, called on a value from New to learn the backup operation's type, returned nil", t.ID, op)
		}
		if _, ok := e.typeIDs[reflect.TypeOf(bop)]; !ok {
			return fmt.Errorf("operation type %d (%T): its backup operation type %T is not registered: add it to the service's OperationTypes", t.ID, op, bop)
		}
	}
	if ro, ok := op.(spi.ResponseOperation); ok {
		if _, codec := op.(spi.ResponseCodec); codec {
			return nil // any response travels through the codec
		}
		resp, err := probe(ro.Response)
		if err != nil {
			return fmt.Errorf("operation type %d (%T): Response, called on a value from New to learn the response's type, %w", t.ID, op, err)
		}
		if writeValue(spi.NewWriter(nil), resp) != nil {
			return fmt.Errorf("operation type %d (%T): response type %T has no codec: return nil, bool, int, int64, uint64, float64, string or []byte, or implement spi.ResponseCodec", t.ID, op, resp)
		}
	}
	return nil
}

// probe calls f, turning a panic into an error.
func probe[T any](f func() T) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panicked: %v", r)
		}
	}()
	return f(), nil
}

// Start starts the executors.
func (s *Service) Start() {
	if s.started.Swap(true) {
		return
	}
	s.partition = make([]*executor, s.cfg.PartitionThreads)
	for i := range s.partition {
		s.partition[i] = &executor{s: s, index: i, queue: make(chan task, s.cfg.QueueSize)}
		s.wg.Add(1)
		go s.partition[i].loop(&s.wg)
	}
	s.generic = &executor{s: s, index: -1, queue: make(chan task, s.cfg.QueueSize)}
	for i := 0; i < s.cfg.GenericThreads; i++ {
		e := &executor{s: s, index: -1, queue: s.generic.queue}
		s.wg.Add(1)
		go e.loop(&s.wg)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.clock.run(clockPeriod(s.cfg.InvocationTimeout), s.quit, func() {
			s.ticks.Add(1)
			s.tr.Tick()
			s.expireBackups()
		})
	}()
	s.running.Store(true)
}

// CloseConnections closes every connection to other members and refuses
// new ones at once, as a stopped process's connections end; Shutdown
// does the rest. Local tasks keep running until then, but they answer
// nobody from now on (finish: a local caller gets ErrShutdown), and no new
// invocation is sent: a process that died answers nobody.
func (s *Service) CloseConnections() {
	s.cut.Store(true)
	s.tr.Close()
}

// goingAway reports whether this member's connections are closed for
// good (CloseConnections or Shutdown): nothing sent from now on arrives.
func (s *Service) goingAway() bool { return s.closed.Load() || s.cut.Load() }

// Shutdown closes every connection, fails every waiting invocation with
// ErrShutdown and stops the executors once the running operations return.
func (s *Service) Shutdown() {
	s.spawnMu.Lock()
	closed := s.closed.Swap(true)
	s.spawnMu.Unlock()
	if closed {
		return
	}
	s.tr.Close()
	close(s.quit)
	// Wait for the operations running in an executor's place (runInline)
	// that took its lock before closed was set; later ones see closed and
	// do not run. Before wg.Wait: what such an operation started (a
	// delayed backup's goroutine) is then in wg before Wait begins.
	for _, e := range s.partition {
		e.mu.Lock()
		e.mu.Unlock()
	}
	s.wg.Wait()
	s.tr.Wait()
	// Every synchronous backup run has ended by now (its connection was
	// closed, its retry found the member closed), releasing the answers
	// held behind it; fail any left, so that no caller waits for them.
	for p := range s.gates {
		s.failHeld(p, spi.ErrShutdown)
	}
	// The executors are gone: fail what was queued after they drained,
	// then wake the invocations still waiting (see wait).
	for _, e := range append(slices.Clone(s.partition), s.generic) {
		for e != nil && len(e.queue) > 0 {
			s.finish(<-e.queue, nil, spi.ErrShutdown)
			e.count(-1)
		}
	}
	s.stopped.Store(true)
	s.clock.stop()
}

// PartitionThreads returns the number of partition executors.
func (s *Service) PartitionThreads() int { return s.cfg.PartitionThreads }

func (s *Service) checkOwner(pid int) error {
	id, _, ok := s.cfg.Routing.Owner(pid)
	switch {
	case !ok:
		return spi.ErrNotReady
	case id != s.cfg.LocalID:
		return fmt.Errorf("%w: partition %d is owned by %s, not by %s", spi.ErrWrongTarget, pid, id, s.cfg.LocalID)
	case s.migrating[pid].Load():
		return fmt.Errorf("%w: partition %d", spi.ErrPartitionMigrating, pid)
	}
	return nil
}

// SetMigrating marks partition pid as migrating (operations on it are
// refused with ErrPartitionMigrating) or not. Call it on pid's executor so
// that it orders with the partition's operations.
func (s *Service) SetMigrating(pid int, on bool) { s.migrating[pid].Store(on) }

// IsMigrating reports whether partition pid is marked as migrating here.
func (s *Service) IsMigrating(pid int) bool { return s.migrating[pid].Load() }

// ServiceInstance returns a registered service by name.
func (s *Service) ServiceInstance(name string) (spi.Service, bool) {
	e := s.byName[name]
	if e == nil {
		return nil, false
	}
	return e.instance, true
}

// AppendOperation encodes op of service as it travels in a request
// (service wire id, type id, data), for operations carried inside other
// operations (migration bundles).
func (s *Service) AppendOperation(w *spi.Writer, service string, op spi.Operation) error {
	e := s.byName[service]
	if e == nil {
		return fmt.Errorf("%w: %q", spi.ErrUnknownService, service)
	}
	tid, ok := e.typeIDs[reflect.TypeOf(op)]
	if !ok {
		return fmt.Errorf("%w: %T is not among the operation types of service %q", spi.ErrUnknownOperation, op, service)
	}
	inner := spi.NewWriter(nil)
	op.WriteData(inner)
	w.WriteUint32(e.id)
	w.WriteUint16(tid)
	w.WriteBytes(inner.Bytes())
	return nil
}

// ReadOperation decodes what AppendOperation wrote and returns the
// service's name and instance with the operation.
func (s *Service) ReadOperation(r *spi.Reader) (string, spi.Service, spi.Operation, error) {
	sid, tid, data := r.ReadUint32(), r.ReadUint16(), r.ReadBytes()
	if err := r.Err(); err != nil {
		return "", nil, nil, err
	}
	e := s.byID[sid]
	if e == nil {
		return "", nil, nil, fmt.Errorf("%w: wire id %#x", spi.ErrUnknownService, sid)
	}
	f := e.types[tid]
	if f == nil {
		return "", nil, nil, fmt.Errorf("%w: service %q type %d", spi.ErrUnknownOperation, e.name, tid)
	}
	op := f()
	inner := spi.NewReader(data)
	if err := op.ReadData(inner); err != nil {
		return "", nil, nil, fmt.Errorf("decoding %T of %q: %w", op, e.name, err)
	}
	if inner.Remaining() != 0 {
		return "", nil, nil, fmt.Errorf("%w: %d trailing bytes after %T", spi.ErrProtocol, inner.Remaining(), op)
	}
	return e.name, e.instance, op, nil
}

// enqueue hands t to its executor, waiting for room while ctx allows.
// enqueueUntil is enqueue for an invocation bounded by limit when not
// zero (its context has no deadline: see timeoutClock).
func (s *Service) enqueueUntil(ctx context.Context, limit time.Time, t task) error {
	if limit.IsZero() {
		return s.enqueue(ctx, t)
	}
	if s.tryEnqueue(t) {
		return nil
	}
	ctx, cancel := context.WithDeadline(ctx, limit) // the queue is full: rare
	defer cancel()
	return s.enqueue(ctx, t)
}

// tryEnqueue queues t unless its queue is full.
func (s *Service) tryEnqueue(t task) bool {
	if sampled() {
		t.queued = time.Now().UnixNano()
	}
	q, e := s.queueOf(t)
	e.count(1)
	select {
	case q <- t:
		return true
	default:
		e.count(-1)
		return false
	}
}

// queueOf returns t's queue and its executor (for the generic queue, the
// one its goroutines share).
func (s *Service) queueOf(t task) (chan task, *executor) {
	e := s.generic
	if t.pid >= 0 {
		e = s.partition[t.pid%len(s.partition)]
	}
	return e.queue, e
}

// enqueue queues t, waiting while its queue is full until ctx ends.
func (s *Service) enqueue(ctx context.Context, t task) error {
	if s.tryEnqueue(t) {
		return nil
	}
	q, e := s.queueOf(t)
	e.count(1)
	select {
	case q <- t:
		return nil
	case <-s.quit:
		e.count(-1)
		return spi.ErrShutdown
	case <-ctx.Done():
		e.count(-1)
		return fmt.Errorf("%w: executor queue full: %w", spi.ErrOverloaded, ctx.Err())
	}
}

// runInline runs t on the calling goroutine (an invoking caller, or a
// connection's reader), in place of its partition's executor, when t's
// operation is a spi.NonBlockingOperation and the executor has nothing
// queued or running. It saves the hand-off to the executor goroutine and
// back; false: t did not run, queue it.
//
// The executor's pending count is taken from 0 to 1 first, so nothing
// queued before t can still be waiting (per-partition order holds), and
// the executor's lock is held while t runs, so a task queued meanwhile
// waits for it (one operation of a partition at a time).
func (s *Service) runInline(t task, byCaller bool) bool {
	if t.pid < 0 || t.fn != nil {
		return false
	}
	if _, ok := t.op.(spi.NonBlockingOperation); !ok {
		return false
	}
	e := s.partition[t.pid%len(s.partition)]
	if !e.pending.CompareAndSwap(0, 1) {
		return false
	}
	// Deferred: a panic outside Run (in Response, say) reaches a caller
	// that may recover, and must not leave the executor locked.
	defer e.pending.Add(-1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.closed.Load() { // checked under the lock: see Shutdown
		return false
	}
	if sampled() {
		t.queued = time.Now().UnixNano() // timed like a queued task, with no wait
	}
	t.byCaller = byCaller
	e.run(t)
	return true
}

// RunOnPartition implements spi.OperationService.
func (s *Service) RunOnPartition(pid int, fn func()) error {
	if pid < 0 || pid >= s.cfg.PartitionCount {
		return fmt.Errorf("partition %d out of range 0..%d", pid, s.cfg.PartitionCount-1)
	}
	if s.closed.Load() {
		return spi.ErrShutdown
	}
	return s.enqueue(context.Background(), task{pid: pid, fn: fn})
}

// finish delivers the outcome of a task to whoever waits for it.
func (s *Service) finish(t task, resp any, err error) {
	// Once its connections are closing (CloseConnections), this member
	// answers nobody, as a stopped process: a write it ran now has no
	// backup, and the answer of a read would show such a write, which
	// dies with the member. Its own callers get ErrShutdown; a remote one
	// gets nothing, though its connection may not be closed yet (they
	// close one by one), and retries elsewhere.
	cut := s.cut.Load()
	switch {
	case t.local != nil:
		if cut {
			resp, err = nil, spi.ErrShutdown
		}
		t.local.complete(resp, err)
	case t.conn != nil && t.callID != 0:
		if !cut {
			s.sendResponse(t.conn, t.callID, t.op, resp, err)
		}
	case err != nil && t.fn == nil:
		s.log.Warn("operation failed with no caller waiting", "service", t.svc.name, "partition", t.pid, "error", err)
	}
}
