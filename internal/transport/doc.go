// Package transport is the member-to-member protocol: framing, the hello
// handshake, one connection per pair of members with its reader and
// writer goroutines, and the registry that dials each member once.
//
// Layers. The operation service (package operation) is the Handler of a
// Stream: it gives each connection its state (Handler.Opened), handles
// every frame after the hello (Handler.Frame), and fails the calls that
// waited on a connection when it closes (Handler.Closed). It sends with
// Transport.Send, which writes a frame's header and lets the caller write
// its payload straight into the connection's output buffer. What the
// payloads mean (requests, backups, responses, errors, forwarded answers)
// is the operation service's; the transport knows only the frame kinds,
// the error frame's codes and the hello.
//
// Implementations. Stream runs over any stream network: loopback or real
// TCP (the node engine dials with a protocol selector byte in front, see
// nodeengine), or Network, the in-memory twin of tests. Faults wraps a
// Stream to drop, delay, hold (and so reorder) frames or cut connections
// by rule; the operation service installs it when given a Hook (the
// clustertest kit's AddFault). Pause stops a Stream's readers and
// writers for a test's freeze of a member. An outside client and TLS will plug in
// here: TLS as a network (a Dial and an accept that wrap net.Conn), the
// client as another Handler with its own hello.
//
// Goroutines. Each connection has one reader, which calls Handler.Frame
// for its frames one at a time, and one writer, which writes what Send
// queued, many frames per syscall. Send never blocks (it fails with
// spi.ErrOverloaded past 64 MiB queued); Conn dials, at most once per
// member however many callers wait. Tick, called by the operation
// service's coarse clock, cuts connections on which a frame has been
// partly received for longer than Config.FrameBodyTimeout and wakes
// readers that missed a close. On Linux and other unix systems a TCP
// connection's reads and writes take turns on the socket (turns_unix.go).
//
// Bad input closes only the connection it came on: a frame over
// MaxFrameSize, a short or unknown header, a second hello, or a body that
// stalls; a peer of another cluster or protocol version is refused during
// the hello with spi.ErrClusterMismatch naming both sides' values. A frame
// buffer grows only as its bytes arrive.
package transport
