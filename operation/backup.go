package operation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/operation/replica"
	"github.com/partita-go/partita/spi"
)

// Replica versions and the states of a backup replica are decided by
// package replica (see its doc); this file acts on its decisions: it runs
// and acknowledges backups, fails held ones and asks for full copies.

// ReplicaVersion returns this member's replica version of partition p.
func (s *Service) ReplicaVersion(p int) int64 { return s.replicas[p].Version() }

// SetReplicaVersion sets partition p's replica version (a migration's
// destination takes the source's). Call it on p's executor.
func (s *Service) SetReplicaVersion(p int, v int64) { s.replicas[p].Adopt(v) }

// BumpEpoch starts a new epoch of partition p's versions (a promoted
// backup, so that the other backups resynchronise). Call it on p's
// executor.
func (s *Service) BumpEpoch(p int) { s.replicas[p].Promote() }

// SyncsPending returns how many partitions' replicas wait for a sync.
func (s *Service) SyncsPending() int {
	n := 0
	for p := range s.replicas {
		if s.replicas[p].Syncing() {
			n++
		}
	}
	return n
}

// MarkSyncing records that a full sync of partition p's replica was asked
// for (by the engine's anti-entropy). Call it on p's executor.
func (s *Service) MarkSyncing(p int) { s.replicas[p].MarkSyncing() }

// IsSyncing reports whether partition p's replica here waits for a full
// copy from its primary (it may lack acknowledged writes).
func (s *Service) IsSyncing(p int) bool { return s.replicas[p].Syncing() }

// ReplicaPending reports whether partition p's replica waits for missing
// backups or a sync. Call it on p's executor.
func (s *Service) ReplicaPending(p int) bool { return s.replicas[p].Behind() }

// sendBackups sends t's backups after it ran on the primary. It reports
// whether it took over finishing t (there are synchronous backups: the last
// ack, or the failure of the last, finishes it).
//
// When the caller is another member and there is one synchronous backup,
// the backup carries the caller's call id: the caller gets its answer
// (the encoded response the backup carries anyway, for exactly-once) from
// the backup as soon as it is applied. When the caller holds that backup,
// two messages after the request instead of four; otherwise the backup
// also carries the caller's member id and forwards the answer itself
// (transport.KindAnswer), three hops instead of four. The ack still comes to the
// primary, which retries the backup until it is applied (the answer comes
// with the retry). It answers the caller itself when the backup failed for
// good and, after the ack, when the backup forwarded the answer: a
// forwarded answer can be lost with its connection (the caller takes the
// first answer and drops the other).
//
// A replica that is taking over a backup replica (Replica.Incoming) gets
// every backup the replica it replaces gets, in the same mode: until the
// master swaps them, a synchronous write is acknowledged by both.
//
// It fails, sending nothing, when the backup operation's type is not
// registered: Register refuses such a type (it learns the backup's type
// from a value made by the factory), so only a BackupOperation that
// returns another type once the operation ran gets here. The write is
// then on the primary alone, and the caller is told so rather than
// answered as if it were backed up.
func (s *Service) sendBackups(e *executor, t task, bo spi.BackupAwareOperation, resp any) (busy *atomic.Bool, err error) {
	e.reps = s.cfg.Routing.Backups(t.pid, e.reps[:0])
	reps := e.reps
	syncN := max(bo.SyncBackupCount(), 0)
	total, nsync := backupRoles(reps, syncN+max(bo.AsyncBackupCount(), 0), syncN, &e.roles)
	if total == 0 {
		return nil, nil
	}
	bop := bo.BackupOperation()
	typeID, ok := t.svc.typeIDs[reflect.TypeOf(bop)]
	if !ok {
		s.log.Error("backup operation type not registered; no backup taken", "service", t.svc.name,
			"op", fmt.Sprintf("%T", t.op), "backup", fmt.Sprintf("%T", bop))
		return nil, fmt.Errorf("service %q: %T ran on the primary of partition %d but was not backed up: its backup operation type %T is not registered",
			t.svc.name, t.op, t.pid, bop)
	}
	version := s.replicas[t.pid].Stamp()
	run := &backupRun{s: s, t: t, resp: resp}
	run.busy.Store(true)
	// t.resp is the executor's scratch; retries need their own copy.
	if len(t.resp) <= len(run.respBuf) {
		run.t.resp = append(run.respBuf[:0], t.resp...)
	} else {
		run.t.resp = bytes.Clone(t.resp)
	}
	if nsync == 1 && t.conn != nil && t.callID != 0 {
		run.callerCall = t.callID
		if reps[0].ID != t.conn.Remote().ID {
			run.t.callerID = t.conn.Remote().ID // the backup forwards the answer
		}
	}
	run.remaining.Store(int32(nsync))
	if nsync > 0 {
		// Before any backup leaves: an ack may finish the run at once.
		run.bar = s.gates[t.pid].register(s)
	}
	deadline := s.ticks.Load() + s.ackTicks
	first := true
	for i, r := range reps {
		role := e.roles[i]
		if role == 0 {
			continue
		}
		if role > syncN {
			s.m.backupAsyn.Inc()
			if err := s.sendBackup(nil, run.t, r, role, version, typeID, 0, bop); err != nil {
				s.log.Debug("asynchronous backup not sent", "partition", t.pid, "replica", role, "to", r.Address, "error", err)
			}
			continue
		}
		s.m.backupSync.Inc()
		b := &run.first
		if !first {
			b = new(syncBackup)
		}
		first = false
		*b = syncBackup{run: run, r: r, replica: role, version: version, typeID: typeID, op: bop, deadline: deadline}
		b.cl.then = b
		if t.queued != 0 {
			b.start = time.Now()
		}
		b.send()
	}
	if nsync == 0 {
		return nil, nil
	}
	return &run.busy, nil
}

// backupRoles decides which of a partition's replicas (as Routing.Backups
// lists them) get a backup: roles[i] is the backup's replica number (1 for
// the first backup) or 0 for none. The replicas that serve take the
// numbers in order, up to count; an incoming replica takes the number of
// the serving one it replaces, so it gets the same backups in the same
// mode. It returns how many get one, and how many of those are
// synchronous (number <= syncN). With one synchronous backup and no
// incoming one, that backup is reps[0].
func backupRoles(reps []Replica, count, syncN int, roles *[]int) (total, nsync int) {
	*roles = (*roles)[:0]
	var byIndex [8]int // serving replica's number by table index
	n := 0
	for _, r := range reps {
		role := 0
		if !r.Incoming {
			if n < count {
				n++
				role = n
			}
			if r.Index > 0 && r.Index < len(byIndex) {
				byIndex[r.Index] = role
			}
		} else if r.Index > 0 && r.Index < len(byIndex) {
			role = byIndex[r.Index]
		}
		*roles = append(*roles, role)
		if role > 0 {
			total++
			if role <= syncN {
				nsync++
			}
		}
	}
	return total, nsync
}

// backupRun is the synchronous backups of one operation run on a primary:
// the last ack, or the failure of the last, finishes the operation.
type backupRun struct {
	s    *Service
	t    task // t.resp: in respBuf when it fits
	resp any
	// busy is the flag a retry of t checks (the exactly-once log keeps
	// it): set until the last synchronous backup is done.
	busy    atomic.Bool
	respBuf [24]byte
	// callerCall: the caller is another member, which takes its answer
	// from the only synchronous backup (see sendBackups).
	callerCall uint64
	remaining  atomic.Int32
	failed     atomic.Bool
	// unconfirmed: a backup replica that is still a member never
	// acknowledged within operations.backup-ack-timeout (its error).
	unconfirmed atomic.Pointer[error]
	// bar counts the run among its partition's unfinished ones, which
	// hold the answers of later reads (readgate.go).
	bar   *barrier
	first syncBackup // the first replica's, in the same allocation
}

// unconfirm records why the write is not acknowledged (the first reason
// wins). A function of its own: taking the address of acked's err would
// move it to the heap on every ack.
func (r *backupRun) unconfirm(err error) { r.unconfirmed.CompareAndSwap(nil, &err) }

// unconfirmRecord marks the run's exactly-once record as not acknowledged
// (Record.Unconfirm), then clears its busy flag: a retry of the
// invocation (its first answer lost, or sent to this member again by a
// caller that took it for the primary still) must not take the recorded
// response for an acknowledgement of a write that only this member may
// hold, and waits (spi.ErrInProgress) until the mark is made. The record
// is the executor's: the mark is made there, from a goroutine of its own
// (done may run on that executor, whose queue may be full).
func (r *backupRun) unconfirmRecord() {
	s, p, k := r.s, r.t.pid, r.t.key
	if s.closed.Load() {
		return // the flag stays set: a retry finds the run busy
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.enqueue(context.Background(), task{pid: p, fn: func() {
			s.replicas[p].Record().Unconfirm(k)
			r.busy.Store(false)
		}})
	}()
}

// done counts one synchronous backup acknowledged (err nil) or given up.
func (r *backupRun) done(err error) {
	s, t := r.s, r.t
	if err != nil {
		r.failed.Store(true)
		s.log.Debug("synchronous backup not acknowledged; the write is safe on the primary", "partition", t.pid, "error", err)
	}
	if r.remaining.Add(-1) != 0 {
		return
	}
	if e := r.unconfirmed.Load(); e != nil {
		r.unconfirmRecord()
		r.bar.notAcked(s, *e)
	} else {
		r.busy.Store(false)
	}
	// The reads that ran after this write may be answered now, if no
	// earlier run holds them; the way this writer is answered below (or
	// not, at shutdown) is the way they are.
	r.bar.runDone(s)
	if s.goingAway() {
		// This member is going away: an ack that failed with it proves
		// nothing, so send no answer (a remote caller retries with the
		// same invocation id).
		if t.local != nil {
			t.local.complete(nil, spi.ErrShutdown)
		}
		return
	}
	if e := r.unconfirmed.Load(); e != nil {
		// The write is on the primary only and a replica that should hold
		// it lives: not acknowledged, the outcome is unknown to the caller.
		s.finish(t, nil, *e)
		return
	}
	if r.callerCall != 0 && !r.failed.Load() && t.callerID == "" {
		return // the caller took its answer from the backup it holds
	}
	// The primary answers even when the backup forwarded the answer
	// (t.callerID set): a forwarded answer can be lost with its
	// connection, and this one then completes the call; otherwise it
	// arrives second and is dropped.
	s.finish(t, r.resp, nil)
}

// syncBackup is one synchronous backup until its replica acknowledges it.
// Only the replica's leaving excuses a missing ack (the member died, or
// the table no longer has that replica); any other failure (the replica's
// table is behind and it refused, a broken connection to a live member,
// an overloaded replica) is retried, so an acknowledged write is on every
// synchronous backup replica. A replica that moved in the table (another
// member now holds it) gets the backup at once. Past the deadline
// (operations.backup-ack-timeout, counted in clock ticks) the write is
// answered with spi.ErrBackupTimeout.
type syncBackup struct {
	run     *backupRun
	r       Replica
	replica int
	version int64
	typeID  uint16
	op      spi.Operation
	tries   int
	start   time.Time // sampled backups only
	// deadline is the tick of the service's clock (Service.ticks) after
	// which the write is given up as unconfirmed.
	deadline uint64
	// cl is the pending call of the attempt in flight; an attempt's call
	// is completed (and out of every pending map) before the next one.
	cl call
}

func (b *syncBackup) send() {
	run := b.run
	if err := run.s.sendBackup(&b.cl, run.t, b.r, b.replica, b.version, b.typeID, run.callerCall, b.op); err != nil {
		b.acked(err)
	}
}

func (b *syncBackup) acked(err error) {
	s, t := b.run.s, b.run.t
	if err == nil {
		s.m.backupAcked.Inc()
		if !b.start.IsZero() {
			s.m.backupAckSeconds.Observe(time.Since(b.start).Seconds())
		}
		b.run.done(nil)
		return
	}
	if errors.Is(err, spi.ErrIndeterminate) {
		// The replica follows a backup promoted since this write was
		// stamped (refuseSuperseded): the write is not in the history that
		// survives, and re-sending cannot change that.
		s.m.backupFailed.Inc()
		s.log.Warn("synchronous backup refused by a replica of a newer primary; the write is not acknowledged",
			"partition", t.pid, "replica", b.replica, "to", b.r.Address, "error", err)
		b.run.unconfirm(err)
		b.run.done(err)
		return
	}
	_, member := s.cfg.Routing.MemberAddress(b.r.ID)
	b.tries++
	if b.tries == 1 {
		s.m.backupLate.Inc()
	}
	if member && !s.closed.Load() {
		r, ok := s.replicaNow(t.pid, b.r.ID, b.replica)
		switch {
		case !ok:
			member = false // no such replica any more: like a death
		case r.ID != b.r.ID:
			// The replica moved: the new holder gets the backup at once
			// (it applies it once synced). No pause, no try counted.
			s.log.Debug("synchronous backup's replica moved; sending to the new one", "partition", t.pid,
				"replica", b.replica, "from", b.r.Address, "to", r.Address)
			b.r = r
			b.tries--
			b.send()
			return
		}
	}
	if !member || s.goingAway() || s.ticks.Load() > b.deadline {
		s.m.backupFailed.Inc()
		switch _, _, table := s.cfg.Routing.Owner(t.pid); {
		case s.goingAway():
		case member:
			err = fmt.Errorf("%w: partition %d replica %d on %s, for %v (%d tries): %w", spi.ErrBackupTimeout,
				t.pid, b.replica, b.r.Address, s.cfg.BackupAckTimeout, b.tries, err)
			s.log.Error("synchronous backup never acknowledged; the write is not acknowledged to its caller",
				"partition", t.pid, "replica", b.replica, "to", b.r.Address, "error", err)
			b.run.unconfirm(err)
		case !table:
			// Not a replica that left but this member's table that went:
			// its cluster merges into another (a member declared dead
			// that ran on, a split's smaller side), giving up its data.
			// The write is safe nowhere; the merge policy decides whether
			// it survives.
			// Not wrapped: the replica's refusal (a wrong target, say)
			// must not make the caller retry.
			err = fmt.Errorf("%w: partition %d: this member dropped its partition table (a merge) before replica %d on %s acknowledged the write (last: %v)",
				spi.ErrIndeterminate, t.pid, b.replica, b.r.Address, err)
			s.log.Warn("synchronous backup given up as this member gives its data up; the write is not acknowledged",
				"partition", t.pid, "replica", b.replica, "to", b.r.Address, "error", err)
			b.run.unconfirm(err)
		}
		b.run.done(err)
		return
	}
	s.log.Debug("synchronous backup failed; retrying", "partition", t.pid, "replica", b.replica, "to", b.r.Address, "error", err)
	pause := min(time.Duration(b.tries)*5*time.Millisecond, 500*time.Millisecond)
	s.wg.Add(1)
	time.AfterFunc(pause, func() {
		defer s.wg.Done()
		b.send()
	})
}

// replicaNow returns who holds backup replica number `replica` of
// partition p now: member id when the table still lists it as a replica
// that gets backups (serving or incoming), else the serving replica with
// that number; false when there is none.
func (s *Service) replicaNow(p int, id string, replica int) (Replica, bool) {
	reps := s.cfg.Routing.Backups(p, nil)
	var roles []int
	backupRoles(reps, len(reps), 0, &roles)
	var moved Replica
	found := false
	for i, r := range reps {
		if roles[i] == 0 {
			continue
		}
		if r.ID == id {
			return r, true
		}
		if !r.Incoming && roles[i] == replica && r.ID != s.cfg.LocalID { // never to itself (it was demoted)
			moved, found = r, true
		}
	}
	return moved, found
}

func (s *Service) sendBackup(cl *call, t task, r Replica, replica int, version int64, typeID uint16, callerCall uint64, bop spi.Operation) error {
	if c := s.tr.Connected(r.ID); c != nil {
		return s.sendBackupOn(c, cl, t, typeID, replica, version, callerCall, bop)
	}
	// Dialling can take long: never on a partition executor.
	if s.goingAway() {
		return spi.ErrShutdown
	}
	s.dialAndSendBackup(cl, t, r, replica, version, typeID, callerCall, bop)
	return nil
}

// dialAndSendBackup sends a backup once a connection to its replica is
// dialled, on a goroutine of its own (kept out of sendBackup so that
// the hot path's task does not move to the heap).
func (s *Service) dialAndSendBackup(cl *call, t task, r Replica, replica int, version int64, typeID uint16, callerCall uint64, bop spi.Operation) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), transport.HandshakeTimeout)
		defer cancel()
		c, err := s.tr.Conn(ctx, r.ID, r.Address)
		if err == nil {
			err = s.sendBackupOn(c, cl, t, typeID, replica, version, callerCall, bop)
		}
		if err != nil && cl != nil {
			cl.complete(nil, err)
		}
	}()
}

// runBackup applies a backup in version order (on the partition's
// executor): a stale one is acknowledged and dropped, one ahead of a
// missing version waits (and a full sync is requested), and the ack of a
// synchronous backup goes out only once it is applied.
func (s *Service) runBackup(e *executor, t task, start time.Time) {
	p := t.pid
	if s.cfg.Routing.ReplicaIndex(p) <= 0 {
		s.finish(t, nil, fmt.Errorf("%w: backup for partition %d: %s holds no backup replica of it", spi.ErrWrongTarget, p, s.cfg.LocalAddress))
		return
	}
	step, ask, overflow := s.replicas[p].Offer(t.version, t)
	switch step {
	case replica.Covered:
		s.backupApplied(e, t.unforwarded(), nil) // already applied, or covered by a sync
	case replica.Superseded:
		s.refuseSuperseded(t)
	case replica.Apply:
		if s.applyBackup(e, t, start) {
			s.drainBackups(e, p)
		}
	case replica.Hold:
		s.fail(overflow, fmt.Errorf("%w: partition %d: too many backups waiting for a sync", spi.ErrOverloaded, p))
		if ask {
			s.m.backupGaps.Inc()
			s.log.Debug("backup replica behind; asking the primary for a sync", "partition", p,
				"have", s.replicas[p].Version(), "got", t.version)
			s.askSync(p)
		}
	}
}

// fail answers the backups ts with err (their primaries re-send them).
func (s *Service) fail(ts []task, err error) {
	for _, t := range ts {
		s.finish(t, nil, err)
	}
}

// askSync asks the engine for a full copy of partition p's replica
// (executor p).
func (s *Service) askSync(p int) {
	if s.cfg.OnReplicaGap != nil {
		s.cfg.OnReplicaGap(p)
	}
}

// applyBackup runs backup t, the next in version order, and reports
// whether it was applied. A backup whose Run fails leaves the replica's
// version where it was, is refused (the primary retries it) and makes the
// replica ask its primary for a full copy: the replica must not claim a
// version whose write it lacks.
func (s *Service) applyBackup(e *executor, t task, start time.Time) bool {
	c := &e.opctx
	*c = spi.OpContext{Engine: s.cfg.Engine, Service: t.svc.instance, PartitionID: t.pid, Caller: t.caller,
		Executor: e.index, ReplicaIndex: t.replica}
	err := e.runOp(&t, c, start)
	*c = spi.OpContext{}
	if err != nil {
		p := t.pid
		s.log.Error("backup operation failed; asking the primary for a full copy", "service", t.svc.name, "partition", p,
			"version", t.version, "error", err)
		if s.replicas[p].Failed() {
			s.askSync(p)
		}
		s.finish(t, nil, fmt.Errorf("backup of partition %d version %d failed on %s: %w", p, t.version, s.cfg.LocalAddress, err))
		return false
	}
	s.replicas[t.pid].Applied(t.version)
	s.record(t.pid, t.key, t.resp, monoNow(), nil)
	s.backupApplied(e, t, nil)
	return true
}

// backupApplied acknowledges backup t to its primary and, when t answers
// one of this member's own invocations (see sendBackups), completes it.
func (s *Service) backupApplied(e *executor, t task, err error) {
	if err == nil && t.callerID != "" && t.callerCall != 0 && t.conn != nil {
		s.forwardAnswer(t)
		return
	}
	s.finish(t, nil, err)
	if err != nil || t.callerCall == 0 || t.conn == nil {
		return
	}
	c := t.conn
	if !waiting(c, t.callerCall) {
		// The request may have left on the other connection to the
		// primary (each member dials its own).
		if c = s.tr.Connected(t.conn.Remote().ID); c == nil || !waiting(c, t.callerCall) {
			return // answered already, or the caller gave up
		}
	}
	// The answer arrives as the primary's response would, through the
	// transport's handler (and so a fault wrapper's rules on answers).
	s.m.backupAnswers.Inc()
	e.rd.Reset(t.resp)
	s.handler.Frame(c, transport.Header{Kind: transport.KindResponse, CallID: t.callerCall}, &e.rd, true)
}

// unforwarded returns backup t without the answer it would forward: only
// a backup applied here forwards one. One that is acknowledged as already
// applied or covered by a sync leaves the answer to the primary, which
// vouches for the write. (A backup of an older epoch is refused instead:
// see refuseSuperseded.)
func (t task) unforwarded() task {
	if t.callerID != "" {
		t.callerID, t.callerCall = "", 0
	}
	return t
}

// forwardAnswer sends backup t's answer to the member whose call it
// answers, and acknowledges t to the primary, which sends its own answer
// too (see backupRun.done). A member this one has no connection to gets
// only the primary's, and a connection is dialled for next time (off the
// executor).
func (s *Service) forwardAnswer(t task) {
	if c := s.tr.Connected(t.callerID); c != nil {
		s.sendAnswer(c, t)
	} else {
		s.dialLater(t.callerID)
	}
	s.finish(t, nil, nil)
}

// dialLater opens a connection to member id in the background, unless one
// is open or being dialled; nothing waits for it.
func (s *Service) dialLater(id string) {
	address, ok := s.cfg.Routing.MemberAddress(id)
	if !ok || s.tr.Known(id) || s.closed.Load() {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), transport.HandshakeTimeout)
		defer cancel()
		if _, err := s.tr.Conn(ctx, id, address); err != nil {
			s.log.Debug("no connection for forwarded answers", "member", id, "error", err)
		}
	}()
}

// drainBackups applies the held backups that are now next in order and
// acknowledges the ones a sync covered (executor p).
func (s *Service) drainBackups(e *executor, p int) {
	s.replicas[p].Drain(func(t task, step replica.Step) bool { return s.dueBackup(e, t, step) })
}

// dueBackup acts on a held backup that Drain hands back (executor p).
func (s *Service) dueBackup(e *executor, t task, step replica.Step) bool {
	switch step {
	case replica.Covered:
		s.backupApplied(e, t.unforwarded(), nil)
		return true
	case replica.Superseded:
		s.refuseSuperseded(t)
		return true
	}
	return s.applyBackup(e, t, time.Time{}) // waited for its turn: not timed
}

// refuseSuperseded refuses backup t, which an older epoch's primary
// sent: this replica follows the history of a backup promoted since,
// which may lack it.
func (s *Service) refuseSuperseded(t task) {
	s.finish(t, nil, fmt.Errorf("%w: backup of partition %d version %d:%d refused by %s, whose replica follows a newer primary (epoch %d)",
		spi.ErrIndeterminate, t.pid, t.version>>32, t.version&(1<<32-1), s.cfg.LocalAddress, s.replicas[t.pid].Version()>>32))
}

// ReplicaSynced is called on partition p's executor once the engine
// installed a full copy of the primary's replica at version v: held
// backups past v are applied in order. If some still wait behind a hole
// (the copy was older than they are), another copy is asked for.
//
// v = -1 means the engine gave up on the copy (the primary refused it or
// its data was bad, a migration was in progress, this member's role
// changed). Nothing is left to stall: while this member is a backup of p
// (Routing.ReplicaIndex > 0) the replica stays syncing, its held
// backups keep waiting, and a new copy is asked for (OnReplicaGap) at
// once, then, while syncs keep failing, after a pause that doubles from
// 20 ms to 1 s; otherwise the held backups are failed with the
// retryable spi.ErrWrongTarget and the replica stops syncing (the engine
// drops the data of a replica it no longer holds).
func (s *Service) ReplicaSynced(p int, v int64) {
	if v < 0 {
		s.syncFailed(p)
		return
	}
	e := s.partition[p%len(s.partition)]
	ask, pause := s.replicas[p].Synced(v, func(t task, step replica.Step) bool { return s.dueBackup(e, t, step) })
	if ask {
		s.resync(p, pause)
	}
}

// syncFailed ends a full sync of partition p's replica that installed
// nothing (executor p): see ReplicaSynced.
func (s *Service) syncFailed(p int) {
	backup := s.cfg.Routing.ReplicaIndex(p) > 0
	ask, pause, drop := s.replicas[p].SyncFailed(backup)
	s.fail(drop, fmt.Errorf("%w: partition %d: %s no longer holds a backup replica of it", spi.ErrWrongTarget, p, s.cfg.LocalAddress))
	if ask {
		s.resync(p, pause)
	}
}

// resync asks for another full copy of partition p's replica (executor
// p): at once, or after pause on a timer of its own.
func (s *Service) resync(p int, pause time.Duration) {
	if pause == 0 {
		s.askSync(p)
		return
	}
	s.log.Debug("replica sync failed again; asking again after a pause", "partition", p, "pause", pause)
	s.wg.Add(1) // on executor p, which is in wg: never after Shutdown's Wait began
	go func() {
		defer s.wg.Done()
		t := time.NewTimer(pause)
		defer t.Stop()
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		s.RunOnPartition(p, func() { s.retrySync(p) })
	}()
}

// retrySync asks again for the full copy of partition p's replica that
// resync put off (executor p), unless the replica synced meanwhile.
func (s *Service) retrySync(p int) {
	if !s.replicas[p].RetryDue() {
		return
	}
	if s.cfg.Routing.ReplicaIndex(p) <= 0 {
		s.syncFailed(p) // no longer a backup: fail the held backups
		return
	}
	s.askSync(p)
}

// AbandonSync stops partition p's replica waiting for a full sync, with
// none asked for again: its held backups are failed with err, and its
// version and records stay (the engine calls it when the member stops).
// Call it on p's executor.
func (s *Service) AbandonSync(p int, err error) { s.fail(s.replicas[p].Abandon(), err) }

// ResetReplica forgets partition p's replica (this member no longer holds
// one): version 0, held backups failed. Call it on p's executor.
func (s *Service) ResetReplica(p int) {
	held, records := s.replicas[p].Reset()
	s.countRecords(p, -records)
	s.fail(held, fmt.Errorf("%w: partition %d: replica dropped", spi.ErrWrongTarget, p))
	s.failHeld(p, fmt.Errorf("%w: partition %d: replica dropped on %s", spi.ErrWrongTarget, p, s.cfg.LocalAddress))
}
