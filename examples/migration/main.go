// Command migration is the partition migration run of the counter service,
// the Go edition of the "Enable partition migration" step of Hazelcast's
// "User Defined Services" guide: data moves with its partition.
//
//	go run ./examples/migration
//
// Three members start in one process and four counters, 0counter to
// 3counter, are incremented once through member 0 (Round 1). Three more
// members then join; the master rebalances the partition table and each
// partition that changes owner migrates, its counters with it (the counter
// service's CounterMigrationOperation). The program prints each counter's
// owner before and after the join, marking the counters that moved:
//
//	0counter: partition 230, owner 1 (127.0.0.1:40117)
//	...
//	3 members joined; partitions migrated
//	0counter: partition 230, owner 4 (127.0.0.1:40221)   <- moved from member 1
//	...
//
// Round 2 then increments every counter again. A counter that moved is
// now served by a member that never ran an increment, yet it reads 2, not
// 1: its value travelled with the partition.
//
// Members are numbered in start order (0 to 5). The members bind free ports
// on 127.0.0.1 and do not use multicast, so the example runs anywhere and
// never meets another cluster. The members log at warn and the counter's
// per-increment line is at debug, so the output shows just the story.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/examples/internal/demo"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/services/counter"
)

const (
	// firstMembers start the cluster; joiners join it after Round 1.
	firstMembers = 3
	joiners      = 3
)

// stableTimeout bounds each wait for the members to agree on a settled
// partition table.
const stableTimeout = 60 * time.Second

// counterNames are the counters of the seed's program.
var counterNames = []string{"0counter", "1counter", "2counter", "3counter"}

// beforeShutdown, when set, is called with the running members (in start
// order) after Round 2, before they shut down. The test uses it to read the
// final partition table.
var beforeShutdown func(members []*nodeengine.Node)

func main() { demo.Main("migration", run) }

// run starts three members, increments the four counters through member 0,
// starts three more members, waits for the partitions to migrate,
// increments the counters again and shuts the members down, writing the
// program's output and the members' warnings to w.
func run(ctx context.Context, w io.Writer) (err error) {
	sw := demo.NewWriter(w) // members log from their own goroutines
	// memberlist's Shutdown does not wait for its goroutines, so a member
	// may still log a line after Node.Shutdown returned; nothing may reach
	// the caller's w once run has returned.
	defer sw.Close()
	w = sw
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: demo.DropTime}))

	var members []*nodeengine.Node
	defer func() { err = errors.Join(err, nodeengine.ShutdownLocal(members)) }() // master last
	start := func(k int) error {
		first := len(members)
		started, err := nodeengine.StartLocal(ctx, k, func(i int, cfg *config.Config) {
			configure(first+i, cfg)
			if first > 0 {
				// Joiners join the running cluster, not a new one.
				cfg.Network.Join.Members = []string{members[0].Address()}
			}
		}, nodeengine.WithLogger(log))
		if err != nil {
			return err
		}
		members = append(members, started...)
		for i, n := range started {
			fmt.Fprintf(w, "Member %d: %s\n", first+i, n.Address())
		}
		sctx, cancel := context.WithTimeout(ctx, stableTimeout)
		defer cancel()
		return nodeengine.WaitStable(sctx, members)
	}

	if err := start(firstMembers); err != nil {
		return err
	}
	counters := make([]*counter.Counter, len(counterNames))
	for i, name := range counterNames {
		obj, err := members[0].Proxies().Get(ctx, counter.ServiceName, name)
		if err != nil {
			return err
		}
		c, ok := obj.(*counter.Counter)
		if !ok {
			return fmt.Errorf("proxy %q is a %T, want *counter.Counter", name, obj)
		}
		counters[i] = c
	}
	before, err := printOwners(w, members, nil)
	if err != nil {
		return err
	}
	if err := incAll(ctx, w, 1, counters); err != nil {
		return err
	}

	if err := start(joiners); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d members joined; partitions migrated\n", joiners)
	if _, err := printOwners(w, members, before); err != nil {
		return err
	}
	if err := incAll(ctx, w, 2, counters); err != nil {
		return err
	}
	if beforeShutdown != nil {
		beforeShutdown(slices.Clone(members))
	}
	fmt.Fprintln(w, "Finished")
	return nil
}

// printOwners prints the partition and owner of each counter as member 0
// sees them, and returns the owners' member indexes. When before is not
// nil, the counters whose owner is not before's are marked as moved.
func printOwners(w io.Writer, members []*nodeengine.Node, before []int) ([]int, error) {
	ps := members[0].Partitions()
	owners := make([]int, len(counterNames))
	for i, name := range counterNames {
		pid := ps.PartitionID(name)
		owner, ok := ps.Owner(pid)
		if !ok {
			return nil, fmt.Errorf("%s: partition %d has no owner", name, pid)
		}
		idx := demo.MemberIndex(members, owner.ID)
		if idx < 0 {
			return nil, fmt.Errorf("%s: partition %d is owned by %s, not a running member", name, pid, owner.ID)
		}
		owners[i] = idx
		line := fmt.Sprintf("%s: partition %d, owner %d (%s)", name, pid, idx, owner.Address)
		if before != nil && before[i] != idx {
			line += fmt.Sprintf("   <- moved from member %d", before[i])
		}
		fmt.Fprintln(w, line)
	}
	return owners, nil
}

// incAll prints "Round <round>" and increments each counter by one, which
// must bring it to round.
func incAll(ctx context.Context, w io.Writer, round int64, counters []*counter.Counter) error {
	fmt.Fprintf(w, "Round %d\n", round)
	for _, c := range counters {
		v, err := c.Inc(ctx, 1)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s: %d\n", c.Name(), v)
		if v != round {
			return fmt.Errorf("%s is %d after round %d, want %d", c.Name(), v, round, round)
		}
	}
	return nil
}

// configure sets member i's config (the default config on a free port of
// 127.0.0.1, without multicast, joining member 0) to log the counter's
// per-increment line at debug.
func configure(i int, cfg *config.Config) {
	cfg.Source = fmt.Sprintf("examples/migration member %d", i)
	demo.CounterLogLevel(cfg, "debug")
}
