//go:build linux

package transport

import (
	"encoding/binary"
	"github.com/partita-go/partita/internal/testkit"
	"io"
	"net"
	"syscall"
	"testing"
)

// A deterministic form of TestReadFramesSeesACloseBehindTheLastFrame: the
// last frame and the FIN arrive, and their one event is taken, while the
// reader handles the frame before; the reader then reads the last frame
// short and waits with no event to come. Only the pokes end the wait.
func TestReadFramesCloseBehindTheLastFrameNeedsThePokes(t *testing.T) {
	a, b := turnPair(t)
	tc := a.(*turnConn)
	k, hold := handlingOne(t, a, b)
	b.Write(frameOf([]byte("last")))
	b.(*turnConn).Conn.(*net.TCPConn).CloseWrite()
	rc, _ := tc.Conn.(*net.TCPConn).SyscallConn()
	testkit.Eventually(t, func() bool { // the FIN is in: CLOSE_WAIT
		var st uint8
		rc.Control(func(fd uintptr) {
			// the first 4 bytes of struct tcp_info: tcpi_state first
			if v, err := syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_INFO); err == nil {
				var b [4]byte
				binary.NativeEndian.PutUint32(b[:], uint32(v))
				st = b[0]
			}
		})
		return st == 8
	})
	harvest(t)
	close(hold)
	k.expect(t, []byte("one"))
	k.expect(t, []byte("last"))
	testkit.WaitParked(t, "readFrames", "waitRead")
	if !tc.skipping.Load() {
		t.Fatal("the reader waits after EAGAIN: the hole was not reached")
	}
	if err := k.end(t, a); err != io.EOF {
		t.Fatalf("readFrames returned %v, want io.EOF", err)
	}
}
