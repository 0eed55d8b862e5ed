package replica

import (
	"bytes"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/partita-go/partita/spi"
)

// The exactly-once record of a partition replica: the ids of the
// backed-up operations its primary ran, with their encoded responses, so
// that a retry that reaches the same primary or a promoted backup is
// answered from it instead of running again. It travels with the backups,
// migrations and replica syncs. Times are the caller's monotonic clock
// readings (nanoseconds); between members a record carries its age.

// Key identifies one invocation across its attempts: the invoking
// member's incarnation and a sequence number. A zero Key is no invocation
// (the record ignores it).
type Key = spi.InvocationID

// Window is how long records are kept: Keep after they were made (a
// lookup ignores older ones), and pruned in batches Slack later; pins
// (pins.go) are kept PinKeep after they were made.
type Window struct{ Keep, Slack, PinKeep int64 }

// MaxCarried bounds the records one migration or replica sync carries
// for a partition (the newest ones), about 3 MiB.
const MaxCarried = 100_000

// inlineResponse is the longest response kept inside its entry; longer ones
// go to the log's overflow map. Ten bytes hold a counter's answer up to
// 2^62 (a tag and a varint), and make an entry 40 bytes: on a busy member
// the log is written at several MB/s, and each record is a cache miss.
const inlineResponse = 10

// Chunk sizes of a log, in entries: the first chunk is small, so that
// the 271 logs of a quiet member cost little, and each next one doubles up
// to the largest.
const (
	firstChunk = 16
	maxChunk   = 1024
)

// entry is one record. It holds no pointer, so the chunks that hold
// a million of them on a busy partition cost the garbage collector
// nothing to scan.
type entry struct {
	key  Key
	at   int64  // when recorded (monoNow)
	seq  uint32 // see Record.flags
	n    uint8  // response length; overflow: in the overflow map
	busy bool   // the run had synchronous backups: its flag is number seq
	resp [inlineResponse]byte
}

const overflow = 0xff

type bigResponse struct {
	at int64
	b  []byte
}

// Record is one partition's record, oldest first, touched on its
// executor only. Entries live in chunks: recording fills the last one,
// pruning by age drops whole chunks from the front, and nothing is ever
// copied to grow. Only a retry looks an id up (a first attempt cannot be
// a duplicate), scanning from the newest entry, so the hot path keeps no
// index.
type Record struct {
	chunks [][]entry // each filled up to its capacity
	head   int       // first live entry of chunks[0]
	n      int       // live entries
	// pruneAt: recording at or after this time prunes first (the oldest
	// entry has expired for a while; see pruneAfter).
	pruneAt int64
	spare   []entry // a dropped largest chunk, for reuse
	// big holds the responses too long for an entry, with the time of the
	// entry they belong to (an id recorded twice, run again after the
	// window, has one slot: the newer record's; pruning the older one
	// leaves it).
	big map[Key]bigResponse
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
	// partialUntil: records made before this time may be missing (a copy
	// carried only the newest MaxCarried); see Complete.
	partialUntil int64
	pins         pins  // pins.go
	from         int64 // runs before it are not listed (pins.go: Forget)
}

// Complete reports whether the record holds every invocation of the
// window at now. A replica installed from a copy that carried only the
// newest MaxCarried records lacks older ones until they would have
// expired anyway: a retry it does not find may have run already.
func (d *Record) Complete(now int64) bool { return now >= d.partialUntil }

// Len returns how many records are kept.
func (d *Record) Len() int { return d.n }

// flag returns e's busy flag, nil when it is known clear.
func (d *Record) flag(e *entry) *atomic.Bool {
	if i := e.seq - d.flagSeq; e.busy && i < uint32(len(d.flags)-d.flagHead) {
		return d.flags[d.flagHead+int(i)]
	}
	return nil
}

// addFlag queues busy and returns its number; cleared flags at the front
// go first.
func (d *Record) addFlag(busy *atomic.Bool) uint32 {
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
func (d *Record) dropFlags(n int) {
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
func (d *Record) entries(i int, f func(e *entry) bool) {
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
func (d *Record) entry(i int) (e *entry) {
	d.entries(i, func(x *entry) bool { e = x; return false })
	return e
}

// response returns e's response; it stays valid until the partition's
// next record.
func (d *Record) response(e *entry) []byte {
	if e.n == overflow {
		if r := d.big[e.key]; r.at == e.at {
			return r.b
		}
		return nil
	}
	return e.resp[:e.n:e.n]
}

// Add records k's response (copied), made at 'at', after pruning the
// expired records if their time has come; busy, when not nil, is the
// run's flag that a retry must wait for while set. It returns how many
// records it added (1, or 0 for a zero key) and pruned.
func (d *Record) Add(k Key, resp []byte, at int64, busy *atomic.Bool, win Window) (added, pruned int) {
	if k.Zero() {
		return 0, 0
	}
	// (An expired record of the same id, kept because pruning is batched,
	// cannot take the new one's side data with it when it goes: busy flags
	// are numbered and long responses carry their entry's time.)
	if at >= d.pruneAt {
		pruned = d.Prune(at, win)
	}
	last := len(d.chunks) - 1
	if last < 0 || len(d.chunks[last]) == cap(d.chunks[last]) {
		size := firstChunk
		if last >= 0 {
			size = min(2*cap(d.chunks[last]), maxChunk)
		}
		c := make([]entry, 0, size)
		if size == maxChunk && d.spare != nil {
			c, d.spare = d.spare[:0], nil
		}
		d.chunks = append(d.chunks, c)
		last++
	}
	d.chunks[last] = append(d.chunks[last], entry{key: k, at: at})
	e := &d.chunks[last][len(d.chunks[last])-1]
	d.n++
	if d.n == 1 {
		d.pruneAt = at + win.Keep + win.Slack
	}
	if len(resp) <= inlineResponse {
		e.n = uint8(copy(e.resp[:], resp))
	} else {
		e.n = overflow
		if d.big == nil {
			d.big = make(map[Key]bigResponse)
		}
		d.big[k] = bigResponse{at: at, b: bytes.Clone(resp)} // resp may be a caller's scratch
	}
	if busy != nil {
		e.busy, e.seq = true, d.addFlag(busy)
	}
	return 1, pruned
}

// Prune drops the records older than the window at now and returns how
// many.
func (d *Record) Prune(now int64, win Window) (dropped int) {
	limit := now - win.Keep
	for len(d.chunks) > 0 {
		c := d.chunks[0]
		for d.head < len(c) && c[d.head].at < limit {
			e := &c[d.head]
			if e.n == overflow {
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
		if cap(c) == maxChunk {
			d.spare = c
		}
	}
	if len(d.chunks) == 1 && d.head == len(d.chunks[0]) {
		// Everything expired: start over in the (small) chunk at hand.
		d.chunks[0], d.head = d.chunks[0][:0], 0
		d.spare = nil
	}
	d.n -= dropped
	d.pruneAt = 0
	if d.n > 0 {
		d.pruneAt = d.chunks[0][d.head].at + win.Keep + win.Slack
	}
	return dropped
}

// Lookup returns the recorded response of k, if a record made at or
// after limit holds it, and whether that run still waits for its
// synchronous backups. The response stays valid until the next Add; it is
// empty for a run that was not acknowledged (Unconfirm).
func (d *Record) Lookup(k Key, limit int64) (resp []byte, found, busy bool) {
	e := d.find(k, limit)
	if e == nil {
		return nil, false, false
	}
	b := d.flag(e)
	return d.response(e), true, b != nil && b.Load()
}

// find returns the newest entry of k made at or after limit, or nil.
func (d *Record) find(k Key, limit int64) *entry {
	if k.Zero() || d.n == 0 {
		return nil
	}
	for ci := len(d.chunks) - 1; ci >= 0; ci-- {
		c, lo := d.chunks[ci], 0
		if ci == 0 {
			lo = d.head
		}
		for i := len(c) - 1; i >= lo; i-- {
			e := &c[i]
			if e.at < limit {
				return nil
			}
			if e.key == k {
				return e
			}
		}
	}
	return nil
}

// Unconfirm marks the newest record of k as a run that was not
// acknowledged (a synchronous backup refused it, or never acknowledged
// it): its response is dropped, and a retry that finds it learns that
// the outcome is unknown instead of taking the response for an
// acknowledgement. It reports whether k was found.
//
// A recorded response is never empty (it holds at least a value's tag):
// an empty one is this mark, and it travels as such with the record
// (Append, Read).
func (d *Record) Unconfirm(k Key) bool {
	e := d.find(k, math.MinInt64)
	if e == nil {
		return false
	}
	if e.n == overflow && d.big[k].at == e.at {
		delete(d.big, k)
	}
	e.n = 0
	return true
}

// Drop forgets every record and returns how many there were.
func (d *Record) Drop() int {
	n := d.n
	*d = Record{}
	return n
}

// Append prunes, then writes the newest MaxCarried records to w, each
// with its age at now (for a migration or a replica sync), then the pins.
// It returns how many it pruned.
func (d *Record) Append(w *spi.Writer, now int64, win Window) (pruned int) {
	pruned = d.Prune(now, win)
	n, first := d.n, 0
	if n > MaxCarried {
		// Keep the bundle well under the frame limit: the newest entries
		// are the ones a retry can still need.
		first = n - MaxCarried
	}
	w.WriteBool(first > 0 || !d.Complete(now)) // partial: older ones left out
	w.WriteUvarint(uint64(n - first))
	d.entries(first, func(e *entry) bool {
		w.WriteUint64(e.key.Origin)
		w.WriteUvarint(e.key.Seq)
		w.WriteVarint(max(now-e.at, 0)) // its age: clocks are per process
		w.WriteBytes(d.response(e))
		return true
	})
	d.appendPins(w, now, win)
	return pruned
}

// Read replaces the records and the pins with the ones Append wrote, made
// their age before now. It returns how many records there were before and after.
func (d *Record) Read(r *spi.Reader, now int64, win Window) (before, after int, err error) {
	partial := r.ReadBool()
	n := r.ReadUvarint()
	if r.Err() == nil && n > uint64(r.Remaining()/11) {
		return 0, d.n, fmt.Errorf("%w: exactly-once record of %d entries in %d bytes", spi.ErrProtocol, n, r.Remaining())
	}
	before = d.Drop()
	oldest := now
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		k := Key{Origin: r.ReadUint64(), Seq: r.ReadUvarint()}
		age, resp := r.ReadVarint(), r.ReadBytes()
		if r.Err() == nil {
			at := now - max(age, 0)
			oldest = min(oldest, at)
			d.Add(k, resp, at, nil, win)
		}
	}
	if partial {
		// The ones left out are older than the oldest carried: they would
		// have expired by the time it does.
		d.partialUntil = oldest + win.Keep
	}
	if r.Err() == nil {
		if err := d.readPins(r, now); err != nil {
			return before, d.n, err
		}
	}
	return before, d.n, r.Err()
}
