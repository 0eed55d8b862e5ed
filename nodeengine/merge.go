package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/partita-go/partita/nodeengine/debugui"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
)

// The second phase of a merge on a member of the merging side (the top of
// splitbrain.go tells the whole): join the larger cluster and carry the
// data that PrepareMerge collected over to it. That data is the merging
// side's acknowledged writes, and Reset has dropped every other copy of
// it, so neither step gives up while the member runs:
//
//   - The join is tried again, with back-off (mergeRetryPause doubling up
//     to mergeRetryMaxPause), until the member has joined and holds the
//     larger cluster's partition table: through the target first, then
//     through any member of a cluster of this name that the member knows
//     of (join members, multicast, members that left) and that is not
//     merging itself, those that follow the target's master first. Each
//     attempt is a fresh member: a new memberlist instance and a new start
//     time (a join that was lost left it declared dead there). A join
//     after which the member finds itself alone again (mergeAloneGrace),
//     or gets no table within mergeTableWait, counts as failed.
//   - Each merge operation is invoked with a budget of the invocation
//     timeout, at least the dedup window and a second (so that an attempt
//     that may have run ends as spi.ErrIndeterminate, not as a timeout):
//     the operation service retries a refused attempt (partition
//     migrating, wrong target, owner left, no table) as the same
//     invocation, exactly once. An operation whose partition refused it
//     for that whole budget (spi.ErrTimeout over a retryable error, and
//     not spi.ErrIndeterminate) did not run: its batch is sent again from
//     that operation, after back-off, in rounds, until delivered; the
//     member joins again first if it finds itself alone.
//
// What is dropped is only what cannot be delivered: everything not
// delivered yet when the member stops (Shutdown or Terminate during the
// merge), and a batch from an operation that failed for good: its Run
// returned an error (the service or its merge policy refused the data),
// its outcome is unknown (spi.ErrIndeterminate, spi.ErrBackupTimeout: it
// may have run, and sending it again could apply it twice), or any other
// error that says nothing about a later attempt. Then the member logs at
// error what was dropped (batches, operations, partitions, by service)
// and the merge ends with MERGE_FAILED and its reason, counted in
// partita_split_brain_merges_total{result="failed"}; the member stays a
// member of the larger cluster (or stops).

const (
	// mergeRetryPause is the first pause before a join, or a round of
	// refused merge operations, is tried again; it doubles up to
	// mergeRetryMaxPause.
	mergeRetryPause    = 250 * time.Millisecond
	mergeRetryMaxPause = 5 * time.Second
	// mergeAloneGrace is how long a member that has joined may list only
	// itself before the join counts as lost.
	mergeAloneGrace = 2 * time.Second
	// mergeReplayers bounds the batches sent at once.
	mergeReplayers = 8
)

// mergeBatch is the merge operations of one service for one partition.
type mergeBatch struct {
	service   string
	partition int
	ops       []spi.Operation
}

// droppedBatch is a batch (from its first operation not delivered) that
// cannot be delivered, and why.
type droppedBatch struct {
	mergeBatch
	err error
}

// batchSummary counts batches for a log line.
type batchSummary struct {
	batches, partitions, operations int
	services                        string // "CounterService=271 TestService=12": batches by service
}

func summarize(bs []mergeBatch) batchSummary {
	parts := map[int]bool{}
	bySvc := map[string]int{}
	sum := batchSummary{batches: len(bs)}
	for _, b := range bs {
		parts[b.partition] = true
		bySvc[b.service]++
		sum.operations += len(b.ops)
	}
	sum.partitions = len(parts)
	var s []string
	for _, name := range slices.Sorted(maps.Keys(bySvc)) {
		s = append(s, fmt.Sprintf("%s=%d", name, bySvc[name]))
	}
	sum.services = strings.Join(s, " ")
	return sum
}

// joinMerge is the second phase of a merge on this member (see the top of
// this file).
func (n *Node) joinMerge() {
	sb := n.sb
	sb.mu.Lock()
	if sb.m.state != mergePrepared || !sb.m.ready {
		// Not prepared, joined already, or still collecting its data: a
		// second rejoin request that found the merge under way must not
		// join without the data (the prepare's caller joins after it; a
		// member prepared by its master's mergeOp joins on its own timer
		// if the word to join came too early).
		sb.mu.Unlock()
		return
	}
	sb.setState(mergeJoining) // under mu: one joinMerge runs, whoever calls it first
	target, pending := sb.m.target, sb.m.data
	total := len(pending)
	sb.m.data = nil
	if sb.m.cancel != nil {
		sb.m.cancel()
	}
	sb.mu.Unlock()

	var dropped []droppedBatch
	joined := false
	pause := mergeRetryPause
	for {
		if !joined {
			n.setMergeState(mergeJoining)
			if err := n.joinLarger(target); err != nil {
				dropped = append(dropped, dropAll(pending, fmt.Errorf("the member stopped before it joined the larger cluster: %w", err))...)
				break
			}
			joined = true
			n.setMergeState(mergeReplaying)
		}
		if len(pending) == 0 {
			break
		}
		sum := summarize(pending)
		n.log.Warn("replaying merge data", "batches", sum.batches, "partitions", sum.partitions,
			"operations", sum.operations, "services", sum.services)
		refused, lost := n.replayRound(pending)
		dropped = append(dropped, lost...)
		n.log.Warn("merge data replayed", "delivered", len(pending)-len(refused)-len(lost),
			"refused", len(refused), "dropped", len(lost))
		if len(refused) == 0 {
			break
		}
		pending = pending[:0:0]
		for _, r := range refused {
			pending = append(pending, r.mergeBatch)
		}
		n.log.Warn("merge batches refused by their partitions all along; sending them again",
			"batches", len(pending), "retry_in", pause, "error", refused[0].err)
		if !n.mergePause(&pause) {
			dropped = append(dropped, dropAll(pending, fmt.Errorf("the member stopped before its merge data was delivered: %w", spi.ErrShutdown))...)
			break
		}
		if len(n.del.members(n.cfg.Cluster.Name)) <= 1 {
			n.log.Warn("this member is alone again before its merge data was delivered: it joins the larger cluster again",
				"target", target, "batches", len(pending))
			joined = false
		}
	}
	sb.mu.Lock()
	sb.m = mergeRun{}
	sb.setState(mergeIdle)
	sb.mu.Unlock()
	if len(dropped) > 0 {
		n.mergeFailed(target, total, dropped)
		return
	}
	n.log.Warn("merged into the larger cluster", "target", target, "members", len(n.view.memberList()), "batches", total)
	n.lifecycle(spi.LifecycleEvent{State: spi.Merged})
	n.metrics.merges.WithLabelValues("merged").Inc()
}

// setMergeState moves this member's merge to state.
func (n *Node) setMergeState(state int) {
	n.sb.mu.Lock()
	n.sb.setState(state)
	n.sb.mu.Unlock()
}

// mergePause waits *pause and doubles it, up to mergeRetryMaxPause; it
// reports false, at once, when the member stops.
func (n *Node) mergePause(pause *time.Duration) bool {
	t := time.NewTimer(*pause)
	defer t.Stop()
	select {
	case <-n.run.stop():
		return false
	case <-t.C:
	}
	*pause = min(2**pause, mergeRetryMaxPause)
	return n.state.Load() == stateRunning
}

// joinLarger joins the larger cluster as a fresh member and waits for its
// partition table, again and again (see the top of this file), until it
// has it; it fails only when the member stops.
func (n *Node) joinLarger(target string) error {
	pause := mergeRetryPause
	n.sb.mu.Lock()
	attempt := n.sb.m.attempts // the attempts of this merge so far (the member may join again)
	n.sb.mu.Unlock()
	for {
		attempt++
		through, err := n.joinOnce(target, attempt)
		if err == nil {
			n.log.Warn("joined the larger cluster; waiting for its partition table",
				"through", through, "attempt", attempt, "members", len(n.del.members(n.cfg.Cluster.Name)))
			err = n.waitMergeTable()
		}
		if err == nil {
			return nil
		}
		if n.state.Load() != stateRunning || n.run.ctx.Err() != nil {
			return spi.ErrShutdown
		}
		n.sb.mu.Lock()
		n.sb.m.lastErr = err.Error()
		n.sb.mu.Unlock()
		n.log.Warn("cannot join the larger cluster yet; trying again", "target", target, "attempt", attempt,
			"error", err, "retry_in", pause)
		if !n.mergePause(&pause) {
			return spi.ErrShutdown
		}
	}
}

// joinOnce makes this merge's join attempt number attempt: a new
// memberlist instance (with a new start time, after the first attempt)
// joins the larger cluster through the first address that takes it
// (target; after the first attempt, those of mergeJoinAddresses); it
// returns that address.
func (n *Node) joinOnce(target string, attempt int) (string, error) {
	addrs := []string{target}
	if attempt > 1 {
		addrs = n.mergeJoinAddresses(target)
		// A join that was lost left this member declared dead there: it
		// comes back as a member with a new start time, still younger
		// than every member of the larger cluster.
		n.del.setStarted(time.Now())
	}
	n.sb.mu.Lock()
	n.sb.m.attempts = attempt
	n.sb.mu.Unlock()
	level := slog.LevelWarn // a retry follows a warn line that says why
	if attempt > 1 {
		level = slog.LevelInfo
	}
	n.log.Log(n.run.ctx, level, "joining the larger cluster", "target", target, "attempt", attempt, "addresses", addrs)
	var through string
	err := n.withMemberlist(func() error {
		// A new memberlist instance joins: the old one's view of the
		// cluster left behind must not reach the larger cluster
		// (renewMemberlist). Meanwhile the member list stays as it was
		// (holdView).
		n.del.holdView(n.cfg.Cluster.Name)
		defer n.del.releaseView()
		if err := n.renewMemberlist(); err != nil {
			return err
		}
		var errs []error
		for _, a := range addrs {
			// One at a time: memberlist joins every address that
			// answers, and two of them may be two clusters.
			if _, err := n.ml.Join([]string{a}); err != nil {
				errs = append(errs, joinError(err))
				continue
			}
			through = a
			return nil
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return "", fmt.Errorf("join %s: %w", strings.Join(addrs, ", "), err)
	}
	return through, nil
}

// joinError is memberlist's join error for one address without its
// multierror framing ("1 error occurred: ..."), which a log line shows
// over several lines.
func joinError(err error) error {
	if me, ok := err.(interface{ WrappedErrors() []error }); ok && len(me.WrappedErrors()) == 1 {
		return me.WrappedErrors()[0]
	}
	return err
}

// mergeJoinAddresses returns where to join the larger cluster: target,
// then the other addresses this member knows of (mergeCandidates) whose
// member answers a probe as a member of a cluster of this name, protocol
// and partition count that is not merging; those that follow the master
// at target first (target itself may be gone, or unreachable from here
// only).
func (n *Node) mergeJoinAddresses(target string) []string {
	var same, other []string
	for _, a := range n.mergeCandidates() {
		if a == target {
			continue
		}
		ctx, cancel := n.run.stopContext(probeTimeout)
		ci, err := n.probe(ctx, a, probeInfo, n.view.id)
		cancel()
		switch {
		case err != nil, ci.Cluster != n.cfg.Cluster.Name, ci.Protocol != operation.ProtocolVersion,
			ci.Partitions != n.view.count, ci.Merging, ci.MasterID == "", ci.MasterID == n.view.id:
		case ci.Master == target:
			same = append(same, a)
		default:
			other = append(other, a)
		}
	}
	return append(append([]string{target}, same...), other...)
}

// waitMergeTable waits, after a join, until the larger cluster's master
// has sent its table. It fails when this member lists only itself again
// for mergeAloneGrace (the join was lost: the network failed again, or
// the larger cluster declared it dead), when no table came within
// mergeTableWait, or when the member stops.
func (n *Node) waitMergeTable() error {
	deadline := time.Now().Add(mergeTableWait)
	var alone time.Time
	for {
		if t := n.view.table.Load(); t != nil && !n.view.isMaster() {
			return nil
		}
		now := time.Now()
		switch {
		case len(n.del.members(n.cfg.Cluster.Name)) > 1:
			alone = time.Time{}
		case alone.IsZero():
			alone = now
		case now.Sub(alone) > mergeAloneGrace:
			return errors.New("joined, then alone again before the larger cluster's partition table arrived")
		}
		if now.After(deadline) {
			return fmt.Errorf("joined, but no partition table from the larger cluster within %v", mergeTableWait)
		}
		select {
		case <-n.run.stop():
			return spi.ErrShutdown
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// replayRound invokes each batch's operations in order on its partition,
// up to mergeReplayers batches at once. It returns the batches (from
// their first operation not delivered) that their partition refused all
// along, to be sent again, and those that cannot be delivered (see the
// top of this file), each with its error.
func (n *Node) replayRound(batches []mergeBatch) (refused, lost []droppedBatch) {
	oc := n.cfg.Operations
	budget := max(oc.InvocationTimeout, oc.DedupWindow+time.Second)
	var mu sync.Mutex
	sem := make(chan struct{}, mergeReplayers)
	var wg sync.WaitGroup
	for _, b := range batches {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for i, op := range b.ops {
				ctx, cancel := context.WithTimeout(n.run.ctx, budget)
				_, err := n.ops.Invoke(ctx, b.service, op, b.partition)
				cancel()
				if err == nil {
					continue
				}
				rest := mergeBatch{service: b.service, partition: b.partition, ops: b.ops[i:]}
				err = fmt.Errorf("service %s partition %d: %w", b.service, b.partition, err)
				mu.Lock()
				switch {
				case n.run.ctx.Err() != nil || errors.Is(err, spi.ErrShutdown):
					lost = append(lost, droppedBatch{rest, fmt.Errorf("the member stopped before its merge data was delivered: %w", err)})
				case notApplied(err):
					refused = append(refused, droppedBatch{rest, err})
				default:
					lost = append(lost, droppedBatch{rest, err})
				}
				mu.Unlock()
				n.sb.mu.Lock()
				if notApplied(err) {
					n.sb.m.replays++ // it will be sent again
				} else {
					n.sb.m.held-- // dropped
				}
				n.sb.mu.Unlock()
				return
			}
			n.sb.mu.Lock()
			n.sb.m.held-- // delivered
			n.sb.mu.Unlock()
		})
	}
	wg.Wait()
	return refused, lost
}

// notApplied reports whether err, a merge operation's invocation error,
// says that the operation did not run and may run on a later attempt: its
// partition refused it (migrating, wrong target, owner left, no table)
// until the invocation's budget ran out. An outcome unknown
// (spi.ErrIndeterminate, which wraps the last refusal too) is not one of
// them.
func notApplied(err error) bool {
	return spi.IsRetryable(err) && !errors.Is(err, spi.ErrIndeterminate)
}

// dropAll returns every batch of bs as dropped for err.
func dropAll(bs []mergeBatch, err error) []droppedBatch {
	out := make([]droppedBatch, len(bs))
	for i, b := range bs {
		out[i] = droppedBatch{b, err}
	}
	return out
}

// mergeFailed reports a merge that could not deliver some of its data: it
// logs at error what was dropped and why, emits MERGE_FAILED with the
// reason and counts the failure.
func (n *Node) mergeFailed(target string, total int, dropped []droppedBatch) {
	bs := make([]mergeBatch, len(dropped))
	for i, d := range dropped {
		bs[i] = d.mergeBatch
	}
	sum := summarize(bs)
	first := dropped[0].err
	n.log.Error("merge data dropped: the merging side's writes it carried are lost",
		"batches", sum.batches, "of", total, "partitions", sum.partitions, "operations", sum.operations,
		"services", sum.services, "error", first)
	reason := fmt.Sprintf("%d of %d merge batches not delivered (%d operations on %d partitions; %s): %v",
		sum.batches, total, sum.operations, sum.partitions, sum.services, first)
	n.log.Error("merge failed", "target", target, "reason", reason)
	n.lifecycle(spi.LifecycleEvent{State: spi.MergeFailed, Reason: reason})
	n.metrics.merges.WithLabelValues("failed").Inc()
}

// mergeStatus is this member's part in a merge, for /debug/cluster.
func (n *Node) mergeStatus() debugui.Merge {
	sb := n.sb
	sb.mu.Lock()
	defer sb.mu.Unlock()
	m := sb.m
	out := debugui.Merge{State: mergeStateNames[m.state]}
	if m.state == mergeIdle {
		if sb.leading.Load() {
			out.State = mergeStateNames[mergePrepared] // it tells its members to prepare
		}
		return out
	}
	out.Target, out.Attempts, out.LastError = m.target, m.attempts, m.lastErr
	out.Batches, out.Replays = max(m.held, 0), m.replays
	out.Seconds = time.Since(m.since).Seconds()
	return out
}
