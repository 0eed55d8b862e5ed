// Package replica is the replication state of one partition replica on
// one member, and every decision about it: which backup to apply, hold or
// acknowledge as already there, when to ask the primary for a full copy,
// what a copy, a promotion or a reset does to the version, and whether the
// replica is in sync.
//
// It also keeps the replica's exactly-once record (record.go): the
// invocations its primary ran, with their responses.
//
// A State does no I/O and starts no goroutines: its methods return what
// the caller (the operation service, on the partition's executor) must do
// next, so every transition is tested as a table (replica_test.go). Its
// methods run on the partition's executor, except Version, Syncing and
// InSync, which any goroutine may call.
//
// # Versions
//
// The primary adds one to its version for every write it backs up and
// stamps the backups with it; a backup replica applies them in version
// order, each once. The high 32 bits are an epoch, started anew when a
// backup is promoted, so that the other backups see a gap and take a full
// copy from the new primary: their history may differ from its.
//
// # States of a backup replica
//
//	state    | event                   | next     | what the caller does
//	---------+-------------------------+----------+------------------------------------
//	any      | backup of older epoch   | same     | refuse it (Superseded)
//	in order | backup v <= version     | in order | acknowledge, do not run (Covered)
//	in order | backup v == version+1   | in order | run it, then Applied (Apply)
//	in order | backup v > version+1    | syncing  | hold it, ask for a copy (Hold, ask)
//	in order | Run failed (Failed)     | syncing  | refuse it, ask for a copy
//	syncing  | backup v > version+1    | syncing  | hold it (Hold), beside any
//	         |                         |          | other copy of v
//	syncing  | copy at c (Synced)      | in order | apply the held ones in order (Drain;
//	         |                         |          | the other copies of an applied
//	         |                         |          | version are Covered)
//	         |                         | syncing  | ... unless one still waits behind a
//	         |                         |          | hole: ask again
//	syncing  | no copy (SyncFailed)    | syncing  | still a backup: ask again, at once
//	         |                         |          | or after a pause that doubles
//	         |                         | in order | not a backup: fail the held ones
//	any      | Reset                   | empty    | fail the held ones, drop the data
//	         |                         |          | (and the exactly-once record)
//	any      | Promote                 | primary  | new epoch
package replica

import (
	"sync/atomic"
	"time"
)

// MaxHeld bounds the backups a replica holds while it waits for a missing
// one or for a full copy; past it they are failed (the primary re-sends).
const MaxHeld = 4096

// Pauses between full copies of one replica that keep failing: the first
// retry is at once, the next after FirstSyncPause, doubling up to
// MaxSyncPause.
const (
	FirstSyncPause = 20 * time.Millisecond
	MaxSyncPause   = time.Second
)

// Step says what to do with a backup offered to a replica.
type Step uint8

const (
	// Apply: the backup is next in order; run it, then call Applied (or
	// Failed if its Run failed).
	Apply Step = iota
	// Covered: the replica already holds it (applied, or covered by a
	// full copy); acknowledge it without running it.
	Covered
	// Hold: it is ahead of a missing one; the State keeps it until Drain
	// hands it back.
	Hold
	// Superseded: it comes from an older epoch than the replica's: its
	// primary was replaced by a promoted backup, whose history this
	// replica follows and which may lack the write. Refuse it: the write
	// is not acknowledged by this replica (its caller must not be told
	// it is safe).
	Superseded
)

// State is one partition replica's replication state. The zero State is
// an empty replica at version 0. T is what the caller holds a backup as.
type State[T any] struct {
	version atomic.Int64
	syncing atomic.Bool
	// held are the backups ahead of a missing one, by version. A version
	// may come more than once (a re-send while the first copy waits, a
	// backup redirected to the member that took its replica over after
	// it got the write for its own, a table naming the member twice):
	// every copy is kept and handed back, so that each is acknowledged or
	// failed; one overwritten left its primary waiting for an ack until
	// operations.backup-ack-timeout.
	held   map[int64][]T
	nheld  int    // backups in held
	fails  uint8  // full copies that failed in a row
	armed  bool   // a paused retry of a full copy is pending
	record Record // exactly-once
}

// Record returns the replica's exactly-once record (record.go).
func (s *State[T]) Record() *Record { return &s.record }

// Version returns the replica's version. Any goroutine.
func (s *State[T]) Version() int64 { return s.version.Load() }

// Syncing reports whether the replica waits for a full copy from its
// primary: it may lack acknowledged writes. Any goroutine.
func (s *State[T]) Syncing() bool { return s.syncing.Load() }

// Behind reports whether the replica waits for a copy or holds backups
// behind a missing one.
func (s *State[T]) Behind() bool { return s.syncing.Load() || s.nheld > 0 }

// Held returns how many backups wait behind a missing one.
func (s *State[T]) Held() int { return s.nheld }

// RetryArmed reports whether a paused retry of a full copy is pending.
func (s *State[T]) RetryArmed() bool { return s.armed }

// InSync reports whether this replica holds everything a primary at
// version v held, in the same epoch, and waits for nothing.
func (s *State[T]) InSync(v int64) bool {
	mine := s.version.Load()
	return !s.syncing.Load() && mine >= v && mine>>32 == v>>32
}

// Stamp returns the version of the primary's next backed-up write.
func (s *State[T]) Stamp() int64 { return s.version.Add(1) }

// Promote starts a new epoch: this replica became the primary, and the
// other backups must take a full copy of its history.
func (s *State[T]) Promote() {
	v := s.version.Load()
	s.version.Store((v>>32 + 1) << 32)
}

// Adopt sets the version to v: a migration's destination takes its
// source's, with the source's data.
func (s *State[T]) Adopt(v int64) { s.version.Store(v) }

// Offer decides what to do with backup t at version v. With Hold, ask
// reports that the replica just started waiting for a full copy (the
// caller asks the primary for one), and overflow lists the backups
// dropped to make room (the caller fails them: their primary re-sends).
// A backup held at a version already held is held beside the other: Drain
// runs one and acknowledges the rest as covered.
func (s *State[T]) Offer(v int64, t T) (step Step, ask bool, overflow []T) {
	cur := s.version.Load()
	switch {
	case v>>32 < cur>>32:
		return Superseded, false, nil
	case v <= cur:
		return Covered, false, nil
	case v == cur+1:
		return Apply, false, nil
	}
	if s.nheld >= MaxHeld {
		overflow = s.dropHeld()
	}
	s.hold(v, t)
	ask = !s.syncing.Load()
	s.syncing.Store(true)
	return Hold, ask, overflow
}

// Applied records that the backup at v, the next in order, ran.
func (s *State[T]) Applied(v int64) { s.version.Store(v) }

// Failed records that the next backup's Run failed: the version stays
// (the replica must not claim a write it lacks) and the replica waits for
// a full copy; ask reports that the caller must ask for one.
func (s *State[T]) Failed() (ask bool) {
	ask = !s.syncing.Load()
	s.syncing.Store(true)
	return ask
}

// MarkSyncing makes the replica wait for a full copy (a new backup
// replica, or one that anti-entropy found behind). It reports whether it
// was not waiting already.
func (s *State[T]) MarkSyncing() bool { return !s.syncing.Swap(true) }

// Drain hands the held backups that are now due, in order: first the
// ones the version covers (Covered: acknowledge them) or that an older
// epoch's primary sent (Superseded: refuse them), whose results are
// ignored, then the ones next in order (Apply: run it and call Applied or
// Failed; a false result stops the drain, the primary re-sends it). Of
// the copies of one version, one is run and, once it applied, the others
// are Covered; when it failed they stay held.
func (s *State[T]) Drain(run func(t T, step Step) bool) {
	cur := s.version.Load()
	for v, hs := range s.held {
		step := Covered
		switch {
		case v>>32 < cur>>32:
			step = Superseded
		case v > cur:
			continue
		}
		s.take(v)
		for _, h := range hs {
			run(h, step)
		}
	}
	for {
		v := s.version.Load() + 1
		hs := s.take(v)
		if hs == nil {
			return
		}
		if !run(hs[0], Apply) {
			for _, h := range hs[1:] {
				s.hold(v, h)
			}
			return
		}
		for _, h := range hs[1:] {
			run(h, Covered)
		}
	}
}

// hold keeps backup t, at version v, beside any other held at v.
func (s *State[T]) hold(v int64, t T) {
	if s.held == nil {
		s.held = make(map[int64][]T)
	}
	s.held[v] = append(s.held[v], t)
	s.nheld++
}

// take removes and returns the backups held at version v.
func (s *State[T]) take(v int64) []T {
	hs, ok := s.held[v]
	if ok {
		delete(s.held, v)
		s.nheld -= len(hs)
	}
	return hs
}

// Synced records a full copy at version v installed (the caller replaced
// the data) and drains the held backups with run (see Drain). If one is
// still held behind a hole the copy did not fill, the replica keeps
// waiting and ask is true: the caller asks for another copy after pause
// (0: at once; see SyncFailed).
func (s *State[T]) Synced(v int64, run func(t T, step Step) bool) (ask bool, pause time.Duration) {
	if v > s.version.Load() {
		s.version.Store(v)
	}
	s.syncing.Store(false)
	s.Drain(run)
	if s.nheld > 0 && !s.syncing.Load() {
		s.syncing.Store(true)
		return s.retry()
	}
	if !s.syncing.Load() {
		s.fails = 0
	}
	return false, 0
}

// SyncFailed records that a full copy could not be had. A replica that is
// still a backup keeps waiting and holding, and the caller asks again
// after pause (0: at once) when ask is true; a paused retry already
// pending makes ask false. One that is not a backup any more stops
// waiting, and the caller fails the returned held backups.
func (s *State[T]) SyncFailed(stillBackup bool) (ask bool, pause time.Duration, drop []T) {
	if !stillBackup {
		s.fails = 0
		return false, 0, s.dropHeld()
	}
	s.syncing.Store(true)
	ask, pause = s.retry()
	return ask, pause, nil
}

// RetryDue is called when a paused retry's pause is over: ask reports
// whether the replica still waits for a copy (the caller asks again, or
// calls SyncFailed(false) if it is no longer a backup).
func (s *State[T]) RetryDue() (ask bool) {
	s.armed = false
	return s.syncing.Load()
}

// retry counts one more failed copy and says when to ask again.
func (s *State[T]) retry() (ask bool, pause time.Duration) {
	fails := s.fails
	if s.fails < ^uint8(0) {
		s.fails++
	}
	if fails == 0 {
		return true, 0
	}
	if s.armed {
		return false, 0
	}
	s.armed = true
	return true, min(FirstSyncPause<<min(fails-1, 16), MaxSyncPause)
}

// Abandon stops waiting for a copy, with none asked for again (the
// member stops): the caller fails the returned held backups. The version
// stays.
func (s *State[T]) Abandon() []T {
	s.fails = 0
	return s.dropHeld()
}

// Reset forgets the replica (this member holds none any more): version 0,
// not waiting, no exactly-once record (records: how many it held); the
// caller fails the returned held backups and drops the data.
func (s *State[T]) Reset() (held []T, records int) {
	held = s.Abandon()
	s.version.Store(0)
	return held, s.record.Drop()
}

// dropHeld empties the held backups and stops waiting.
func (s *State[T]) dropHeld() []T {
	var out []T
	for _, hs := range s.held {
		out = append(out, hs...)
	}
	s.held, s.nheld = nil, 0
	s.syncing.Store(false)
	return out
}
