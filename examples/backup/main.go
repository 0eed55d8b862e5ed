// Command backup is the backup run of the counter service, the Go edition
// of the "Create the backups" step of Hazelcast's "User Defined Services"
// guide: every increment is repeated on a backup replica, so a counter
// survives the death of the member that owns it.
//
//	go run ./examples/backup
//
// Two members start in one process. Each partition has an owner (its
// primary replica) and, with the default backup-count of 1, one backup
// replica on the other member. The program prints which member owns the
// partition of the counter "counter" and which holds its backup, then
// increments it once:
//
//	counter: partition 259, owner member 0 (127.0.0.1:40115), backup on member 1 (127.0.0.1:40117)
//	level=INFO msg="Executing counter.inc() on: 127.0.0.1:40115" ...
//	level=INFO msg="Executing backup counter.inc() on: 127.0.0.1:40117" ...
//	counter: 1
//
// IncOperation is a backup-aware operation: after it ran on the owner, its
// IncBackupOperation runs on the backup. The counter's backups are
// synchronous (its backup-count property, default 1), so Inc returns only
// once the backup has applied the increment (or its member failed): when
// the caller sees 1, two members hold 1.
//
// The program then kills the owner with Terminate, as if its process died:
// no partitions are handed over and no goodbye is said. The survivor
// notices the failure (the members use fast failure detection, about a
// second), and the new partition table promotes the backup replica to
// owner. The counter, read and incremented through the survivor, still
// holds its value:
//
//	killed member 0 (127.0.0.1:40115), the owner
//	member 1 now owns partition 259 (table version 138)
//	counter after failover: 1
//	level=INFO msg="Executing counter.inc() on: 127.0.0.1:40117" ...
//	counter: 2
//
// The partition table decides which member owns the counter (today, with
// two members, "counter" stays with member 0, the first one). Member 0's
// proxy makes the first increment; the proxy used after the failure is
// always one of the survivor, since a proxy belongs to its member and dies
// with it. The program works whichever member owns the counter.
//
// The members bind free ports on 127.0.0.1 and do not use multicast, so
// the example runs anywhere and never meets another cluster. Their logs are
// shown at warn, except the counter's "Executing ..." lines (at info).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/examples/internal/demo"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/partition"
	"github.com/partita-go/partita/services/counter"
)

// counterName is the counter the program increments.
const counterName = "counter"

// ownedBy, when not -1, makes run use instead of "counter" the first of
// "counter1", "counter2", ... whose partition member ownedBy owns, so that
// the test covers both the owner and the other member being killed.
var ownedBy = -1

// stableTimeout bounds the wait for the members to agree on a settled,
// safe partition table.
const stableTimeout = 30 * time.Second

// failoverTimeout bounds the wait for the survivor to own the counter's
// partition once the owner is killed.
const failoverTimeout = 30 * time.Second

func main() { demo.Main("backup", run) }

// run starts two members, increments the counter once, kills its owner,
// checks through the survivor that the value survived, increments it again
// and shuts the survivor down, writing the program's output and the
// members' logs to w.
func run(ctx context.Context, w io.Writer) (err error) {
	sw := demo.NewWriter(w) // members log from their own goroutines
	// memberlist's Shutdown does not wait for its goroutines, so a member
	// may still log a line after Node.Shutdown returned; nothing may reach
	// the caller's w once run has returned.
	defer sw.Close()
	w = sw
	log := slog.New(&executingFilter{slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: demo.DropTime})})

	var members []*nodeengine.Node
	defer func() { err = errors.Join(err, nodeengine.ShutdownLocal(members)) }() // master last
	members, err = nodeengine.StartLocal(ctx, 2, configure, nodeengine.WithLogger(log))
	if err != nil {
		return err
	}
	for i, n := range members {
		fmt.Fprintf(w, "Member %d: %s\n", i, n.Address())
	}
	if err := waitStable(ctx, members); err != nil {
		return err
	}

	// Where the counter lives: its partition's owner and backup.
	t := members[0].Inspect().Table()
	name := counterName
	if ownedBy >= 0 {
		name = nameOwnedBy(members, t, ownedBy)
	}
	pid := members[0].Partitions().PartitionID(name)
	owner := demo.MemberIndex(members, t.Owner(pid))
	backups := t.BackupsOf(pid)
	if owner < 0 || len(backups) != 1 || demo.MemberIndex(members, backups[0]) < 0 {
		return fmt.Errorf("partition %d: owner %q, backups %q: want one of each, on the members", pid, t.Owner(pid), backups)
	}
	backup := demo.MemberIndex(members, backups[0])
	fmt.Fprintf(w, "%s: partition %d, owner member %d (%s), backup on member %d (%s)\n",
		name, pid, owner, members[owner].Address(), backup, members[backup].Address())

	c, err := getCounter(ctx, members[0], name)
	if err != nil {
		return err
	}
	if err := inc(ctx, w, c, 1); err != nil {
		return err
	}

	// Kill the owner: no hand-over, no goodbye.
	members[owner].Terminate()
	fmt.Fprintf(w, "killed member %d (%s), the owner\n", owner, members[owner].Address())
	survivor := members[backup]
	version, err := waitOwner(ctx, survivor, pid)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "member %d now owns partition %d (table version %d)\n", backup, pid, version)

	// The proxy of member 0 died with it if member 0 was the owner: go
	// through the survivor.
	c, err = getCounter(ctx, survivor, name)
	if err != nil {
		return err
	}
	v, err := c.Get(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s after failover: %d\n", c.Name(), v)
	if v != 1 {
		return fmt.Errorf("%s is %d after failover, want 1", c.Name(), v)
	}
	if err := inc(ctx, w, c, 2); err != nil {
		return err
	}
	fmt.Fprintln(w, "Finished")
	return nil
}

// nameOwnedBy returns the first of "counter1", "counter2", ... whose
// partition member i owns in t.
func nameOwnedBy(members []*nodeengine.Node, t *partition.Table, i int) string {
	for k := 1; ; k++ {
		name := fmt.Sprintf("%s%d", counterName, k)
		if t.Owner(members[0].Partitions().PartitionID(name)) == members[i].ID() {
			return name
		}
	}
}

// getCounter returns member n's proxy of the counter name.
func getCounter(ctx context.Context, n *nodeengine.Node, name string) (*counter.Counter, error) {
	obj, err := n.Proxies().Get(ctx, counter.ServiceName, name)
	if err != nil {
		return nil, err
	}
	c, ok := obj.(*counter.Counter)
	if !ok {
		return nil, fmt.Errorf("proxy %q is a %T, want *counter.Counter", name, obj)
	}
	return c, nil
}

// inc increments c by one, prints the new value and checks that it is want.
func inc(ctx context.Context, w io.Writer, c *counter.Counter, want int64) error {
	v, err := c.Inc(ctx, 1)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: %d\n", c.Name(), v)
	if v != want {
		return fmt.Errorf("%s is %d, want %d", c.Name(), v, want)
	}
	return nil
}

// configure sets member i's config (the default config on a free port of
// 127.0.0.1, without multicast, joining member 0) to fast failure
// detection and the counter's per-increment log lines at info.
func configure(i int, cfg *config.Config) {
	cfg.Source = fmt.Sprintf("examples/backup member %d", i)
	// One backup replica per partition (the default), on the other member.
	cfg.Partitions.BackupCount = 1
	// Fast failure detection, as in nodeengine/clustertest: the killed
	// owner is declared dead in about a second instead of several.
	cfg.UseFastFailureDetection()
	demo.CounterLogLevel(cfg, "info") // backup-count 1 (synchronous) is the counter's default
}

// waitStable waits until the members are stable (nodeengine.WaitStable)
// and the cluster is safe (every backup holds what its primary holds).
func waitStable(ctx context.Context, members []*nodeengine.Node) error {
	ctx, cancel := context.WithTimeout(ctx, stableTimeout)
	defer cancel()
	if err := nodeengine.WaitStable(ctx, members); err != nil {
		return err
	}
	return poll(ctx, "members not stable", func() string {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		safe, err := members[0].Partitions().IsClusterSafe(sctx)
		switch {
		case err != nil:
			return "cluster safety unknown: " + err.Error()
		case !safe:
			return "cluster not safe"
		}
		return ""
	})
}

// waitOwner waits until n's partition table names n the owner of
// partition p and n migrates nothing, and returns that table's version.
func waitOwner(ctx context.Context, n *nodeengine.Node, p int) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, failoverTimeout)
	defer cancel()
	var version int64
	err := poll(ctx, "no failover", func() string {
		t := n.Inspect().Table()
		switch {
		case t == nil:
			return "no partition table"
		case t.Owner(p) != n.ID():
			return fmt.Sprintf("table version %d names %q owner of partition %d", t.Version, t.Owner(p), p)
		case n.Inspect().MigrationInFlight():
			return "migrating partitions"
		}
		version = t.Version
		return ""
	})
	return version, err
}

// poll calls cond every 10ms until it returns "", or fails with what's
// prefix and cond's last answer when ctx ends.
func poll(ctx context.Context, what string, cond func() string) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		why := cond()
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s: %w", what, why, ctx.Err())
		case <-tick.C:
		}
	}
}

// executingFilter lets through the warnings and errors of the members and,
// at info, only the counter's "Executing ..." lines, so that the output
// tells the story without the members' routine logs.
type executingFilter struct{ h slog.Handler }

func (f *executingFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo && f.h.Enabled(ctx, l)
}

func (f *executingFilter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn && !strings.HasPrefix(r.Message, "Executing") {
		return nil
	}
	return f.h.Handle(ctx, r)
}

func (f *executingFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return &executingFilter{f.h.WithAttrs(as)}
}

func (f *executingFilter) WithGroup(name string) slog.Handler {
	return &executingFilter{f.h.WithGroup(name)}
}
