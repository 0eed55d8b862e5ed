//go:build unix

package operation

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// served has s serve one end of a loopback TCP connection (as HandleConn
// after the protocol selector) and returns the peer's end and the served
// socket (for drained).
func served(t *testing.T, s *Service) (peer net.Conn, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	peer, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	b := wait(t, acc, "accept")
	if b == nil {
		t.Fatal("accept failed")
	}
	s.HandleConn(b)
	return peer, b.(*net.TCPConn)
}

// greet sends a hello as member id and reads the service's.
func greet(t *testing.T, peer net.Conn, id string) {
	t.Helper()
	if _, err := peer.Write(hello{version: ProtocolVersion, cluster: "dev", id: id, address: id}.encode(nil)); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := readHello(bufio.NewReaderSize(peer, 16)); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Time{})
}

// drained waits until the kernel holds no bytes for the served socket:
// its reader has read everything sent to it.
func drained(t *testing.T, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var p [1]byte
	eventually(t, func() bool {
		n := 0
		var rerr error
		rc.Control(func(fd uintptr) {
			n, _, rerr = syscall.Recvfrom(int(fd), p[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		})
		return n <= 0 && rerr == syscall.EAGAIN
	})
}

// readersWaiting waits until n goroutines wait for data in readFrames.
func readersWaiting(t *testing.T, n int) {
	t.Helper()
	buf := make([]byte, 16<<20)
	eventually(t, func() bool {
		k := 0
		m := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:m]), "\n\n") {
			if strings.Contains(g, "(*turnConn).readFrames") && strings.Contains(g, "pollWait") {
				k++
			}
		}
		return k >= n
	})
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// Issue 19: a peer that announces a large frame and sends little of it
// must not cost the frame's size. 200 connections each announce a frame
// of almost 16 MiB after their hello and send 50 bytes of it: the heap
// grows by far less than one such frame per connection (3 GiB), and a
// buffer is allocated only as the body's bytes arrive.
func TestAnnouncedLargeFramesCostOnlyWhatArrives(t *testing.T) {
	s := newTestService(t)
	const conns = 200
	before := heapInUse()
	servers := make([]*net.TCPConn, conns)
	for i := range conns {
		peer, server := served(t, s)
		servers[i] = server
		greet(t, peer, fmt.Sprintf("m%d", i))
		f := binary.LittleEndian.AppendUint32(nil, 0x00fffff0)
		f = append(f, make([]byte, 50)...)
		if _, err := peer.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range servers {
		drained(t, c)
	}
	readersWaiting(t, conns)
	after := heapInUse()
	grown := int64(after) - int64(before)
	t.Logf("heap in use grew by %.1f MiB for %d connections", float64(grown)/(1<<20), conns)
	if grown > 64<<20 {
		t.Fatalf("heap in use grew by %.1f MiB for %d connections, each announcing a 16 MiB frame", float64(grown)/(1<<20), conns)
	}
}
