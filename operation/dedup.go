package operation

import (
	"bytes"
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
// go to the log's overflow map. Ten bytes hold a counter's answer up to
// 2^62 (a tag and a varint), and make an entry 40 bytes: on a busy member
// the log is written at several MB/s, and each record is a cache miss.
const dedupInline = 10

// Chunk sizes of a log, in entries: the first chunk is small, so that
// the 271 logs of a quiet member cost little, and each next one doubles up
// to the largest.
const (
	dedupFirstChunk = 16
	dedupMaxChunk   = 1024
)

// dedupEntry is one record. It holds no pointer, so the chunks that hold
// a million of them on a busy partition cost the garbage collector
// nothing to scan.
type dedupEntry struct {
	key  invKey
	at   int64  // when recorded (monoNow)
	seq  uint32 // see dedupLog.flags
	n    uint8  // response length; dedupOverflow: in the overflow map
	busy bool   // the run had synchronous backups: its flag is number seq
	resp [dedupInline]byte
}

const dedupOverflow = 0xff

type bigResponse struct {
	at int64
	b  []byte
}

// dedupLog is one partition's record, oldest first, touched on its
// executor only. Entries live in chunks: recording fills the last one,
// pruning by age drops whole chunks from the front, and nothing is ever
// copied to grow. Only a retry looks an id up (a first attempt cannot be
// a duplicate), scanning from the newest entry, so the hot path keeps no
// index.
type dedupLog struct {
	chunks [][]dedupEntry // each filled up to its capacity
	head   int            // first live entry of chunks[0]
	n      int            // live entries
	// pruneAt: recording at or after this time prunes first (the oldest
	// entry has expired for a while; see pruneAfter).
	pruneAt int64
	spare   []dedupEntry // a dropped largest chunk, for reuse
	// big holds the responses too long for an entry, with the time of the
	// entry they belong to (an id recorded twice, run again after the
	// window, has one slot: the newer record's; pruning the older one
	// leaves it).
	big map[invKey]bigResponse
	// flags[flagHead:] holds the busy flags of the runs with synchronous
	// backups, in record order, numbered from flagSeq: set until the last
	// ack, a retry must wait while it is. Recording drops the cleared ones
	// at the front, pruning the ones of the records it drops; a flag no
	// longer held, or nil, is clear. Behind a flag that stays set, cleared
	// ones are set to nil once the queue doubles (flagSweep), so that they
	// do not keep their runs alive.
	flags     []*atomic.Bool
	flagHead  int
	flagSeq   uint32
	flagSweep int
}

func (d *dedupLog) len() int { return d.n }

// flag returns e's busy flag, nil when it is known clear.
func (d *dedupLog) flag(e *dedupEntry) *atomic.Bool {
	if i := e.seq - d.flagSeq; e.busy && i < uint32(len(d.flags)-d.flagHead) {
		return d.flags[d.flagHead+int(i)]
	}
	return nil
}

// addFlag queues busy and returns its number; cleared flags at the front
// go first.
func (d *dedupLog) addFlag(busy *atomic.Bool) uint32 {
	seq := d.flagSeq + uint32(len(d.flags)-d.flagHead)
	d.flags = append(d.flags, busy)
	n := 0
	for f := d.flags[d.flagHead:]; n < len(f) && (f[n] == nil || !f[n].Load()); n++ {
	}
	d.dropFlags(n)
	if live := len(d.flags) - d.flagHead; live > d.flagSweep {
		set := 0
		for i, f := range d.flags[d.flagHead:] {
			if f != nil && !f.Load() {
				d.flags[d.flagHead+i] = nil
			} else if f != nil {
				set++
			}
		}
		d.flagSweep = 2*set + 64
	}
	return seq
}

// dropFlags drops the first n queued flags. The array is reused: emptied,
// it starts over; half dropped, the rest moves down.
func (d *dedupLog) dropFlags(n int) {
	if n == 0 {
		return
	}
	clear(d.flags[d.flagHead : d.flagHead+n]) // do not keep the runs alive
	d.flagHead += n
	d.flagSeq += uint32(n)
	switch {
	case d.flagHead == len(d.flags):
		d.flags, d.flagHead = d.flags[:0], 0
	case d.flagHead >= 32 && 2*d.flagHead >= len(d.flags):
		m := copy(d.flags, d.flags[d.flagHead:])
		clear(d.flags[m:])
		d.flags, d.flagHead = d.flags[:m], 0
	}
}

// entries calls f on the live entries from the i-th (oldest first) on,
// until f returns false.
func (d *dedupLog) entries(i int, f func(e *dedupEntry) bool) {
	i += d.head
	for _, c := range d.chunks {
		if i >= len(c) {
			i -= len(c)
			continue
		}
		for j := i; j < len(c); j++ {
			if !f(&c[j]) {
				return
			}
		}
		i = 0
	}
}

// entry returns the i-th live entry, oldest first.
func (d *dedupLog) entry(i int) (e *dedupEntry) {
	d.entries(i, func(x *dedupEntry) bool { e = x; return false })
	return e
}

// response returns e's response; it stays valid until the partition's
// next record.
func (d *dedupLog) response(e *dedupEntry) []byte {
	if e.n == dedupOverflow {
		if r := d.big[e.key]; r.at == e.at {
			return r.b
		}
		return nil
	}
	return e.resp[:e.n:e.n]
}

func (s *Service) dedupOf(p int) *dedupLog { return &s.dedup[p] }

// recordCount is the exactly-once record count of one executor's
// partitions, on a cache line of its own (only that executor writes it).
type recordCount struct {
	n atomic.Int64
	_ [56]byte
}

func (s *Service) countRecords(p int, delta int) {
	s.records[p%len(s.records)].n.Add(int64(delta))
}

// record stores k's response for partition p (executor p); resp is
// copied.
func (s *Service) record(p int, k invKey, resp []byte, at int64, busy *atomic.Bool) {
	if k.zero() {
		return
	}
	d := s.dedupOf(p)
	// (An expired record of the same id, kept because pruning is batched,
	// cannot take the new one's side data with it when it goes: busy flags
	// are numbered and long responses carry their entry's time.)
	if at >= d.pruneAt {
		s.prune(p, d, at)
	}
	last := len(d.chunks) - 1
	if last < 0 || len(d.chunks[last]) == cap(d.chunks[last]) {
		size := dedupFirstChunk
		if last >= 0 {
			size = min(2*cap(d.chunks[last]), dedupMaxChunk)
		}
		c := make([]dedupEntry, 0, size)
		if size == dedupMaxChunk && d.spare != nil {
			c, d.spare = d.spare[:0], nil
		}
		d.chunks = append(d.chunks, c)
		last++
	}
	d.chunks[last] = append(d.chunks[last], dedupEntry{key: k, at: at})
	e := &d.chunks[last][len(d.chunks[last])-1]
	d.n++
	if d.n == 1 {
		d.pruneAt = s.pruneAfter(at)
	}
	if len(resp) <= dedupInline {
		e.n = uint8(copy(e.resp[:], resp))
	} else {
		e.n = dedupOverflow
		if d.big == nil {
			d.big = make(map[invKey]bigResponse)
		}
		d.big[k] = bigResponse{at: at, b: bytes.Clone(resp)} // resp may be a caller's scratch
	}
	if busy != nil {
		e.busy, e.seq = true, d.addFlag(busy)
	}
	s.countRecords(p, 1)
}

// prune drops partition p's records older than the window.
func (s *Service) prune(p int, d *dedupLog, now int64) {
	limit := now - s.dedupKeep()
	dropped := 0
	for len(d.chunks) > 0 {
		c := d.chunks[0]
		for d.head < len(c) && c[d.head].at < limit {
			e := &c[d.head]
			if e.n == dedupOverflow {
				if d.big[e.key].at == e.at {
					delete(d.big, e.key)
				}
			}
			if i := e.seq - d.flagSeq; e.busy && i < uint32(len(d.flags)-d.flagHead) {
				d.dropFlags(int(i) + 1) // older runs' flags go with it
			}
			d.head++
			dropped++
		}
		if d.head < len(c) || (len(d.chunks) == 1 && len(c) < cap(c)) {
			break // live entries left, or room left in the last chunk
		}
		d.chunks[0] = nil
		d.chunks = d.chunks[1:]
		d.head = 0
		if cap(c) == dedupMaxChunk {
			d.spare = c
		}
	}
	if len(d.chunks) == 1 && d.head == len(d.chunks[0]) {
		// Everything expired: start over in the (small) chunk at hand.
		d.chunks[0], d.head = d.chunks[0][:0], 0
		d.spare = nil
	}
	if dropped > 0 {
		d.n -= dropped
		s.countRecords(p, -dropped)
	}
	d.pruneAt = 0
	if d.n > 0 {
		d.pruneAt = s.pruneAfter(d.chunks[0][d.head].at)
	}
}

// pruneAfter returns when a record made at 'at' expires, plus a sixteenth
// of the window: records are dropped in batches, not one per new record
// (each prune reads the oldest entry, which is cold in the cache).
// Lookups ignore expired records that are still kept.
func (s *Service) pruneAfter(at int64) int64 {
	return at + s.dedupKeep() + int64(s.cfg.DedupWindow)/16
}

// dedupKeep is how long a record is kept and found: the dedup window plus
// an eighth. An invocation sends no retry of an attempt that may have run
// once the window has passed since its first attempt (errPastWindow), and
// the record is made after that first attempt; the eighth covers the
// retry's way to the primary's executor (queues, a slow connection).
func (s *Service) dedupKeep() int64 {
	w := int64(s.cfg.DedupWindow)
	return w + w/8
}

// lookup returns the recorded response of k in partition p, if any, and
// whether that run still waits for its synchronous backups.
func (s *Service) lookup(p int, k invKey) (resp []byte, found, busy bool) {
	d := &s.dedup[p]
	if k.zero() || d.n == 0 {
		return nil, false, false
	}
	limit := monoNow() - s.dedupKeep()
	for ci := len(d.chunks) - 1; ci >= 0; ci-- {
		c, lo := d.chunks[ci], 0
		if ci == 0 {
			lo = d.head
		}
		for i := len(c) - 1; i >= lo; i-- {
			e := &c[i]
			if e.at < limit {
				return nil, false, false
			}
			if e.key == k {
				b := d.flag(e)
				return d.response(e), true, b != nil && b.Load()
			}
		}
	}
	return nil, false, false
}

// DropDedup forgets partition p's record (executor p).
func (s *Service) DropDedup(p int) {
	d := &s.dedup[p]
	s.countRecords(p, -d.len())
	*d = dedupLog{}
}

// AppendDedup writes partition p's record (executor p), for a migration or
// a replica sync.
func (s *Service) AppendDedup(w *spi.Writer, p int) {
	d := &s.dedup[p]
	now := monoNow()
	s.prune(p, d, now)
	n, first := d.len(), 0
	if n > maxCarried {
		// Keep the bundle well under the frame limit: the newest entries
		// are the ones a retry can still need.
		first = n - maxCarried
	}
	w.WriteUvarint(uint64(n - first))
	d.entries(first, func(e *dedupEntry) bool {
		w.WriteUint64(e.key.origin)
		w.WriteUvarint(e.key.seq)
		w.WriteVarint(max(now-e.at, 0)) // its age: clocks are per process
		w.WriteBytes(d.response(e))
		return true
	})
}

// ReadDedup replaces partition p's record with one AppendDedup wrote
// (executor p).
func (s *Service) ReadDedup(r *spi.Reader, p int) error {
	n := r.ReadUvarint()
	if r.Err() == nil && n > uint64(r.Remaining()/11) {
		return fmt.Errorf("%w: dedup record of %d entries in %d bytes", spi.ErrProtocol, n, r.Remaining())
	}
	s.DropDedup(p)
	now := monoNow()
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		k := invKey{origin: r.ReadUint64(), seq: r.ReadUvarint()}
		age, resp := r.ReadVarint(), r.ReadBytes()
		if r.Err() == nil {
			s.record(p, k, resp, now-max(age, 0), nil)
		}
	}
	return r.Err()
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
