package migration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/spi"
)

// Engine is what the Manager needs from the node engine. Its methods are
// called from the Manager's goroutines.
type Engine interface {
	// IsMaster reports whether this member plans migrations now.
	IsMaster() bool
	// Table returns this member's current table (nil before the first).
	Table() *partition.Table
	// Targets returns the members that should own partitions: alive and
	// not leaving, oldest first.
	Targets() []spi.Member
	// Alive reports whether a member is in the member list (leaving ones
	// included).
	Alive(id string) bool
	// Address returns a live member's address.
	Address(id string) string
	// Install makes t this member's table and has it published to all;
	// false when the member already holds a newer table (then the change
	// is void).
	Install(t *partition.Table) bool
	// Push sends t to one member and returns once that member holds t or
	// a newer table.
	Push(ctx context.Context, t *partition.Table, member string) error
	// Prepare runs step 1 on the source and returns the replication data.
	Prepare(ctx context.Context, m Move) ([]byte, error)
	// Apply runs step 2 on the destination.
	Apply(ctx context.Context, m Move, data []byte) error
	// Finish commits or rolls back one endpoint; repeating it is harmless.
	Finish(ctx context.Context, m Move, endpoint spi.MigrationEndpoint, commit bool) error
}

// Config configures a Manager.
type Config struct {
	Count    int           // partitions
	Parallel int           // moves at once (default 4)
	Timeout  time.Duration // one step of a move (default 30s)
	Logger   *slog.Logger
}

// Stats counts what the Manager did since it was made.
type Stats struct {
	Planned, Completed, RolledBack int64
}

// Manager plans and runs migrations on the master. Its goroutine (Run)
// owns every change to the master's table.
type Manager struct {
	e    Engine
	cfg  Config
	log  *slog.Logger
	wake chan struct{}

	mu sync.Mutex // serialises table changes

	inflight                       atomic.Int32
	planned, completed, rolledBack atomic.Int64
}

// New returns a Manager; start Run on a goroutine of its own.
func New(e Engine, cfg Config) *Manager {
	if cfg.Parallel <= 0 {
		cfg.Parallel = 4
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{e: e, cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1)}
}

// Trigger asks the Manager to look at the member list again. It never
// blocks.
func (m *Manager) Trigger() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// InFlight returns the number of moves running now.
func (m *Manager) InFlight() int { return int(m.inflight.Load()) }

// Idle reports whether nothing is running and the table already is the
// balanced target for the current members (so a member that just joined
// makes the Manager busy at once, before it plans).
func (m *Manager) Idle() bool {
	if m.inflight.Load() > 0 {
		return false
	}
	t := m.e.Table()
	if t == nil {
		return false
	}
	var ids []string
	for _, mb := range m.e.Targets() {
		ids = append(ids, mb.ID)
	}
	if len(ids) == 0 {
		return false
	}
	_, moves, orphans := Plan(t.Owners, ids, m.cfg.Count, m.e.Alive)
	return len(moves) == 0 && len(orphans) == 0
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	return Stats{Planned: m.planned.Load(), Completed: m.completed.Load(), RolledBack: m.rolledBack.Load()}
}

// Run plans and runs migrations until ctx ends. A new master continues
// from the table it holds.
func (m *Manager) Run(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if m.e.IsMaster() {
			m.round(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-tick.C:
		}
	}
}

// round brings the table one planning round closer to the target.
func (m *Manager) round(ctx context.Context) {
	targets := m.e.Targets()
	if len(targets) == 0 {
		return
	}
	ids := make([]string, len(targets))
	for i, t := range targets {
		ids[i] = t.ID
	}
	var current []string
	if t := m.e.Table(); t != nil {
		current = t.Owners
	}
	target, moves, orphans := Plan(current, ids, m.cfg.Count, m.e.Alive)
	if len(orphans) > 0 {
		m.update(func(owners []string) {
			for _, p := range orphans {
				owners[p] = target[p]
			}
		})
		m.log.Info("partitions assigned without data", "count", len(orphans), "reason", "no live owner")
	}
	if len(moves) == 0 {
		return
	}
	m.planned.Add(int64(len(moves)))
	m.log.Info("migrations planned", "moves", len(moves), "members", len(ids))
	sem := make(chan struct{}, m.cfg.Parallel)
	var wg sync.WaitGroup
	var done atomic.Int32
	for _, mv := range moves {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		if !m.e.IsMaster() {
			<-sem
			break
		}
		wg.Add(1)
		m.inflight.Add(1)
		go func(mv Move) {
			defer func() { <-sem; m.inflight.Add(-1); wg.Done() }()
			if err := m.migrate(ctx, mv); err != nil {
				m.rolledBack.Add(1)
				m.log.Warn("migration rolled back", "partition", mv.Partition,
					"from", m.e.Address(mv.Source), "to", m.e.Address(mv.Destination), "error", err)
			} else {
				m.completed.Add(1)
			}
			if n := done.Add(1); n%50 == 0 || int(n) == len(moves) {
				m.log.Info("migration progress", "done", n, "of", len(moves))
			}
		}(mv)
	}
	wg.Wait()
	m.Trigger() // look again: the plan may be stale or some moves failed
}

// update changes the master's table under the lock and installs it.
func (m *Manager) update(change func(owners []string)) *partition.Table {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.e.Table()
	next := &partition.Table{Owners: make([]string, m.cfg.Count), Members: make(map[string]string)}
	if cur != nil {
		next.Version = cur.Version
		copy(next.Owners, cur.Owners)
	}
	next.Version++
	change(next.Owners)
	for _, o := range next.Owners {
		if o == "" {
			continue
		}
		if a := m.e.Address(o); a != "" {
			next.Members[o] = a
		} else if cur != nil {
			next.Members[o] = cur.Members[o]
		}
	}
	if !m.e.Install(next) {
		return nil
	}
	return next
}

var errGone = errors.New("member left the cluster")

// untilGone repeats f until it succeeds, the member leaves, or ctx ends.
func (m *Manager) untilGone(ctx context.Context, member string, f func(ctx context.Context) error) error {
	pause := 10 * time.Millisecond
	for {
		sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		err := f(sctx)
		cancel()
		if err == nil {
			return nil
		}
		if !m.e.Alive(member) {
			return fmt.Errorf("%w: %v", errGone, err)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

// migrate runs one move (see the package doc for the steps).
func (m *Manager) migrate(ctx context.Context, mv Move) error {
	t := m.e.Table()
	if t == nil || t.Owner(mv.Partition) != mv.Source || !m.e.Alive(mv.Destination) {
		return errors.New("plan is stale")
	}
	step, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	data, err := m.e.Prepare(step, mv)
	cancel()
	if err != nil {
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("prepare on source: %w", err)
	}
	step, cancel = context.WithTimeout(ctx, m.cfg.Timeout)
	err = m.e.Apply(step, mv, data)
	cancel()
	if err != nil {
		m.finish(ctx, mv, spi.MigrationDestination, false)
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("apply on destination: %w", err)
	}
	if err := m.untilGone(ctx, mv.Destination, func(ctx context.Context) error {
		return m.e.Finish(ctx, mv, spi.MigrationDestination, true)
	}); err != nil {
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("commit on destination: %w", err)
	}
	next := m.update(func(owners []string) { owners[mv.Partition] = mv.Destination })
	if next == nil {
		// A newer table (from an earlier master) arrived meanwhile; the
		// destination committed data that the table does not name it for.
		m.finish(ctx, mv, spi.MigrationSource, false)
		return errors.New("table changed under the migration")
	}
	if err := m.untilGone(ctx, mv.Destination, func(ctx context.Context) error {
		return m.e.Push(ctx, next, mv.Destination)
	}); err != nil {
		// The destination died with the data: give the partition back to
		// the source, which still holds it.
		if m.e.Alive(mv.Source) {
			m.update(func(owners []string) {
				if owners[mv.Partition] == mv.Destination {
					owners[mv.Partition] = mv.Source
				}
			})
		}
		m.finish(ctx, mv, spi.MigrationSource, false)
		return fmt.Errorf("publish to destination: %w", err)
	}
	// The source must hold the new table before it drops the data and
	// stops refusing operations, or it would serve them as the owner.
	if err := m.untilGone(ctx, mv.Source, func(ctx context.Context) error {
		return m.e.Push(ctx, next, mv.Source)
	}); err == nil {
		m.finish(ctx, mv, spi.MigrationSource, true)
	}
	return nil
}

// finish commits or rolls back one endpoint, retrying while it lives.
func (m *Manager) finish(ctx context.Context, mv Move, ep spi.MigrationEndpoint, commit bool) {
	member := mv.Source
	if ep == spi.MigrationDestination {
		member = mv.Destination
	}
	if err := m.untilGone(ctx, member, func(ctx context.Context) error {
		return m.e.Finish(ctx, mv, ep, commit)
	}); err != nil && !errors.Is(err, errGone) {
		m.log.Warn("cannot finish migration", "partition", mv.Partition, "endpoint", ep.String(), "commit", commit, "error", err)
	}
}

// Counts is a helper for logs and tests: partitions per member.
func Counts(owners []string) map[string]int {
	c := make(map[string]int)
	for _, o := range owners {
		c[o]++
	}
	return c
}
