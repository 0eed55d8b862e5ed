//go:build unix

package operation

import (
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/partita-go/partita/internal/testkit"
	"github.com/partita-go/partita/internal/transport"
	"github.com/partita-go/partita/spi"
)

// peerFrame builds a frame of kind with payload written by fill.
func peerFrame(kind uint8, callID uint64, fill func(w *spi.Writer)) []byte {
	buf, start := transport.BeginFrame(nil, kind, callID)
	w := &spi.Writer{}
	w.SetBuffer(buf)
	fill(w)
	buf = w.Bytes()
	transport.EndFrame(buf, start)
	return buf
}

// FuzzPeerStream feeds arbitrary bytes, as a peer sends them, to a
// connection served by HandleConn over loopback TCP (so through the hello
// exchange and turnConn.readFrames' own buffer, growing or not), then ends
// the stream: nothing may panic, and the service must close its end (the
// peer reads to EOF) whatever it was sent. The seeds are a valid hello
// followed by every frame kind, well and badly formed.
func FuzzPeerStream(f *testing.F) {
	s := newTestService(f)
	sid := s.byName["echo"].id
	hi := transport.AppendHello(nil, transport.Hello{Version: ProtocolVersion, Cluster: "dev", ID: "fuzz", Address: "fuzz"})
	after := func(frames ...[]byte) []byte {
		out := append([]byte(nil), hi...)
		for _, fr := range frames {
			out = append(out, fr...)
		}
		return out
	}
	backup := func(callID uint64, replica uint8, data string) []byte {
		return peerFrame(transport.KindBackup, callID, func(w *spi.Writer) {
			w.WriteUint32(sid)
			w.WriteUint16(1)
			w.WriteVarint(3)
			w.WriteUint8(replica)
			w.WriteUvarint(1)
			w.WriteUint64(7)
			w.WriteUvarint(1)
			w.WriteBytes(nil)
			w.WriteUvarint(0)
			w.WriteString("caller")
			(&echoOp{S: data}).WriteData(w)
		})
	}
	f.Add(hi)
	f.Add(hi[:len(hi)-3])
	f.Add(transport.AppendHello(nil, transport.Hello{Version: ProtocolVersion, Cluster: "other", ID: "x", Address: "y"}))
	f.Add(transport.AppendHello(nil, transport.Hello{Version: ProtocolVersion + 1, Cluster: "dev", ID: "x", Address: "y"}))
	f.Add(transport.AppendError(nil, 0, spi.ErrClusterMismatch))
	f.Add(after(requestFrame(1, sid, 1, 3, "hello"), requestFrame(2, sid, 9, 3, "unknown type"),
		requestFrame(3, 12345, 1, 3, "unknown service"), requestFrame(4, sid, 1, 99, "bad partition"),
		requestFrame(0, sid, 1, -1, "generic, no answer")))
	f.Add(after(peerFrame(transport.KindResponse, 5, func(w *spi.Writer) { writeValue(w, "no such call") })))
	f.Add(after(transport.AppendError(nil, 6, spi.ErrWrongTarget)))
	f.Add(after(backup(7, 1, "backup"), backup(8, 0, "replica 0"), backup(0, 7, "replica 7")))
	f.Add(after(peerFrame(transport.KindAnswer, 9, func(w *spi.Writer) { w.WriteString("fuzz"); writeValue(w, int64(1)) })))
	f.Add(after(hi))                                                                                               // a second hello
	f.Add(after([]byte{0, 0, 0, 0}))                                                                               // an empty frame
	f.Add(after([]byte{9, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0}))                                                    // an unknown kind
	f.Add(append(after(binary.LittleEndian.AppendUint32(nil, 0x00fffff0)), "abc"...))                              // a large frame, cut short
	f.Add(after(binary.LittleEndian.AppendUint32(make([]byte, 0, 4+(64<<10)+100), (64<<10)+100)[:4+(64<<10)+100])) // larger than the buffer
	f.Add(after(binary.LittleEndian.AppendUint32(nil, 1<<31)))                                                     // over MaxFrameSize
	f.Fuzz(func(t *testing.T, data []byte) {
		peer, _ := served(t, s)
		drained := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, peer)
			drained <- err
		}()
		peer.Write(data) // fails if the service has closed already
		peer.(*net.TCPConn).CloseWrite()
		testkit.Recv(t, drained, "the service to close the connection")
	})
}
