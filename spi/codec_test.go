package spi

import (
	"bytes"
	"errors"
	"math"
	"testing"
)

func TestCodecRoundTrip(t *testing.T) {
	w := NewWriter(nil)
	w.WriteUint8(0xab)
	w.WriteBool(true)
	w.WriteBool(false)
	w.WriteUint16(0xbeef)
	w.WriteUint32(0xdeadbeef)
	w.WriteInt32(math.MinInt32)
	w.WriteUint64(math.MaxUint64)
	w.WriteInt64(math.MinInt64)
	w.WriteFloat64(-1.5)
	w.WriteVarint(-300)
	w.WriteVarint(math.MaxInt64)
	w.WriteUvarint(1 << 63)
	w.WriteString("héllo")
	w.WriteString("")
	w.WriteBytes([]byte{1, 2, 3})
	w.WriteBytes(nil)

	r := NewReader(w.Bytes())
	check := func(name string, got, want any) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("uint8", r.ReadUint8(), uint8(0xab))
	check("bool true", r.ReadBool(), true)
	check("bool false", r.ReadBool(), false)
	check("uint16", r.ReadUint16(), uint16(0xbeef))
	check("uint32", r.ReadUint32(), uint32(0xdeadbeef))
	check("int32", r.ReadInt32(), int32(math.MinInt32))
	check("uint64", r.ReadUint64(), uint64(math.MaxUint64))
	check("int64", r.ReadInt64(), int64(math.MinInt64))
	check("float64", r.ReadFloat64(), -1.5)
	check("varint", r.ReadVarint(), int64(-300))
	check("varint max", r.ReadVarint(), int64(math.MaxInt64))
	check("uvarint", r.ReadUvarint(), uint64(1<<63))
	check("string", r.ReadString(), "héllo")
	check("empty string", r.ReadString(), "")
	if b := r.ReadBytes(); !bytes.Equal(b, []byte{1, 2, 3}) {
		t.Errorf("bytes = %v", b)
	}
	if b := r.ReadBytes(); b != nil {
		t.Errorf("empty bytes = %v, want nil", b)
	}
	if r.Err() != nil || r.Remaining() != 0 {
		t.Fatalf("err %v, %d bytes left", r.Err(), r.Remaining())
	}
}

func TestReaderErrorsAreStickyAndTyped(t *testing.T) {
	w := NewWriter(nil)
	w.WriteString("abcdef")
	full := w.Bytes()
	for i := 0; i < len(full); i++ {
		r := NewReader(full[:i])
		if s := r.ReadString(); s != "" || !errors.Is(r.Err(), ErrProtocol) {
			t.Fatalf("truncated to %d: got %q, err %v", i, s, r.Err())
		}
		// Sticky: later reads return zero values and keep the first error.
		first := r.Err()
		if r.ReadInt64() != 0 || r.Err() != first {
			t.Fatal("error not sticky")
		}
	}
	// A length prefix larger than the input is refused before allocating.
	r := NewReader([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	if r.ReadBytes() != nil || !errors.Is(r.Err(), ErrProtocol) {
		t.Fatalf("huge length: err %v", r.Err())
	}
	r = NewReader([]byte{2})
	if r.ReadBool() || r.Err() == nil {
		t.Fatal("bool byte 2 accepted")
	}
	r = NewReader(bytes.Repeat([]byte{0xff}, 11))
	if r.ReadUvarint() != 0 || r.Err() == nil {
		t.Fatal("overlong varint accepted")
	}
}

func TestPropertiesTypedGetters(t *testing.T) {
	p := NewProperties("Svc", map[string]Property{
		"n": {Value: "12", Where: "f.yaml:3"}, "b": {Value: "true"}, "d": {Value: "250ms"}, "bad": {Value: "x", Where: "f.yaml:9"},
	})
	if n, err := p.Int("n", 1); n != 12 || err != nil {
		t.Fatalf("Int = %d, %v", n, err)
	}
	if n, err := p.Int("missing", 7); n != 7 || err != nil {
		t.Fatalf("Int default = %d, %v", n, err)
	}
	if b, err := p.Bool("b", false); !b || err != nil {
		t.Fatalf("Bool = %v, %v", b, err)
	}
	if d, err := p.Duration("d", 0); d.Milliseconds() != 250 || err != nil {
		t.Fatalf("Duration = %v, %v", d, err)
	}
	_, err := p.Int("bad", 0)
	if err == nil || err.Error() != `f.yaml:9: service "Svc": property "bad": want an integer, got "x"` {
		t.Fatalf("Int(bad) error = %v", err)
	}
	if s := p.With("n", "13").String("n", ""); s != "13" || p.String("n", "") != "12" {
		t.Fatalf("With changed the original or did not set: %q", s)
	}
}

func TestPropertiesOneOf(t *testing.T) {
	p := NewProperties("Svc", map[string]Property{"lvl": {Value: "DEBUG", Where: "f.yaml:2"}, "bad": {Value: "loud", Where: "f.yaml:3"}})
	if v, err := p.OneOf("lvl", "info", "info", "debug"); v != "debug" || err != nil {
		t.Fatalf("OneOf = %q, %v", v, err)
	}
	if v, err := p.OneOf("none", "info", "info", "debug"); v != "info" || err != nil {
		t.Fatalf("OneOf default = %q, %v", v, err)
	}
	_, err := p.OneOf("bad", "info", "info", "debug")
	if err == nil || err.Error() != `f.yaml:3: service "Svc": property "bad": want one of info, debug, got "loud"` {
		t.Fatalf("OneOf(bad) = %v", err)
	}
}
