package discovery

import (
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests never open a socket: they exercise validation and the receive
// path's logic directly. Real multicast traffic only happens in
// TestMulticastInNetns, inside a private network namespace.

var fromAddr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

func devConfig(log *slog.Logger) Config {
	return Config{
		Cluster: "dev",
		Self:    Beacon{Address: "127.0.0.1:5701", ID: "m1"},
		Logger:  log,
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	// Every config here is rejected before any socket is opened, so no
	// multicast is sent in the default network namespace.
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"unicast group", func(c *Config) { c.Group = "127.0.0.1:54327" }, `"127.0.0.1:54327" is not an IPv4 multicast address`},
		{"IPv6 group", func(c *Config) { c.Group = "[ff02::1]:54327" }, "[ff02::1]:54327"},
		{"group without port", func(c *Config) { c.Group = "224.2.2.3" }, `multicast group "224.2.2.3"`},
		{"group port 0", func(c *Config) { c.Group = "224.2.2.3:0" }, "port must not be 0"},
		{"self cluster differs", func(c *Config) { c.Self.Cluster = "prod" }, `Self.Cluster "prod" differs from Cluster "dev"`},
		{"empty id", func(c *Config) { c.Self.ID = "" }, "empty member id"},
		{"empty address", func(c *Config) { c.Self.Address = "" }, "own beacon"},
		{"address without port", func(c *Config) { c.Self.Address = "127.0.0.1" }, "missing port"},
		{"beacon too big", func(c *Config) { c.Self.ID = strings.Repeat("x", MaxBeaconSize) }, "more than the maximum"},
		{"negative interval", func(c *Config) { c.Interval = -time.Second }, "negative interval"},
		{"interface without multicast", func(c *Config) {
			c.Interface = &net.Interface{Index: 99, Name: "nomc0", Flags: net.FlagUp}
		}, "interface nomc0 does not support multicast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := devConfig(nil)
			tc.mod(&cfg)
			d, err := Start(cfg)
			if err == nil {
				d.Close()
				t.Fatalf("Start succeeded, want error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Start error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	d, err := newDiscoverer(devConfig(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := d.group.String(); got != DefaultGroup {
		t.Errorf("group = %s, want %s", got, DefaultGroup)
	}
	if d.interval != DefaultInterval {
		t.Errorf("interval = %v, want %v", d.interval, DefaultInterval)
	}
	want := Beacon{Cluster: "dev", Address: "127.0.0.1:5701", ID: "m1"}
	if d.self != want {
		t.Errorf("self = %+v, want %+v", d.self, want)
	}
	if got, err := UnmarshalBeacon(d.payload); err != nil || got != want {
		t.Errorf("payload decodes to %+v, %v; want %+v", got, err, want)
	}
}

func TestHandlePacket(t *testing.T) {
	rec := newLogRecorder()
	d, err := newDiscoverer(devConfig(slog.New(rec)))
	if err != nil {
		t.Fatal(err)
	}
	send := func(b Beacon) { d.handlePacket(b.Marshal(), fromAddr) }

	m2 := Beacon{Cluster: "dev", Address: "127.0.0.1:5702", ID: "m2"}
	m3 := Beacon{Cluster: "dev", Address: "127.0.0.1:5703", ID: "m3"}
	prod := Beacon{Cluster: "prod", Address: "10.0.0.5:5701", ID: "p1"}
	for range 3 {
		send(Beacon{Cluster: "dev", Address: "127.0.0.1:5701", ID: "m1"}) // ourselves
		send(m2)
		send(m3)
		send(prod)
		send(Beacon{Cluster: "test", Address: "10.0.0.5:5701", ID: "p1"})
		d.handlePacket([]byte("PRTD\x01garbage"), fromAddr)
	}
	// A known address with a new ID is remembered, not announced again.
	m3b := Beacon{Cluster: "dev", Address: "127.0.0.1:5703", ID: "m3-restarted"}
	send(m3b)

	if got, want := d.Discovered(), []Beacon{m2, m3b}; !slices.Equal(got, want) {
		t.Errorf("Discovered = %+v, want %+v", got, want)
	}
	var announced []Beacon
	for len(d.Peers()) > 0 {
		announced = append(announced, <-d.Peers())
	}
	if want := []Beacon{m2, m3}; !slices.Equal(announced, want) {
		t.Errorf("Peers announced %+v, want %+v", announced, want)
	}
	for _, msg := range []string{
		`ignoring multicast beacon from 10.0.0.5:5701: cluster "prod", ours is "dev"`,
		`ignoring multicast beacon from 10.0.0.5:5701: cluster "test", ours is "dev"`,
	} {
		if n := rec.count(slog.LevelInfo, msg); n != 1 {
			t.Errorf("log line %q appeared %d times, want once; log:\n%s", msg, n, rec.dump())
		}
	}
	if got := d.invalid.Load(); got != 3 {
		t.Errorf("invalid = %d, want 3", got)
	}
	if got := d.ignored.Load(); got != 6 {
		t.Errorf("ignored = %d, want 6", got)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, ok := <-d.Peers(); ok {
		t.Error("Peers not closed after Close")
	}
}

func TestPeersChannelFullDoesNotBlock(t *testing.T) {
	d, err := newDiscoverer(devConfig(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const extra = 10
	done := make(chan struct{})
	go func() {
		// Runs on its own goroutine so that a blocking send fails the
		// test by timeout rather than hanging it.
		defer close(done)
		for i := range peerBuffer + extra {
			b := Beacon{Cluster: "dev", Address: fmt.Sprintf("127.0.0.1:%d", 6000+i), ID: fmt.Sprint("p", i)}
			d.handlePacket(b.Marshal(), fromAddr)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("handlePacket blocked on a full Peers channel")
	}
	if got := len(d.Peers()); got != peerBuffer {
		t.Errorf("Peers holds %d, want %d", got, peerBuffer)
	}
	if got := len(d.Discovered()); got != peerBuffer+extra {
		t.Errorf("Discovered has %d peers, want %d", got, peerBuffer+extra)
	}
	if got := d.dropped.Load(); got != extra {
		t.Errorf("dropped = %d, want %d", got, extra)
	}
}

func TestPeerSetIsBounded(t *testing.T) {
	rec := newLogRecorder()
	d, err := newDiscoverer(devConfig(slog.New(rec)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := range maxPeers + 5 {
		b := Beacon{Cluster: "dev", Address: fmt.Sprintf("h%d:1", i), ID: "x"}
		d.handlePacket(b.Marshal(), fromAddr)
	}
	if got := len(d.Discovered()); got != maxPeers {
		t.Errorf("Discovered has %d peers, want the limit %d", got, maxPeers)
	}
	if n := rec.count(slog.LevelWarn, "too many multicast peers, ignoring new ones"); n != 1 {
		t.Errorf("limit warning logged %d times, want once", n)
	}
}
