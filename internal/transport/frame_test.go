package transport

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/partita-go/partita/spi"
)

func TestErrorFrameKeepsSentinel(t *testing.T) {
	for _, sentinel := range errorCodes[1:] {
		buf := AppendError(nil, 9, errors.Join(errors.New("context"), sentinel))
		h, payload, err := ParseHeader(buf[4:])
		if err != nil || h.Kind != KindError || h.CallID != 9 {
			t.Fatalf("header %+v, %v", h, err)
		}
		got := DecodeError(payload, "m1")
		if !errors.Is(got, sentinel) {
			t.Fatalf("%v does not wrap %v", got, sentinel)
		}
		var re *spi.RemoteError
		if !errors.As(got, &re) || re.Member != "m1" {
			t.Fatalf("not a RemoteError from m1: %v", got)
		}
	}
	got := DecodeError(AppendError(nil, 1, errors.New("boom"))[HeaderSize:], "m2")
	if got.Error() != "remote error from m2: boom" || errors.Unwrap(got) != nil {
		t.Fatalf("application error = %v", got)
	}
}

// readFrame allocates for a frame's body only as the body arrives: an
// announced 16 MiB with 100 bytes behind it costs one chunk, and a large
// body that arrives in small pieces is read whole.
func TestReadFrameGrowsAsTheBodyArrives(t *testing.T) {
	short := append(binary.LittleEndian.AppendUint32(nil, MaxFrameSize), make([]byte, 100)...)
	buf, err := ReadFrame(bufio.NewReader(bytes.NewReader(short)), nil)
	if err != io.ErrUnexpectedEOF || cap(buf) > bodyChunk {
		t.Fatalf("readFrame = %d bytes (cap %d), %v; want at most %d bytes, io.ErrUnexpectedEOF", len(buf), cap(buf), err, bodyChunk)
	}
	big := make([]byte, 3<<20+5)
	for i := range big {
		big[i] = byte(i * 13)
	}
	stream := append(binary.LittleEndian.AppendUint32(nil, uint32(len(big))), big...)
	stream = append(stream, 3, 0, 0, 0, 'a', 'b', 'c')
	br := bufio.NewReaderSize(iotest.HalfReader(bytes.NewReader(stream)), 16)
	buf, err = ReadFrame(br, make([]byte, 0, 10))
	if err != nil || !bytes.Equal(buf, big) {
		t.Fatalf("large frame: %d bytes, %v", len(buf), err)
	}
	if buf, err = ReadFrame(br, buf); err != nil || string(buf) != "abc" {
		t.Fatalf("frame after it: %q, %v", buf, err)
	}
	if _, err = ReadFrame(br, buf); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}
