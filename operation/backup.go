package operation

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/spi"
)

// Replica versions. Each member keeps, per partition, the version of its
// replica: the primary adds one for every operation it backs up and stamps
// the backups with it; a backup applies them in version order, each once.
// The high 32 bits are an epoch, bumped when a backup is promoted, so that
// the other backups see a gap and resynchronise from the new primary.

// maxPendingBackups bounds the backups a replica holds while it waits for
// a missing one or for a full sync.
const maxPendingBackups = 4096

// replicaState is a backup replica's bookkeeping for one partition,
// touched only on the partition's executor.
type replicaState struct {
	pending map[int64]task // backups that arrived ahead of a missing one
	syncing bool           // a full sync was asked for
}

func (s *Service) replicaState(p int) *replicaState {
	if s.replicas[p] == nil {
		s.replicas[p] = &replicaState{pending: make(map[int64]task)}
	}
	return s.replicas[p]
}

// ReplicaVersion returns this member's replica version of partition p.
func (s *Service) ReplicaVersion(p int) int64 { return s.versions[p].Load() }

// SetReplicaVersion sets partition p's replica version (a migration's
// destination takes the source's). Call it on p's executor.
func (s *Service) SetReplicaVersion(p int, v int64) { s.versions[p].Store(v) }

// BumpEpoch starts a new epoch of partition p's versions (a promoted
// backup, so that the other backups resynchronise). Call it on p's
// executor.
func (s *Service) BumpEpoch(p int) {
	v := s.versions[p].Load()
	s.versions[p].Store((v>>32 + 1) << 32)
}

// SyncsPending returns how many partitions' replicas wait for a sync.
func (s *Service) SyncsPending() int { return int(s.syncs.Load()) }

// MarkSyncing records that a full sync of partition p's replica was asked
// for (by the engine's anti-entropy). Call it on p's executor.
func (s *Service) MarkSyncing(p int) {
	rs := s.replicaState(p)
	s.setSyncing(p, rs, true)
}

// setSyncing records whether partition p's replica waits for a full sync
// (executor p); other goroutines read it through IsSyncing.
func (s *Service) setSyncing(p int, rs *replicaState, on bool) {
	if rs.syncing == on {
		return
	}
	rs.syncing = on
	s.syncFlag[p].Store(on)
	if on {
		s.syncs.Add(1)
	} else {
		s.syncs.Add(-1)
	}
}

// IsSyncing reports whether partition p's replica here waits for a full
// copy from its primary (it may lack acknowledged writes).
func (s *Service) IsSyncing(p int) bool { return s.syncFlag[p].Load() }

// ReplicaPending reports whether partition p's replica waits for missing
// backups or a sync. Call it on p's executor.
func (s *Service) ReplicaPending(p int) bool {
	rs := s.replicas[p]
	return rs != nil && (rs.syncing || len(rs.pending) > 0)
}

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
// (kindAnswer), three hops instead of four. The ack still comes to the
// primary, which retries the backup until it is applied (the answer comes
// with the retry). It answers the caller itself when the backup failed for
// good and, after the ack, when the backup forwarded the answer: a
// forwarded answer can be lost with its connection (the caller takes the
// first answer and drops the other).
func (s *Service) sendBackups(e *executor, t task, bo spi.BackupAwareOperation, resp any) (busy *atomic.Bool) {
	e.reps = s.cfg.Routing.Backups(t.pid, e.reps[:0])
	reps := e.reps
	total := min(max(bo.SyncBackupCount(), 0)+max(bo.AsyncBackupCount(), 0), len(reps))
	if total == 0 {
		return nil
	}
	syncN := min(max(bo.SyncBackupCount(), 0), total)
	bop := bo.BackupOperation()
	typeID, ok := t.svc.typeIDs[reflect.TypeOf(bop)]
	if !ok {
		s.log.Error("backup operation type not registered; no backup taken", "service", t.svc.name, "op", fmt.Sprintf("%T", bop))
		return nil
	}
	version := s.versions[t.pid].Add(1)
	run := &backupRun{s: s, t: t, resp: resp}
	run.busy.Store(true)
	// t.resp is the executor's scratch; retries need their own copy.
	if len(t.resp) <= len(run.respBuf) {
		run.t.resp = append(run.respBuf[:0], t.resp...)
	} else {
		run.t.resp = bytes.Clone(t.resp)
	}
	if syncN == 1 && t.conn != nil && t.callID != 0 {
		run.callerCall = t.callID
		if reps[0].ID != t.conn.remote.id {
			run.t.callerID = t.conn.remote.id // the backup forwards the answer
		}
	}
	run.remaining.Store(int32(syncN))
	if syncN > 0 {
		// Before any backup leaves: an ack may finish the run at once.
		run.bar = s.gates[t.pid].register(s)
	}
	for i := 0; i < total; i++ {
		if i >= syncN {
			s.m.backupAsyn.Inc()
			if err := s.sendBackup(nil, run.t, reps[i], i+1, version, typeID, 0, bop); err != nil {
				s.log.Debug("asynchronous backup not sent", "partition", t.pid, "replica", i+1, "to", reps[i].Address, "error", err)
			}
			continue
		}
		s.m.backupSync.Inc()
		b := &run.first
		if i > 0 {
			b = new(syncBackup)
		}
		*b = syncBackup{run: run, r: reps[i], replica: i + 1, version: version, typeID: typeID, op: bop}
		b.cl.then = b
		if t.queued != 0 {
			b.start = time.Now()
		}
		b.send()
	}
	if syncN == 0 {
		return nil
	}
	return &run.busy
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
	// bar counts the run among its partition's unfinished ones, which
	// hold the answers of later reads (readgate.go).
	bar   *barrier
	first syncBackup // the first replica's, in the same allocation
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
	r.busy.Store(false)
	// The reads that ran after this write may be answered now, if no
	// earlier run holds them; the way this writer is answered below (or
	// not, at shutdown) is the way they are.
	r.bar.runDone(s)
	if s.closed.Load() {
		// This member is going away: an ack that failed with it proves
		// nothing, so send no answer (a remote caller retries with the
		// same invocation id).
		if t.local != nil {
			t.local.complete(nil, spi.ErrShutdown)
		}
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
// Only the replica member's death excuses a missing ack: any other failure
// (the replica's table is behind and it refused, a broken connection to a
// live member, an overloaded replica) is retried, so an acknowledged write
// is on every synchronous backup replica.
type syncBackup struct {
	run     *backupRun
	r       Replica
	replica int
	version int64
	typeID  uint16
	op      spi.Operation
	tries   int
	start   time.Time // sampled backups only
	// cl is the pending call of the attempt in flight; an attempt's call
	// is completed (and out of every pending map) before the next one.
	cl call
}

// maxBackupTries bounds the retries of one synchronous backup (about 10 s
// with the back-off below); past it the write is answered with only the
// primary's copy and an error is logged.
const maxBackupTries = 64

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
	_, member := s.cfg.Routing.MemberAddress(b.r.ID)
	b.tries++
	if !member || s.closed.Load() || b.tries >= maxBackupTries {
		s.m.backupFailed.Inc()
		if member && !s.closed.Load() {
			s.log.Error("synchronous backup never acknowledged; the write is only on the primary", "partition", t.pid,
				"replica", b.replica, "to", b.r.Address, "error", err)
		}
		b.run.done(err)
		return
	}
	if b.tries == 1 {
		s.m.backupLate.Inc()
	}
	s.log.Debug("synchronous backup failed; retrying", "partition", t.pid, "replica", b.replica, "to", b.r.Address, "error", err)
	pause := min(time.Duration(b.tries)*5*time.Millisecond, 500*time.Millisecond)
	s.wg.Add(1)
	time.AfterFunc(pause, func() {
		defer s.wg.Done()
		b.send()
	})
}

func (s *Service) sendBackup(cl *call, t task, r Replica, replica int, version int64, typeID uint16, callerCall uint64, bop spi.Operation) error {
	if s.cfg.Hook != nil {
		m := Message{From: s.cfg.LocalID, To: r.ID, Service: t.svc.name, Partition: t.pid, Op: backupMessage{bop}}
		if v := s.cfg.Hook(m); !v.pass() {
			s.sendBackupLater(v, m, cl, t, r, replica, version, typeID, callerCall, bop)
			return nil
		}
	}
	return s.sendBackupNow(cl, t, r, replica, version, typeID, callerCall, bop)
}

// sendBackupLater applies a fault rule's verdict to a backup off the
// executor (a delayed, held or dropped backup); backups then leave out of
// order, which the replicas' version ordering absorbs. It is a function of
// its own so that the hot path's task does not move to the heap.
func (s *Service) sendBackupLater(v Verdict, m Message, cl *call, t task, r Replica, replica int, version int64, typeID uint16, callerCall uint64, bop spi.Operation) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.InvocationTimeout)
		defer cancel()
		err := v.apply(ctx, m)
		if err == nil {
			err = s.sendBackupNow(cl, t, r, replica, version, typeID, callerCall, bop)
		}
		if err != nil && cl != nil {
			cl.complete(nil, err)
		}
	}()
}

// backupMessage names a backup for fault rules: "backup/<Go type>".
type backupMessage struct{ spi.Operation }

func (b backupMessage) MessageKind() string { return fmt.Sprintf("backup/%T", b.Operation) }

func (s *Service) sendBackupNow(cl *call, t task, r Replica, replica int, version int64, typeID uint16, callerCall uint64, bop spi.Operation) error {
	if c := s.connected(r.ID); c != nil {
		return c.sendBackup(cl, t, typeID, replica, version, callerCall, bop)
	}
	// Dialling can take long: never on a partition executor.
	if s.closed.Load() {
		return spi.ErrShutdown
	}
	s.dialAndSendBackup(cl, t, r, replica, version, typeID, callerCall, bop)
	return nil
}

// dialAndSendBackup sends a backup once a connection to its replica is
// dialled, on a goroutine of its own (kept out of sendBackupNow so that
// the hot path's task does not move to the heap).
func (s *Service) dialAndSendBackup(cl *call, t task, r Replica, replica int, version int64, typeID uint16, callerCall uint64, bop spi.Operation) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		defer cancel()
		c, err := s.connTo(ctx, r.ID, r.Address)
		if err == nil {
			err = c.sendBackup(cl, t, typeID, replica, version, callerCall, bop)
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
	cur := s.versions[p].Load()
	switch {
	case t.version <= cur:
		s.backupApplied(e, t.unforwarded(), nil) // already applied, or covered by a sync
	case t.version == cur+1:
		s.applyBackup(e, t, start)
		s.drainBackups(e, p)
	default:
		rs := s.replicaState(p)
		if len(rs.pending) >= maxPendingBackups {
			s.dropPending(p, fmt.Errorf("%w: partition %d: too many backups waiting for a sync", spi.ErrOverloaded, p))
			rs = s.replicaState(p)
		}
		rs.pending[t.version] = t
		if !rs.syncing {
			s.m.backupGaps.Inc()
			s.setSyncing(p, rs, true)
			s.log.Debug("backup replica behind; asking the primary for a sync", "partition", p, "have", cur, "got", t.version)
			if s.cfg.OnReplicaGap != nil {
				s.cfg.OnReplicaGap(p)
			}
		}
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
		if rs := s.replicaState(p); !rs.syncing {
			s.setSyncing(p, rs, true)
			if s.cfg.OnReplicaGap != nil {
				s.cfg.OnReplicaGap(p)
			}
		}
		s.finish(t, nil, fmt.Errorf("backup of partition %d version %d failed on %s: %w", p, t.version, s.cfg.LocalAddress, err))
		return false
	}
	s.versions[t.pid].Store(t.version)
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
	cl := t.conn.take(t.callerCall)
	if cl == nil {
		// The request may have left on the other connection to the
		// primary (each member dials its own).
		if c := s.connected(t.conn.remote.id); c != nil && c != t.conn {
			cl = c.take(t.callerCall)
		}
	}
	if cl == nil {
		return // answered already, or the caller gave up
	}
	s.m.backupAnswers.Inc()
	resp, derr := decodeResponse(&e.rd, cl.op, t.resp)
	cl.complete(resp, derr)
}

// unforwarded returns backup t without the answer it would forward: only
// a backup applied here forwards one. One that is acknowledged as already
// applied or covered by a sync leaves the answer to the primary, which
// vouches for the write (versions from before a resync to a newer epoch
// also count as covered).
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
	c := s.connected(t.callerID)
	switch {
	case c == nil:
		s.dialLater(t.callerID)
	case s.cfg.Hook != nil:
		m := Message{From: s.cfg.LocalID, To: t.callerID, Service: t.svc.name, Partition: t.pid, Op: answerMessage{t.op}}
		if v := s.cfg.Hook(m); !v.pass() {
			s.forwardAnswerLater(v, m, c, t)
			break
		}
		c.sendAnswer(t.callerCall, t.conn.remote.id, t.resp)
	default:
		c.sendAnswer(t.callerCall, t.conn.remote.id, t.resp)
	}
	s.finish(t, nil, nil)
}

// dialLater opens a connection to member id in the background, unless one
// is open or being dialled; nothing waits for it.
func (s *Service) dialLater(id string) {
	address, ok := s.cfg.Routing.MemberAddress(id)
	s.mu.Lock()
	_, known := s.conns[id]
	s.mu.Unlock()
	if !ok || known || s.closed.Load() {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		defer cancel()
		if _, err := s.connTo(ctx, id, address); err != nil {
			s.log.Debug("no connection for forwarded answers", "member", id, "error", err)
		}
	}()
}

// forwardAnswerLater applies a fault rule's verdict to a forwarded answer
// alone, off the executor: a held or delayed answer holds neither the ack
// nor the primary's answer, a dropped one is never sent.
func (s *Service) forwardAnswerLater(v Verdict, m Message, c *conn, t task) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.InvocationTimeout)
		defer cancel()
		if v.apply(ctx, m) == nil {
			c.sendAnswer(t.callerCall, t.conn.remote.id, t.resp) // the frame's own copy
		}
	}()
}

// answerMessage names a forwarded answer for fault rules:
// "answer/<backup operation's Go type>".
type answerMessage struct{ spi.Operation }

func (a answerMessage) MessageKind() string { return fmt.Sprintf("answer/%T", a.Operation) }

// drainBackups applies the waiting backups that are now next in order and
// acknowledges the ones a sync covered.
func (s *Service) drainBackups(e *executor, p int) {
	rs := s.replicas[p]
	if rs == nil {
		return
	}
	cur := s.versions[p].Load()
	for v, t := range rs.pending {
		if v <= cur {
			delete(rs.pending, v)
			s.backupApplied(e, t.unforwarded(), nil)
		}
	}
	for {
		t, ok := rs.pending[cur+1]
		if !ok {
			break
		}
		delete(rs.pending, cur+1)
		if !s.applyBackup(e, t, time.Time{}) { // waited for its turn: not timed
			break // refused: its primary sends it again
		}
		cur++
	}
}

func (s *Service) dropPending(p int, err error) {
	rs := s.replicas[p]
	if rs == nil {
		return
	}
	for _, t := range rs.pending {
		s.finish(t, nil, err)
	}
	s.setSyncing(p, rs, false)
	s.replicas[p] = nil
}

// ReplicaSynced is called on partition p's executor once the engine
// installed a full copy of the primary's replica at version v (or gave up,
// with v = -1): waiting backups past v are applied in order.
func (s *Service) ReplicaSynced(p int, v int64) {
	rs := s.replicaState(p)
	s.setSyncing(p, rs, false)
	if v > s.versions[p].Load() {
		s.versions[p].Store(v)
	}
	e := s.partition[p%len(s.partition)]
	s.drainBackups(e, p)
	if len(rs.pending) > 0 && !rs.syncing && v >= 0 {
		// Still a hole: the sync was older than the waiting backups.
		s.setSyncing(p, rs, true)
		if s.cfg.OnReplicaGap != nil {
			s.cfg.OnReplicaGap(p)
		}
	}
}

// ResetReplica forgets partition p's replica (this member no longer holds
// one): version 0, waiting backups failed. Call it on p's executor.
func (s *Service) ResetReplica(p int) {
	s.dropPending(p, fmt.Errorf("%w: partition %d: replica dropped", spi.ErrWrongTarget, p))
	s.failHeld(p, fmt.Errorf("%w: partition %d: replica dropped on %s", spi.ErrWrongTarget, p, s.cfg.LocalAddress))
	s.versions[p].Store(0)
	s.DropDedup(p)
}
