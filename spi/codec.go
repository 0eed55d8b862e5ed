package spi

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Writer appends the binary encoding of an operation's fields to a buffer.
// Fixed-width integers are little-endian; strings and byte slices are
// prefixed by their length as an unsigned varint. Writing never fails.
//
// A Writer is not safe for concurrent use; the engine hands each operation
// its own Writer, and reuses it once the operation's frame is queued.
type Writer struct {
	buf []byte
}

// NewWriter returns a Writer that appends to buf[:0]'s backing array.
func NewWriter(buf []byte) *Writer { return &Writer{buf: buf[:0]} }

// Bytes returns the bytes written so far. The slice aliases the Writer's
// buffer and is valid until the next write or Reset.
func (w *Writer) Bytes() []byte { return w.buf }

// Len returns the number of bytes written so far.
func (w *Writer) Len() int { return len(w.buf) }

// Reset empties the Writer, keeping its buffer.
func (w *Writer) Reset() { w.buf = w.buf[:0] }

// SetBuffer makes the Writer append to buf (used by the engine to encode
// straight into a frame buffer).
func (w *Writer) SetBuffer(buf []byte) { w.buf = buf }

// WriteUint8 appends one byte.
func (w *Writer) WriteUint8(v uint8) { w.buf = append(w.buf, v) }

// WriteBool appends a bool as one byte (0 or 1).
func (w *Writer) WriteBool(v bool) {
	var b byte
	if v {
		b = 1
	}
	w.buf = append(w.buf, b)
}

// WriteUint16 appends a fixed 2-byte integer.
func (w *Writer) WriteUint16(v uint16) { w.buf = binary.LittleEndian.AppendUint16(w.buf, v) }

// WriteUint32 appends a fixed 4-byte integer.
func (w *Writer) WriteUint32(v uint32) { w.buf = binary.LittleEndian.AppendUint32(w.buf, v) }

// WriteInt32 appends a fixed 4-byte signed integer.
func (w *Writer) WriteInt32(v int32) { w.WriteUint32(uint32(v)) }

// WriteUint64 appends a fixed 8-byte integer.
func (w *Writer) WriteUint64(v uint64) { w.buf = binary.LittleEndian.AppendUint64(w.buf, v) }

// WriteInt64 appends a fixed 8-byte signed integer.
func (w *Writer) WriteInt64(v int64) { w.WriteUint64(uint64(v)) }

// WriteFloat64 appends an IEEE 754 double as 8 bytes.
func (w *Writer) WriteFloat64(v float64) { w.WriteUint64(math.Float64bits(v)) }

// WriteVarint appends a signed integer in zig-zag varint form (1-10 bytes).
func (w *Writer) WriteVarint(v int64) { w.buf = binary.AppendVarint(w.buf, v) }

// WriteUvarint appends an unsigned integer in varint form (1-10 bytes).
func (w *Writer) WriteUvarint(v uint64) { w.buf = binary.AppendUvarint(w.buf, v) }

// WriteString appends a length-prefixed string.
func (w *Writer) WriteString(s string) {
	w.buf = binary.AppendUvarint(w.buf, uint64(len(s)))
	w.buf = append(w.buf, s...)
}

// WriteBytes appends a length-prefixed byte slice (nil and empty encode
// alike).
func (w *Writer) WriteBytes(b []byte) {
	w.buf = binary.AppendUvarint(w.buf, uint64(len(b)))
	w.buf = append(w.buf, b...)
}

// Reader decodes what a Writer wrote. Its errors are sticky: after the first
// failure (for example a truncated input) every read returns the zero value,
// and Err reports the failure. Decoders therefore read all fields and check
// Err once:
//
//	func (op *IncOperation) ReadData(r *spi.Reader) error {
//		op.Name = r.ReadString()
//		op.Amount = r.ReadVarint()
//		return r.Err()
//	}
//
// A Reader never panics on malformed input and never allocates more than
// the input's length.
type Reader struct {
	buf []byte
	off int
	err error
}

// NewReader returns a Reader over buf. The Reader does not copy buf; the
// strings and byte slices it returns are copies.
func NewReader(buf []byte) *Reader { return &Reader{buf: buf} }

// Reset points the Reader at buf and clears its error.
func (r *Reader) Reset(buf []byte) { r.buf, r.off, r.err = buf, 0, nil }

// Err returns the first decoding error, or nil.
func (r *Reader) Err() error { return r.err }

// Remaining returns how many bytes are left unread.
func (r *Reader) Remaining() int { return len(r.buf) - r.off }

// Offset returns how many bytes have been read.
func (r *Reader) Offset() int { return r.off }

// Rest returns the bytes left unread, without copying them or reading
// past them; they are valid as long as the Reader's buffer is.
func (r *Reader) Rest() []byte { return r.buf[r.off:] }

func (r *Reader) fail(what string, need int) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated %s at offset %d: need %d bytes, have %d",
			ErrProtocol, what, r.off, need, len(r.buf)-r.off)
	}
}

func (r *Reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.buf)-r.off {
		r.fail(what, n)
		return nil
	}
	b := r.buf[r.off : r.off+n]
	r.off += n
	return b
}

// ReadUint8 reads one byte.
func (r *Reader) ReadUint8() uint8 {
	if b := r.take(1, "uint8"); b != nil {
		return b[0]
	}
	return 0
}

// ReadBool reads a bool; any byte other than 0 or 1 is an error.
func (r *Reader) ReadBool() bool {
	b := r.take(1, "bool")
	if b == nil {
		return false
	}
	switch b[0] {
	case 0:
		return false
	case 1:
		return true
	}
	r.err = fmt.Errorf("%w: bad bool byte %#x at offset %d", ErrProtocol, b[0], r.off-1)
	return false
}

// ReadUint16 reads a fixed 2-byte integer.
func (r *Reader) ReadUint16() uint16 {
	if b := r.take(2, "uint16"); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

// ReadUint32 reads a fixed 4-byte integer.
func (r *Reader) ReadUint32() uint32 {
	if b := r.take(4, "uint32"); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// ReadInt32 reads a fixed 4-byte signed integer.
func (r *Reader) ReadInt32() int32 { return int32(r.ReadUint32()) }

// ReadUint64 reads a fixed 8-byte integer.
func (r *Reader) ReadUint64() uint64 {
	if b := r.take(8, "uint64"); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// ReadInt64 reads a fixed 8-byte signed integer.
func (r *Reader) ReadInt64() int64 { return int64(r.ReadUint64()) }

// ReadFloat64 reads an IEEE 754 double.
func (r *Reader) ReadFloat64() float64 { return math.Float64frombits(r.ReadUint64()) }

// ReadVarint reads a zig-zag varint.
func (r *Reader) ReadVarint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.buf[r.off:])
	if n <= 0 {
		r.badVarint(n)
		return 0
	}
	r.off += n
	return v
}

// ReadUvarint reads an unsigned varint.
func (r *Reader) ReadUvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.buf[r.off:])
	if n <= 0 {
		r.badVarint(n)
		return 0
	}
	r.off += n
	return v
}

func (r *Reader) badVarint(n int) {
	if n == 0 {
		r.fail("varint", 1)
		return
	}
	r.err = fmt.Errorf("%w: varint overflows 64 bits at offset %d", ErrProtocol, r.off)
}

func (r *Reader) length(what string) int {
	n := r.ReadUvarint()
	if r.err != nil {
		return -1
	}
	if n > uint64(len(r.buf)-r.off) {
		r.err = fmt.Errorf("%w: %s length %d at offset %d exceeds the %d bytes left",
			ErrProtocol, what, n, r.off, len(r.buf)-r.off)
		return -1
	}
	return int(n)
}

// ReadString reads a length-prefixed string.
func (r *Reader) ReadString() string {
	n := r.length("string")
	if n < 0 {
		return ""
	}
	return string(r.take(n, "string"))
}

// ReadBytes reads a length-prefixed byte slice and returns a copy of it
// (nil when empty).
func (r *Reader) ReadBytes() []byte {
	n := r.length("bytes")
	if n <= 0 {
		return nil
	}
	return append([]byte(nil), r.take(n, "bytes")...)
}
