package operation

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

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

// maxCarried bounds the records one migration or replica sync carries
// for a partition (the newest ones), about 3 MiB.
const maxCarried = 100_000

// invKey identifies one invocation across its attempts.
type invKey struct {
	origin uint64 // the invoking member's incarnation
	seq    uint64
}

func (k invKey) zero() bool { return k.origin == 0 && k.seq == 0 }

func newIncarnation() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) | 1 // never zero
}

type dedupEntry struct {
	key  invKey
	at   int64 // unix nanoseconds when recorded
	resp []byte
	// busy, when set and true, means the synchronous backups of the
	// recorded run are not all acknowledged: a retry must wait.
	busy *atomic.Bool
}

// dedupLog is one partition's record, oldest first, touched on its
// executor only. Recording appends; pruning by age advances head. Only a
// retry looks an id up (a first attempt cannot be a duplicate), scanning
// from the newest entry, so the hot path keeps no index.
type dedupLog struct {
	entries []dedupEntry
	head    int
}

func (s *Service) dedupOf(p int) *dedupLog {
	if s.dedup[p] == nil {
		s.dedup[p] = &dedupLog{}
	}
	return s.dedup[p]
}

// record stores k's response for partition p (executor p).
func (s *Service) record(p int, k invKey, resp []byte, at int64, busy *atomic.Bool) {
	if k.zero() {
		return
	}
	d := s.dedupOf(p)
	d.entries = append(d.entries, dedupEntry{key: k, at: at, resp: resp, busy: busy})
	s.dedupRecords.Add(1)
	s.prune(d, at)
}

func (s *Service) prune(d *dedupLog, now int64) {
	limit := now - int64(s.cfg.DedupWindow)
	head := d.head
	for d.head < len(d.entries) && d.entries[d.head].at < limit {
		d.entries[d.head] = dedupEntry{}
		d.head++
	}
	if d.head > head {
		s.dedupRecords.Add(int64(head - d.head))
	}
	if d.head > 1024 && d.head > len(d.entries)/2 {
		n := copy(d.entries, d.entries[d.head:])
		clear(d.entries[n:])
		d.entries = d.entries[:n]
		d.head = 0
	}
}

// lookup returns the recorded response of k in partition p, if any, and
// whether that run still waits for its synchronous backups.
func (s *Service) lookup(p int, k invKey) (resp []byte, found, busy bool) {
	d := s.dedup[p]
	if k.zero() || d == nil {
		return nil, false, false
	}
	limit := time.Now().UnixNano() - int64(s.cfg.DedupWindow)
	for i := len(d.entries) - 1; i >= d.head; i-- {
		e := &d.entries[i]
		if e.at < limit {
			break
		}
		if e.key == k {
			return e.resp, true, e.busy != nil && e.busy.Load()
		}
	}
	return nil, false, false
}

// DropDedup forgets partition p's record (executor p).
func (s *Service) DropDedup(p int) {
	if d := s.dedup[p]; d != nil {
		s.dedupRecords.Add(-int64(len(d.entries) - d.head))
		s.dedup[p] = nil
	}
}

// AppendDedup writes partition p's record (executor p), for a migration or
// a replica sync.
func (s *Service) AppendDedup(w *spi.Writer, p int) {
	d := s.dedup[p]
	if d == nil {
		w.WriteUvarint(0)
		return
	}
	s.prune(d, time.Now().UnixNano())
	live := d.entries[d.head:]
	if len(live) > maxCarried {
		// Keep the bundle well under the frame limit: the newest entries
		// are the ones a retry can still need.
		live = live[len(live)-maxCarried:]
	}
	w.WriteUvarint(uint64(len(live)))
	for _, e := range live {
		w.WriteUint64(e.key.origin)
		w.WriteUvarint(e.key.seq)
		w.WriteVarint(e.at)
		w.WriteBytes(e.resp)
	}
}

// ReadDedup replaces partition p's record with one AppendDedup wrote
// (executor p).
func (s *Service) ReadDedup(r *spi.Reader, p int) error {
	n := r.ReadUvarint()
	if r.Err() == nil && n > uint64(r.Remaining()/11) {
		return fmt.Errorf("%w: dedup record of %d entries in %d bytes", spi.ErrProtocol, n, r.Remaining())
	}
	s.DropDedup(p)
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		k := invKey{origin: r.ReadUint64(), seq: r.ReadUvarint()}
		at, resp := r.ReadVarint(), r.ReadBytes()
		if r.Err() == nil {
			s.record(p, k, resp, at, nil)
		}
	}
	return r.Err()
}

func encodeResponse(op spi.Operation, resp any) ([]byte, error) {
	w := spi.NewWriter(nil)
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

func decodeResponse(op spi.Operation, b []byte) (any, error) {
	codec, _ := op.(spi.ResponseCodec)
	return readValue(spi.NewReader(b), codec)
}
