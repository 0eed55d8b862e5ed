package operation

import (
	"fmt"

	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// The frames, their kinds and the hello are the transport's
// (internal/transport); the payloads of requests, backups, responses and
// answers are this package's (link.go), and so are the response values.
const (
	// ProtocolVersion is the version both sides of a connection must speak.
	ProtocolVersion = transport.ProtocolVersion
	// MaxFrameSize bounds one frame (16 MiB).
	MaxFrameSize = transport.MaxFrameSize
)

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
