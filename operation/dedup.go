package operation

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
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
	resp []byte // encoded response (see writeValue)
	at   int64  // unix nanoseconds when recorded
}

// dedupLog is one partition's record, touched on its executor only.
type dedupLog struct {
	entries map[invKey]dedupEntry
	order   []invKey // insertion order, for pruning by age
	head    int
}

func (s *Service) dedupOf(p int) *dedupLog {
	if s.dedup[p] == nil {
		s.dedup[p] = &dedupLog{entries: make(map[invKey]dedupEntry)}
	}
	return s.dedup[p]
}

// record stores k's response for partition p (executor p).
func (s *Service) record(p int, k invKey, resp []byte, at int64) {
	if k.zero() {
		return
	}
	d := s.dedupOf(p)
	if _, dup := d.entries[k]; !dup {
		d.order = append(d.order, k)
	}
	d.entries[k] = dedupEntry{resp: resp, at: at}
	s.prune(d, at)
}

func (s *Service) prune(d *dedupLog, now int64) {
	limit := now - int64(s.cfg.DedupWindow)
	for d.head < len(d.order) {
		k := d.order[d.head]
		if e, ok := d.entries[k]; ok && e.at >= limit {
			break
		}
		delete(d.entries, k)
		d.head++
	}
	if d.head > 1024 && d.head > len(d.order)/2 {
		d.order = append(d.order[:0], d.order[d.head:]...)
		d.head = 0
	}
}

// lookup returns the recorded response of k in partition p, if any.
func (s *Service) lookup(p int, k invKey) ([]byte, bool) {
	if k.zero() || s.dedup[p] == nil {
		return nil, false
	}
	e, ok := s.dedup[p].entries[k]
	if ok && e.at < time.Now().UnixNano()-int64(s.cfg.DedupWindow) {
		return nil, false
	}
	return e.resp, ok
}

// DropDedup forgets partition p's record (executor p).
func (s *Service) DropDedup(p int) { s.dedup[p] = nil }

// AppendDedup writes partition p's record (executor p), for a migration or
// a replica sync.
func (s *Service) AppendDedup(w *spi.Writer, p int) {
	d := s.dedup[p]
	if d == nil {
		w.WriteUvarint(0)
		return
	}
	s.prune(d, time.Now().UnixNano())
	w.WriteUvarint(uint64(len(d.entries)))
	for _, k := range d.order[d.head:] {
		e, ok := d.entries[k]
		if !ok {
			continue
		}
		w.WriteUint64(k.origin)
		w.WriteUvarint(k.seq)
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
	s.dedup[p] = nil
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		k := invKey{origin: r.ReadUint64(), seq: r.ReadUvarint()}
		at, resp := r.ReadVarint(), r.ReadBytes()
		if r.Err() == nil {
			s.record(p, k, resp, at)
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
