package operation

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/partita-go/partita/spi"
)

// Wire format. Every frame is
//
//	uint32 length   (little-endian; bytes after this field)
//	uint8  kind
//	uint64 call id  (0 for frames that expect no answer)
//	payload         (by kind, below)
//
// A connection starts with one kindHello from each side. A frame that
// cannot be parsed (bad length, unknown kind, short header) closes the
// connection; a request whose operation cannot be decoded is answered with
// a kindError and the connection stays up.
const (
	// ProtocolVersion is the version both sides of a connection must speak.
	ProtocolVersion = 5
	// MaxFrameSize bounds one frame (16 MiB).
	MaxFrameSize = 16 << 20

	headerSize = 4 + 1 + 8
	helloMagic = "PRTA"
)

// Frame kinds.
const (
	kindHello    = 1 // "PRTA", version uint8, cluster, member id, member address
	kindRequest  = 2 // service id uint32, op type uint16, partition varint, op data
	kindResponse = 3 // tagged value (see writeValue)
	kindError    = 4 // code uint8, message string
	kindBackup   = 5 // service id uint32, op type uint16, partition varint, replica uint8, version uvarint, invocation, primary's response, caller's call id uvarint, caller member id, op data
	kindAnswer   = 6 // a backup answering another member's call: primary member id, the primary's response (as kindResponse)
)

// frameHeader is the parsed fixed part of a frame.
type frameHeader struct {
	kind   uint8
	callID uint64
}

// parseHeader checks the frame body (everything after the length field).
func parseHeader(body []byte) (frameHeader, []byte, error) {
	if len(body) < headerSize-4 {
		return frameHeader{}, nil, fmt.Errorf("%w: frame of %d bytes is shorter than its %d-byte header", spi.ErrProtocol, len(body), headerSize-4)
	}
	h := frameHeader{kind: body[0], callID: binary.LittleEndian.Uint64(body[1:9])}
	if h.kind < kindHello || h.kind > kindAnswer {
		return h, nil, fmt.Errorf("%w: unknown frame kind %d", spi.ErrProtocol, h.kind)
	}
	return h, body[9:], nil
}

// beginFrame appends a frame header with a zero length to buf and returns
// the buffer and the offset of the length field for endFrame.
func beginFrame(buf []byte, kind uint8, callID uint64) ([]byte, int) {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0, kind)
	buf = binary.LittleEndian.AppendUint64(buf, callID)
	return buf, start
}

// endFrame fills in the length of the frame that starts at start.
func endFrame(buf []byte, start int) error {
	n := len(buf) - start - 4
	if n > MaxFrameSize {
		return fmt.Errorf("%w: frame of %d bytes exceeds the %d-byte limit", spi.ErrProtocol, n, MaxFrameSize)
	}
	binary.LittleEndian.PutUint32(buf[start:], uint32(n))
	return nil
}

// hello is the first frame on a connection, from each side.
type hello struct {
	version uint8
	cluster string
	id      string
	address string
}

func (h hello) encode(buf []byte) []byte {
	buf, start := beginFrame(buf, kindHello, 0)
	w := spi.Writer{}
	w.SetBuffer(append(buf, helloMagic...))
	w.WriteUint8(h.version)
	w.WriteString(h.cluster)
	w.WriteString(h.id)
	w.WriteString(h.address)
	buf = w.Bytes()
	_ = endFrame(buf, start)
	return buf
}

func decodeHello(payload []byte) (hello, error) {
	if len(payload) < len(helloMagic) || string(payload[:len(helloMagic)]) != helloMagic {
		return hello{}, fmt.Errorf("%w: connection did not start with a Partita hello (bad magic)", spi.ErrProtocol)
	}
	r := spi.NewReader(payload[len(helloMagic):])
	h := hello{version: r.ReadUint8(), cluster: r.ReadString(), id: r.ReadString(), address: r.ReadString()}
	if err := r.Err(); err != nil {
		return h, fmt.Errorf("bad hello: %w", err)
	}
	if r.Remaining() != 0 {
		return h, fmt.Errorf("%w: %d trailing bytes after hello", spi.ErrProtocol, r.Remaining())
	}
	return h, nil
}

// Error codes carried by kindError frames, so sentinels survive the trip.
var errorCodes = []error{
	nil, // 0: application error from Run
	spi.ErrWrongTarget,
	spi.ErrPartitionMigrating,
	spi.ErrMemberLeft,
	spi.ErrNotReady,
	spi.ErrTimeout,
	spi.ErrOverloaded,
	spi.ErrShutdown,
	spi.ErrUnknownService,
	spi.ErrUnknownOperation,
	spi.ErrProtocol,
	spi.ErrClusterMismatch,
	spi.ErrNoSuchMember,
	spi.ErrBackupTimeout, // before ErrIndeterminate, which it wraps
	spi.ErrIndeterminate,
	spi.ErrInProgress,
}

func errorCode(err error) uint8 {
	for i, s := range errorCodes[1:] {
		if errors.Is(err, s) {
			return uint8(i + 1)
		}
	}
	return 0
}

func appendError(buf []byte, callID uint64, err error) []byte {
	buf, start := beginFrame(buf, kindError, callID)
	w := spi.Writer{}
	w.SetBuffer(buf)
	w.WriteUint8(errorCode(err))
	msg := err.Error()
	if len(msg) > 64<<10 {
		msg = msg[:64<<10]
	}
	w.WriteString(msg)
	buf = w.Bytes()
	_ = endFrame(buf, start)
	return buf
}

func decodeError(payload []byte, member string) error {
	r := spi.NewReader(payload)
	code, msg := r.ReadUint8(), r.ReadString()
	if err := r.Err(); err != nil {
		return fmt.Errorf("bad error frame from %s: %w", member, err)
	}
	re := &spi.RemoteError{Member: member, Message: msg}
	if int(code) < len(errorCodes) {
		re.Err = errorCodes[code]
	}
	return re
}

// Response value tags.
const (
	tagNil = iota
	tagFalse
	tagTrue
	tagInt64
	tagInt
	tagUint64
	tagFloat64
	tagString
	tagBytes
	tagCustom
)

// writeValue encodes a response of one of the built-in types.
func writeValue(w *spi.Writer, v any) error {
	switch x := v.(type) {
	case nil:
		w.WriteUint8(tagNil)
	case bool:
		if x {
			w.WriteUint8(tagTrue)
		} else {
			w.WriteUint8(tagFalse)
		}
	case int64:
		w.WriteUint8(tagInt64)
		w.WriteVarint(x)
	case int:
		w.WriteUint8(tagInt)
		w.WriteVarint(int64(x))
	case uint64:
		w.WriteUint8(tagUint64)
		w.WriteUvarint(x)
	case float64:
		w.WriteUint8(tagFloat64)
		w.WriteFloat64(x)
	case string:
		w.WriteUint8(tagString)
		w.WriteString(x)
	case []byte:
		w.WriteUint8(tagBytes)
		w.WriteBytes(x)
	default:
		return fmt.Errorf("response of type %T cannot be sent to another member: return a built-in type or implement spi.ResponseCodec", v)
	}
	return nil
}

// readValue decodes what writeValue wrote; tagCustom is handed to codec.
func readValue(r *spi.Reader, codec spi.ResponseCodec) (any, error) {
	var v any
	switch tag := r.ReadUint8(); tag {
	case tagNil:
	case tagFalse:
		v = false
	case tagTrue:
		v = true
	case tagInt64:
		v = r.ReadVarint()
	case tagInt:
		v = int(r.ReadVarint())
	case tagUint64:
		v = r.ReadUvarint()
	case tagFloat64:
		v = r.ReadFloat64()
	case tagString:
		v = r.ReadString()
	case tagBytes:
		v = r.ReadBytes()
	case tagCustom:
		if codec == nil {
			return nil, fmt.Errorf("%w: custom response for an operation that is not a ResponseCodec", spi.ErrProtocol)
		}
		return codec.ReadResponse(r)
	default:
		if r.Err() == nil {
			return nil, fmt.Errorf("%w: unknown response tag %d", spi.ErrProtocol, tag)
		}
	}
	if r.Err() == nil && r.Remaining() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after response", spi.ErrProtocol, r.Remaining())
	}
	return v, r.Err()
}
