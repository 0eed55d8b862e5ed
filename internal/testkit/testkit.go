// Package testkit holds the waiting helpers of the engine's own unit
// tests, for the packages below nodeengine/clustertest (which has the
// public Eventually, and which they cannot import).
package testkit

import (
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// Eventually polls cond until it holds, failing t after 10 s.
func Eventually(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// WaitParked waits until some goroutine's stack holds every one of
// frames (a read or write of the test waiting in the runtime's poller,
// say).
func WaitParked(t testing.TB, frames ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	Eventually(t, func() bool {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if !slices.ContainsFunc(frames, func(f string) bool { return !strings.Contains(g, f) }) {
				return true
			}
		}
		return false
	})
}

// Recv returns what ch delivers, failing t if nothing comes within 30 s.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}
