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

// dedupInline is the longest response kept inside its entry; longer ones
// go to the log's overflow map (a counter's answer takes 2 to 10 bytes).
const dedupInline = 22

// dedupChunkSize is the number of entries of one chunk of a log.
const dedupChunkSize = 1024

// dedupEntry is one record. It holds no pointer, so the chunks that hold
// a million of them on a busy partition cost the garbage collector
// nothing to scan.
type dedupEntry struct {
	key  invKey
	at   int64 // unix nanoseconds when recorded
	n    uint8 // response length; dedupOverflow: in the overflow map
	busy bool  // the log's busy map holds this run's flag
	resp [dedupInline]byte
}

const dedupOverflow = 0xff

type dedupChunk [dedupChunkSize]dedupEntry

// dedupLog is one partition's record, oldest first, touched on its
// executor only. Entries live in fixed-size chunks: recording fills the
// last one, pruning by age drops whole chunks from the front, and nothing
// is ever copied to grow. Only a retry looks an id up (a first attempt
// cannot be a duplicate), scanning from the newest entry, so the hot path
// keeps no index.
type dedupLog struct {
	chunks []*dedupChunk
	head   int // first live entry of chunks[0]
	tail   int // entries used in the last chunk
	spare  *dedupChunk
	// big holds the responses too long for an entry.
	big map[invKey][]byte
	// busy holds, for runs whose synchronous backups are not all
	// acknowledged, the flag the acks clear: a retry must wait. Flags
	// that are clear are swept once it doubles.
	busy      map[invKey]*atomic.Bool
	busySweep int
}

func (d *dedupLog) len() int {
	if len(d.chunks) == 0 {
		return 0
	}
	return (len(d.chunks)-1)*dedupChunkSize + d.tail - d.head
}

// at returns the i-th live entry, oldest first.
func (d *dedupLog) entry(i int) *dedupEntry {
	i += d.head
	return &d.chunks[i/dedupChunkSize][i%dedupChunkSize]
}

func (d *dedupLog) response(e *dedupEntry) []byte {
	if e.n == dedupOverflow {
		return d.big[e.key]
	}
	return e.resp[:e.n]
}

func (s *Service) dedupOf(p int) *dedupLog {
	if s.dedup[p] == nil {
		s.dedup[p] = &dedupLog{}
	}
	return s.dedup[p]
}

// recordCount is the exactly-once record count of one executor's
// partitions, on a cache line of its own (only that executor writes it).
type recordCount struct {
	n atomic.Int64
	_ [56]byte
}

func (s *Service) countRecords(p int, delta int) {
	s.records[p%len(s.records)].n.Add(int64(delta))
}

// record stores k's response for partition p (executor p).
func (s *Service) record(p int, k invKey, resp []byte, at int64, busy *atomic.Bool) {
	if k.zero() {
		return
	}
	d := s.dedupOf(p)
	if len(d.chunks) == 0 || d.tail == dedupChunkSize {
		c := d.spare
		if c == nil {
			c = new(dedupChunk)
		}
		d.spare = nil
		d.chunks = append(d.chunks, c)
		d.tail = 0
	}
	e := &d.chunks[len(d.chunks)-1][d.tail]
	d.tail++
	*e = dedupEntry{key: k, at: at}
	if len(resp) <= dedupInline {
		e.n = uint8(copy(e.resp[:], resp))
	} else {
		e.n = dedupOverflow
		if d.big == nil {
			d.big = make(map[invKey][]byte)
		}
		d.big[k] = resp
	}
	if busy != nil {
		e.busy = true
		if d.busy == nil {
			d.busy = make(map[invKey]*atomic.Bool)
		}
		d.busy[k] = busy
		if len(d.busy) > d.busySweep {
			for key, b := range d.busy {
				if !b.Load() {
					delete(d.busy, key)
				}
			}
			d.busySweep = 2*len(d.busy) + 64
		}
	}
	s.countRecords(p, 1)
	s.prune(p, d, at)
}

// prune drops partition p's records older than the window.
func (s *Service) prune(p int, d *dedupLog, now int64) {
	limit := now - int64(s.cfg.DedupWindow)
	dropped := 0
	for len(d.chunks) > 0 {
		c := d.chunks[0]
		end := dedupChunkSize
		if len(d.chunks) == 1 {
			end = d.tail
		}
		for d.head < end && c[d.head].at < limit {
			e := &c[d.head]
			if e.n == dedupOverflow {
				delete(d.big, e.key)
			}
			if e.busy {
				delete(d.busy, e.key)
			}
			d.head++
			dropped++
		}
		if d.head < end {
			break
		}
		if len(d.chunks) == 1 && end < dedupChunkSize {
			// The last chunk emptied before it filled: reuse it in place.
			d.head, d.tail = 0, 0
			break
		}
		d.chunks[0] = nil
		d.chunks = d.chunks[1:]
		d.spare, d.head = c, 0
		if len(d.chunks) == 0 {
			d.tail = 0
		}
	}
	if dropped > 0 {
		s.countRecords(p, -dropped)
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
	for i := d.len() - 1; i >= 0; i-- {
		e := d.entry(i)
		if e.at < limit {
			break
		}
		if e.key == k {
			b := d.busy[k]
			return d.response(e), true, e.busy && b != nil && b.Load()
		}
	}
	return nil, false, false
}

// DropDedup forgets partition p's record (executor p).
func (s *Service) DropDedup(p int) {
	if d := s.dedup[p]; d != nil {
		s.countRecords(p, -d.len())
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
	s.prune(p, d, time.Now().UnixNano())
	n, first := d.len(), 0
	if n > maxCarried {
		// Keep the bundle well under the frame limit: the newest entries
		// are the ones a retry can still need.
		first = n - maxCarried
	}
	w.WriteUvarint(uint64(n - first))
	for i := first; i < n; i++ {
		e := d.entry(i)
		w.WriteUint64(e.key.origin)
		w.WriteUvarint(e.key.seq)
		w.WriteVarint(e.at)
		w.WriteBytes(d.response(e))
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
