// Command counter is the walk-through of the counter service, the Go
// edition of the example program of Hazelcast's "User Defined Services"
// guide: two members in one process, four distributed counters, two rounds
// of increments.
//
//	go run ./examples/counter
//
// Each increment runs on the member that owns the counter's partition,
// which logs "Executing <name>.inc() on: <address>"; the caller then prints
// the new value:
//
//	Round 1
//	level=INFO msg="Executing 0counter.inc() on: 127.0.0.1:40117" member=127.0.0.1:40117 service=CounterService partition=230
//	0counter: 1
//	...
//	Round 2
//	...
//	0counter: 2
//
// The program prints which member owns each counter's partition. Member 0
// makes every call: the joining member takes every other partition, so two
// of the four counters live on member 0 (a local call, no encoding) and two
// on member 1 (a remote call over TCP).
//
// The members bind free ports on 127.0.0.1 and do not use multicast, so
// the example runs anywhere and never meets another cluster.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/examples/internal/demo"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/services/counter"
)

// stableTimeout bounds the wait for both members to hold the same
// partition table.
const stableTimeout = 30 * time.Second

// counterNames are the counters of the seed's program.
var counterNames = []string{"0counter", "1counter", "2counter", "3counter"}

func main() { demo.Main("counter", run) }

// run starts two members, increments the four counters twice through
// member 0 and shuts the members down, writing the program's output and
// the members' logs to w.
func run(ctx context.Context, w io.Writer) (err error) {
	sw := demo.NewWriter(w) // members log from their own goroutines
	// memberlist's Shutdown does not wait for its goroutines, so a member
	// may still log a line after Node.Shutdown returned; nothing may reach
	// the caller's w once run has returned.
	defer sw.Close()
	w = sw
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: demo.DropTime}))

	var members []*nodeengine.Node
	defer func() { err = errors.Join(err, nodeengine.ShutdownLocal(members)) }() // master last
	members, err = nodeengine.StartLocal(ctx, 2, configure, nodeengine.WithLogger(log))
	if err != nil {
		return err
	}
	for i, n := range members {
		fmt.Fprintf(w, "Member %d: %s (id %s)\n", i, n.Address(), n.ID())
	}
	sctx, cancel := context.WithTimeout(ctx, stableTimeout)
	err = nodeengine.WaitStable(sctx, members)
	cancel()
	if err != nil {
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
		pid := members[0].Partitions().PartitionID(name)
		owner, _ := members[0].Partitions().Owner(pid)
		fmt.Fprintf(w, "%s: partition %d, owned by member %d (%s)\n", name, pid, demo.MemberIndex(members, owner.ID), owner.Address)
	}

	for round := int64(1); round <= 2; round++ {
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
	}
	fmt.Fprintln(w, "Finished")
	return nil
}

// configure sets member i's config (the default config on a free port of
// 127.0.0.1, without multicast, joining member 0) to log the counter's
// per-increment line at info.
func configure(i int, cfg *config.Config) {
	cfg.Source = fmt.Sprintf("examples/counter member %d", i)
	demo.CounterLogLevel(cfg, "info")
}
