package operation

import (
	"slices"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/partita-go/partita/spi"
)

// Recorded invocations, for a merge after a split (see replica's pins.go):
// a partition's exactly-once record holds the invocations that ran on it
// for the dedup window; those of a member this member lost are kept
// longer, as pins. When a member leaves the list, every partition's record
// pins the invocations of its incarnation that it still holds, on the
// partition's executor; the ones recorded later (a request that was
// queued, a backup that arrived late) are pinned as they are recorded.

// OriginOf returns the incarnation that member id's invocations carry
// (InvocationID.Origin): a member's ID is drawn anew at each start, so
// its hash names the incarnation, and a member that loses another can
// tell which invocations were that member's.
func OriginOf(id string) uint64 { return xxhash.Sum64String(id) | 1 } // never zero

// departure is a lost member's incarnation and when it was lost.
type departure struct {
	origin uint64
	at     int64 // monoNow
}

// pinKeep returns how long pins are kept.
func (s *Service) pinKeep() int64 { return int64(s.cfg.PinKeep) }

// lost pins, in every partition's record, the invocations of member id,
// and remembers its incarnation for the records made later. It does not
// wait for the partitions' executors.
func (s *Service) lost(id string) {
	origin, now := OriginOf(id), monoNow()
	s.departedMu.Lock()
	prev := s.departed.Load()
	var next []departure
	if prev != nil {
		for _, d := range *prev {
			if d.origin != origin && now-d.at < s.pinKeep() {
				next = append(next, d)
			}
		}
	}
	next = append(next, departure{origin: origin, at: now})
	s.departed.Store(&next)
	s.departedMu.Unlock()
	s.spawn(func() {
		pinned := 0
		win := s.dedupWindow()
		done := make(chan int, 1)
		for p := range s.cfg.PartitionCount {
			err := s.RunOnPartition(p, func() { done <- s.replicas[p].Record().Pin(origin, monoNow(), win) })
			if err != nil {
				return // shutting down
			}
			select {
			case n := <-done:
				pinned += n
			case <-s.quit:
				return // a task queued at shutdown may never run
			}
		}
		if pinned > 0 {
			s.log.Info("kept the exactly-once records of a lost member's invocations, for a merge after a split",
				"lost_id", id, "invocations", pinned, "for", s.cfg.PinKeep)
		}
	})
}

// spawn runs f on a goroutine of its own, counted in wg, unless the
// service is shut down. Any goroutine may call it.
func (s *Service) spawn(f func()) {
	s.spawnMu.Lock()
	defer s.spawnMu.Unlock()
	if s.closed.Load() {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// pinIfLost pins k in partition p's record (executor p) when its caller
// is a member this member lost less than the dedup window ago: a request
// queued before the loss, or a backup that arrived late. (Later, the
// lost member's connections are gone; one that is taken back, or merges
// in, keeps its ID, and its new invocations are not pinned.)
func (s *Service) pinIfLost(p int, k invKey, at int64) {
	ds := s.departed.Load()
	if ds == nil {
		return
	}
	for _, d := range *ds {
		if d.origin == k.Origin && at-d.at < s.dedupWindow().Keep {
			s.replicas[p].Record().PinKey(k, at, s.dedupWindow())
			return
		}
	}
}

// repin pins, in partition p's record (executor p), the invocations of
// the members lost within the pins' time that a copy just installed
// holds: the copy may come from a replica that had not pinned them yet,
// and replaced the pins this one had made.
func (s *Service) repin(p int) {
	ds := s.departed.Load()
	if ds == nil {
		return
	}
	now, win := monoNow(), s.dedupWindow()
	for _, d := range *ds {
		if now-d.at < win.PinKeep {
			s.replicas[p].Record().Pin(d.origin, now, win)
		}
	}
}

// RecordedInvocations implements the engine's
// spi.NodeEngine.RecordedInvocations (executor p).
func (s *Service) RecordedInvocations(p int) []spi.InvocationID {
	if p < 0 || p >= len(s.replicas) {
		return nil
	}
	return slices.Clip(s.replicas[p].Record().Recorded(monoNow(), s.dedupWindow()))
}

// ForgetRecordedInvocations implements the engine's
// spi.NodeEngine.ForgetRecordedInvocations (executor p).
func (s *Service) ForgetRecordedInvocations(p int) {
	if p >= 0 && p < len(s.replicas) {
		s.replicas[p].Record().Forget(monoNow())
	}
}

// AdoptInvocations implements the engine's spi.NodeEngine.AdoptInvocations
// (executor p): each invocation is recorded now as a run whose answer is
// not known (an empty response, as Record.Unconfirm leaves), so that a
// retry of it is answered spi.ErrIndeterminate. One that the record holds
// already is recorded again, newest, rather than looked up: a lookup
// scans the record, and a merge may carry 100,000 ids (its retry then
// learns that the outcome is unknown rather than its answer, which is
// allowed).
func (s *Service) AdoptInvocations(p int, ids []spi.InvocationID) {
	if p < 0 || p >= len(s.replicas) {
		return
	}
	now := monoNow()
	for _, id := range ids {
		s.record(p, invKey{Origin: id.Origin, Seq: id.Seq}, nil, now, nil)
	}
}

// defaultPinKeep is how long pins are kept when Config.PinKeep is
// not set.
const defaultPinKeep = time.Hour
