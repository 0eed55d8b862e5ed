package discovery

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestBeaconRoundTrip(t *testing.T) {
	for _, b := range []Beacon{
		{Cluster: "dev", Address: "127.0.0.1:5701", ID: "m1"},
		{Cluster: "", Address: "10.0.0.5:5701", ID: "4f1c2a9e-8d3b-4c55-9a2e-0b6f7d1e2c3a"},
		{Cluster: "prod", Address: "[::1]:5701", ID: "x"},
		{Cluster: "späte Ernte", Address: "node-1.example:65535", ID: "id with spaces"},
		{Cluster: strings.Repeat("c", 200), Address: "h:1", ID: strings.Repeat("i", 200)},
	} {
		p := b.Marshal()
		if !bytes.HasPrefix(p, []byte("PRTD\x01")) {
			t.Errorf("Marshal(%+v) = %q: missing magic and version", b, p)
		}
		got, err := UnmarshalBeacon(p)
		if err != nil {
			t.Errorf("UnmarshalBeacon(Marshal(%+v)): %v", b, err)
			continue
		}
		if got != b {
			t.Errorf("round trip: got %+v, want %+v", got, b)
		}
	}
}

func TestBeaconWireFormat(t *testing.T) {
	b := Beacon{Cluster: "dev", Address: "127.0.0.1:5701", ID: "m1"}
	want := "PRTD\x01" + "\x03dev" + "\x0e127.0.0.1:5701" + "\x02m1"
	if got := string(b.Marshal()); got != want {
		t.Fatalf("Marshal = %q, want %q", got, want)
	}
}

func TestBeaconMaxSize(t *testing.T) {
	// A beacon of exactly MaxBeaconSize bytes is accepted, one byte more is not.
	base := Beacon{Cluster: "", Address: "127.0.0.1:5701", ID: "x"}
	pad := MaxBeaconSize - len(base.Marshal())
	// The cluster length prefix grows to 2 bytes from 128 on.
	b := base
	b.Cluster = strings.Repeat("c", pad-1)
	p := b.Marshal()
	if len(p) != MaxBeaconSize {
		t.Fatalf("test setup: beacon is %d bytes, want %d", len(p), MaxBeaconSize)
	}
	if _, err := UnmarshalBeacon(p); err != nil {
		t.Fatalf("beacon of %d bytes rejected: %v", len(p), err)
	}
	b.Cluster += "c"
	p = b.Marshal()
	if len(p) != MaxBeaconSize+1 {
		t.Fatalf("test setup: beacon is %d bytes, want %d", len(p), MaxBeaconSize+1)
	}
	if _, err := UnmarshalBeacon(p); err == nil || !strings.Contains(err.Error(), "maximum") {
		t.Fatalf("beacon of %d bytes: err = %v, want a too-long error", len(p), err)
	}
}

func TestUnmarshalBeaconMalformed(t *testing.T) {
	valid := string(Beacon{Cluster: "dev", Address: "127.0.0.1:5701", ID: "m1"}.Marshal())
	str := func(s string) string { return string(rune(len(s))) + s } // short strings only
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"empty", "", "truncated header"},
		{"short magic", "PRT", "truncated header"},
		{"magic only", "PRTD", "truncated header"},
		{"bad magic", "XRTD" + valid[4:], "bad magic"},
		{"lower-case magic", "prtd" + valid[4:], "bad magic"},
		{"version 0", "PRTD\x00" + valid[5:], "unsupported version 0"},
		{"version 2", "PRTD\x02" + valid[5:], "unsupported version 2"},
		{"no cluster", "PRTD\x01", "cluster name: truncated length"},
		{"truncated cluster", "PRTD\x01\x05de", "cluster name: length 5 exceeds the 2 remaining bytes"},
		{"truncated uvarint", "PRTD\x01\x80", "cluster name: truncated length"},
		{"uvarint overflow", "PRTD\x01" + strings.Repeat("\xff", 10) + "\x01", "cluster name: length overflows 64 bits"},
		{"huge length", "PRTD\x01\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "exceeds the 0 remaining bytes"},
		{"oversized length", "PRTD\x01\x84\x04" + "dev", "length 516 exceeds the 3 remaining bytes"},
		{"non-minimal length", "PRTD\x01\x83\x00dev" + valid[9:], "cluster name: non-minimal length encoding"},
		{"no address", "PRTD\x01" + str("dev"), "address: truncated length"},
		{"truncated address", "PRTD\x01" + str("dev") + "\x20127.0.0.1", "address: length 32 exceeds"},
		{"no id", "PRTD\x01" + str("dev") + str("127.0.0.1:5701"), "member id: truncated length"},
		{"truncated id", valid[:len(valid)-1], "member id: length 2 exceeds the 1 remaining bytes"},
		{"trailing byte", valid + "\x00", "1 trailing bytes"},
		{"trailing beacon", valid + valid, "trailing bytes"},
		{"empty id", "PRTD\x01" + str("dev") + str("127.0.0.1:5701") + str(""), "empty member id"},
		{"address without port", "PRTD\x01" + str("dev") + str("127.0.0.1") + str("m1"), "missing port"},
		{"address empty host", "PRTD\x01" + str("dev") + str(":5701") + str("m1"), "empty host"},
		{"address port 0", "PRTD\x01" + str("dev") + str("h:0") + str("m1"), "bad port"},
		{"address port too big", "PRTD\x01" + str("dev") + str("h:65536") + str("m1"), "bad port"},
		{"address port not numeric", "PRTD\x01" + str("dev") + str("h:http") + str("m1"), "bad port"},
		{"address port leading zero", "PRTD\x01" + str("dev") + str("h:0080") + str("m1"), "bad port"},
		{"too long", valid + strings.Repeat("\x00", MaxBeaconSize), "more than the maximum 512"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := UnmarshalBeacon([]byte(tc.in))
			if err == nil {
				t.Fatalf("UnmarshalBeacon(%q) = %+v, want error containing %q", tc.in, b, tc.wantErr)
			}
			if !errors.Is(err, ErrInvalidBeacon) {
				t.Errorf("error %q does not wrap ErrInvalidBeacon", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if b != (Beacon{}) {
				t.Errorf("got non-zero beacon %+v with error", b)
			}
		})
	}
}

func FuzzUnmarshalBeacon(f *testing.F) {
	f.Add(Beacon{Cluster: "dev", Address: "127.0.0.1:5701", ID: "m1"}.Marshal())
	f.Add(Beacon{Cluster: "", Address: "[::1]:5701", ID: "x"}.Marshal())
	f.Add([]byte("PRTD\x01\x80"))
	f.Add([]byte("PRTD\x02\x03dev"))
	f.Fuzz(func(t *testing.T, p []byte) {
		b, err := UnmarshalBeacon(p)
		if err != nil {
			if !errors.Is(err, ErrInvalidBeacon) {
				t.Fatalf("error %q does not wrap ErrInvalidBeacon", err)
			}
			if b != (Beacon{}) {
				t.Fatalf("non-zero beacon %+v with error %v", b, err)
			}
			return
		}
		if len(p) > MaxBeaconSize {
			t.Fatalf("accepted %d bytes, more than MaxBeaconSize", len(p))
		}
		// Decoding is strict, so the encoding is canonical: what was
		// accepted is exactly what Marshal produces.
		if q := b.Marshal(); !bytes.Equal(q, p) {
			t.Fatalf("Marshal(UnmarshalBeacon(%q)) = %q", p, q)
		}
		if err := b.validate(); err != nil {
			t.Fatalf("accepted beacon %+v fails validation: %v", b, err)
		}
	})
}
