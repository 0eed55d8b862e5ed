//go:build !unix

package transport

import "net"

// takeTurns is a no-op where the socket's syscalls are not reachable the
// same way; see turns_unix.go.
func takeTurns(nc net.Conn) net.Conn { return nc }
