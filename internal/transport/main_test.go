package transport

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/partita-go/partita/spi"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// nopHandler takes every frame and does nothing.
type nopHandler struct{}

func (nopHandler) Opened(*Conn)                                 {}
func (nopHandler) Frame(*Conn, Header, *spi.Reader, bool) error { return nil }
func (nopHandler) Closed(*Conn, error)                          {}
