package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/partita-go/partita/spi"
)

// Wire format. Every frame is
//
//	uint32 length   (little-endian; bytes after this field)
//	uint8  kind
//	uint64 call id  (0 for frames that expect no answer)
//	payload         (by kind)
//
// A connection starts with one KindHello from each side. A frame that
// cannot be parsed (bad length, unknown kind, short header) closes the
// connection. The transport reads and writes frames of every kind; the
// meaning of the kinds after the hello is the operation service's.
const (
	// ProtocolVersion is the version both sides of a connection must speak.
	ProtocolVersion = 8
	// MaxFrameSize bounds one frame (16 MiB).
	MaxFrameSize = 16 << 20

	// HeaderSize is the fixed part of a frame: length, kind and call id.
	HeaderSize = 4 + 1 + 8
	helloMagic = "PRTA"
)

// Frame kinds.
const (
	KindHello    = 1 // "PRTA", version uint8, cluster, member id, member address
	KindRequest  = 2 // service id uint32, op type uint16, partition varint, invocation, retry, op data
	KindResponse = 3 // tagged value
	KindError    = 4 // code uint8, message string (see AppendError)
	KindBackup   = 5 // service id uint32, op type uint16, partition varint, replica uint8, version uvarint, invocation, primary's response, caller's call id uvarint, caller member id, op data
	KindAnswer   = 6 // a backup answering another member's call: primary member id, the primary's response (as KindResponse)
)

// Header is the parsed fixed part of a frame.
type Header struct {
	Kind   uint8
	CallID uint64
}

// ParseHeader checks the frame body (everything after the length field)
// and splits it into its header and payload.
func ParseHeader(body []byte) (Header, []byte, error) {
	if len(body) < HeaderSize-4 {
		return Header{}, nil, fmt.Errorf("%w: frame of %d bytes is shorter than its %d-byte header", spi.ErrProtocol, len(body), HeaderSize-4)
	}
	h := Header{Kind: body[0], CallID: binary.LittleEndian.Uint64(body[1:9])}
	if h.Kind < KindHello || h.Kind > KindAnswer {
		return h, nil, fmt.Errorf("%w: unknown frame kind %d", spi.ErrProtocol, h.Kind)
	}
	return h, body[9:], nil
}

// BeginFrame appends a frame header with a zero length to buf and returns
// the buffer and the offset of the length field for EndFrame.
func BeginFrame(buf []byte, kind uint8, callID uint64) ([]byte, int) {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0, kind)
	buf = binary.LittleEndian.AppendUint64(buf, callID)
	return buf, start
}

// EndFrame fills in the length of the frame that starts at start.
func EndFrame(buf []byte, start int) error {
	n := len(buf) - start - 4
	if n > MaxFrameSize {
		return fmt.Errorf("%w: frame of %d bytes exceeds the %d-byte limit", spi.ErrProtocol, n, MaxFrameSize)
	}
	binary.LittleEndian.PutUint32(buf[start:], uint32(n))
	return nil
}

// ReadFrame reads one frame body (after the length) into buf.
func ReadFrame(br *bufio.Reader, buf []byte) ([]byte, error) {
	return readFrameWithin(br, buf, nil, 0)
}

// errBodyTimeout: a frame was not received whole within FrameBodyTimeout
// of its first bytes.
var errBodyTimeout = errors.New("frame body timeout")

// readFrameWithin is ReadFrame with a read deadline on the body, unless
// nc is nil: a body that has not arrived whole within timeout of its
// length fails with errBodyTimeout. (A connection that reads frames itself
// is timed by the clock instead: see frameReader.)
func readFrameWithin(br *bufio.Reader, buf []byte, nc net.Conn, timeout time.Duration) ([]byte, error) {
	lb, err := br.Peek(4) // not a local array: io.ReadFull would move it to the heap
	if err != nil {
		if err == io.EOF && len(lb) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return buf, err
	}
	n := binary.LittleEndian.Uint32(lb)
	br.Discard(4)
	if n > MaxFrameSize {
		return buf, fmt.Errorf("%w: frame length %d exceeds the %d-byte limit", spi.ErrProtocol, n, MaxFrameSize)
	}
	if nc != nil && br.Buffered() < int(n) {
		nc.SetReadDeadline(time.Now().Add(timeout))
		defer nc.SetReadDeadline(time.Time{})
	}
	buf, err = readBody(br, buf, int(n))
	switch {
	case err == io.EOF:
		err = io.ErrUnexpectedEOF
	case errors.Is(err, os.ErrDeadlineExceeded) && nc != nil:
		err = fmt.Errorf("%w: %d of a %d-byte frame received within %v: %w", errBodyTimeout, len(buf), n, timeout, err)
	}
	return buf, err
}

// bodyChunk is the most readBody allocates for a frame ahead of its bytes.
const bodyChunk = 64 << 10

// readBody reads an n-byte frame body into buf. A buffer too small for it
// grows as the body arrives, doubling from bodyChunk, so that a peer that
// announces a large frame and sends little of it costs little memory.
func readBody(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) >= n {
		buf = buf[:n]
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	buf = buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(n, max(2*cap(buf), bodyChunk)))
			buf = nb[:copy(nb, buf)]
		}
		k, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil {
			if err == io.EOF && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
	}
	return buf, nil
}

// Error codes carried by KindError frames, so sentinels survive the trip.
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
	spi.ErrSplitBrainProtection,
}

func errorCode(err error) uint8 {
	for i, s := range errorCodes[1:] {
		if errors.Is(err, s) {
			return uint8(i + 1)
		}
	}
	return 0
}

// AppendError appends a KindError frame answering call callID with err:
// its sentinel (one of spi's errors) as a code, and its message.
func AppendError(buf []byte, callID uint64, err error) []byte {
	buf, start := BeginFrame(buf, KindError, callID)
	w := spi.Writer{}
	w.SetBuffer(buf)
	WriteError(&w, err)
	buf = w.Bytes()
	_ = EndFrame(buf, start)
	return buf
}

// WriteError writes a KindError payload: err's sentinel (one of spi's
// errors) as a code, and its message.
func WriteError(w *spi.Writer, err error) {
	w.WriteUint8(errorCode(err))
	msg := err.Error()
	if len(msg) > 64<<10 {
		msg = msg[:64<<10]
	}
	w.WriteString(msg)
}

// DecodeError returns the error a KindError payload from member carries,
// as a *spi.RemoteError wrapping its sentinel.
func DecodeError(payload []byte, member string) error {
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
