//go:build unix

package transport

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

// Stress: random frame sizes (empty, small, > usual buffer, > the 1 MiB
// shrink threshold), random write splits, random ErrWouldWait, and a
// clock poking every 200µs. Every frame is handed over once, whole and in
// order, and the final FIN ends the loop with io.EOF. (The sleeps are
// jitter that varies the interleavings, not synchronisation: every wait
// is for a frame or the end, bounded by wait.)
func TestReadFramesStress(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		var bodies [][]byte
		var stream []byte
		for i := 0; i < 400; i++ {
			n := r.IntN(200)
			switch r.IntN(40) {
			case 0:
				n = 0
			case 1:
				n = frameBufSize - 4 + r.IntN(9)
			case 2:
				n = frameBufSize + r.IntN(4*frameBufSize)
			case 3:
				n = (1 << 20) + r.IntN(1<<20)
			}
			body := make([]byte, n)
			for j := range body {
				body[j] = byte(r.Uint32())
			}
			bodies = append(bodies, body)
			stream = append(stream, frameOf(body)...)
		}
		a, b := turnPair(t)
		tc := a.(*turnConn)
		got := make(chan []byte, len(bodies)+1)
		done := make(chan error, 1)
		hr := rand.New(rand.NewPCG(seed, 7))
		go func() {
			done <- tc.readFrames(stream[:min(len(stream), 3000)], func(body []byte, wait bool) error {
				if !wait && hr.IntN(8) == 0 {
					return ErrWouldWait
				}
				if hr.IntN(50) == 0 {
					time.Sleep(time.Duration(hr.IntN(300)) * time.Microsecond)
				}
				got <- bytes.Clone(body)
				return nil
			})
		}()
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Microsecond):
					tc.pokeIfStuck()
				}
			}
		}()
		rest := stream[min(len(stream), 3000):]
		wr := rand.New(rand.NewPCG(seed, 3))
		go func() {
			for len(rest) > 0 {
				n := min(len(rest), 1+wr.IntN(150<<10))
				if _, err := b.Write(rest[:n]); err != nil {
					return
				}
				rest = rest[n:]
				if wr.IntN(10) == 0 {
					time.Sleep(time.Duration(wr.IntN(500)) * time.Microsecond)
				}
			}
			b.Close()
		}()
		for i, want := range bodies {
			g := wait(t, got, "a frame")
			if !bytes.Equal(g, want) {
				t.Fatalf("seed %d frame %d: got %d bytes, want %d", seed, i, len(g), len(want))
			}
		}
		if err := wait(t, done, "readFrames"); err != io.EOF {
			t.Fatalf("seed %d: readFrames returned %v, want io.EOF", seed, err)
		}
		close(stop)
		if len(got) != 0 {
			t.Fatalf("seed %d: extra frames", seed)
		}
		a.Close()
	}
}
