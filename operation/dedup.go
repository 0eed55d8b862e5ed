package operation

import (
	"crypto/rand"
	"encoding/binary"
	"sync/atomic"
	"time"

	"github.com/partita-go/partita/operation/replica"
	"github.com/partita-go/partita/spi"
)

// Exactly-once. Every partition invocation gets an id (this member's
// incarnation, a sequence number) that all its attempts share. A primary
// records, per partition, the ids of the backed-up operations it ran with
// their encoded responses; the record travels with the backups, migrations
// and replica syncs, so a retry that reaches the same primary or a promoted
// backup is answered from it instead of running again. Records older than
// the dedup window are dropped; an invocation does not retry an attempt
// that may have run once the window has passed since its first attempt.
// A run whose synchronous backups did not acknowledge it is marked
// unconfirmed (backupRun.unconfirmRecord): its retries are answered
// spi.ErrIndeterminate, as its first attempt was.
//
// Records are stamped with the process's monotonic clock (monoNow), not
// the wall clock, so that a wall-clock step cannot reorder a partition's
// log (a lookup stops at the first expired record); between members a
// record carries its age.

// monoBase anchors monoNow.
var monoBase = time.Now()

// monoNow returns nanoseconds on the process's monotonic clock (one clock
// read; time.Now makes two).
func monoNow() int64 { return int64(time.Since(monoBase)) }

// invKey identifies one invocation across its attempts.
type invKey = replica.Key

func newIncarnation() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) | 1 // never zero
}

// recordCount is the exactly-once record count of one executor's
// partitions, on a cache line of its own (only that executor writes it).
type recordCount struct {
	n atomic.Int64
	_ [56]byte
}

func (s *Service) countRecords(p int, delta int) {
	if delta != 0 {
		s.records[p%len(s.records)].n.Add(int64(delta))
	}
}

// dedupWindow is how long a record is kept and found: the dedup window
// plus an eighth. An invocation sends no retry of an attempt that may
// have run once the window has passed since its first attempt
// (errPastWindow), and the record is made after that first attempt; the
// eighth covers the retry's way to the primary's executor (queues, a slow
// connection). Records are pruned in batches a sixteenth of the window
// after they expire, not one per new record (each prune reads the oldest
// entry, which is cold in the cache); lookups ignore expired records that
// are still kept.
func (s *Service) dedupWindow() replica.Window {
	w := int64(s.cfg.DedupWindow)
	return replica.Window{Keep: w + w/8, Slack: w / 16, PinKeep: s.pinKeep()}
}

// record stores k's response for partition p (executor p); resp is
// copied.
func (s *Service) record(p int, k invKey, resp []byte, at int64, busy *atomic.Bool) {
	added, pruned := s.replicas[p].Record().Add(k, resp, at, busy, s.dedupWindow())
	s.countRecords(p, added-pruned)
	s.pinIfLost(p, k, at)
}

// lookup returns the recorded response of k in partition p, if any, and
// whether that run still waits for its synchronous backups (executor p).
func (s *Service) lookup(p int, k invKey) (resp []byte, found, busy bool) {
	return s.replicas[p].Record().Lookup(k, monoNow()-s.dedupWindow().Keep)
}

// DropDedup forgets partition p's record (executor p).
func (s *Service) DropDedup(p int) { s.countRecords(p, -s.replicas[p].Record().Drop()) }

// AppendDedup writes partition p's record (executor p), for a migration or
// a replica sync.
func (s *Service) AppendDedup(w *spi.Writer, p int) {
	s.countRecords(p, -s.replicas[p].Record().Append(w, monoNow(), s.dedupWindow()))
}

// ReadDedup replaces partition p's record with one AppendDedup wrote
// (executor p).
func (s *Service) ReadDedup(r *spi.Reader, p int) error {
	before, after, err := s.replicas[p].Record().Read(r, monoNow(), s.dedupWindow())
	s.countRecords(p, after-before)
	s.repin(p)
	return err
}

// encodeResponse encodes resp with w (scratch): the result is valid until
// w's next use.
func encodeResponse(w *spi.Writer, op spi.Operation, resp any) ([]byte, error) {
	buf := w.Bytes()[:0]
	if cap(buf) > 64<<10 {
		buf = nil // do not keep a huge response's buffer
	}
	w.SetBuffer(buf)
	if codec, ok := op.(spi.ResponseCodec); ok && resp != nil {
		w.WriteUint8(tagCustom)
		codec.WriteResponse(w, resp)
		return w.Bytes(), nil
	}
	if err := writeValue(w, resp); err != nil {
		return nil, err
	}
	return w.Bytes(), nil
}

// decodeResponse decodes b with r (scratch: a local Reader would escape).
func decodeResponse(r *spi.Reader, op spi.Operation, b []byte) (any, error) {
	codec, _ := op.(spi.ResponseCodec)
	r.Reset(b)
	return readValue(r, codec)
}
