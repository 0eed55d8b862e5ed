// Package netnstest runs a test inside a private network namespace, where
// it may send multicast without any of it reaching the host's network, and
// links a second namespace to it (Peer), where the test's processes may be
// cut off from each other by a real network split.
package netnstest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// childEnv holds, in the re-executed test binary, the name of the test
// that runs inside the namespace.
const childEnv = "PARTITA_NETNS_CHILD"

// Run makes test name (the caller, a top-level test) run inside a fresh
// network namespace: in the parent it re-executes the test binary under
// `unshare --net`, running only that test, fails t unless the child passes
// it and returns false; in the child it returns true at once and the test
// does its work. It skips t where no namespace can be made (not root, no
// unshare or ip). timeout bounds the child.
func Run(t *testing.T, name string, timeout time.Duration) (child bool) {
	t.Helper()
	if os.Getenv(childEnv) == name {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace with unshare --net")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("unshare not found: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("ip not found: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout+5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, unshare, "--net", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: unshare --net: %v: %s", err, bytes.TrimSpace(out))
	}
	cmd := exec.CommandContext(ctx, unshare, "--net", self,
		"-test.run=^"+name+"$", "-test.v", "-test.count=1", "-test.timeout="+timeout.String())
	cmd.Env = append(os.Environ(), childEnv+"="+name)
	cmd.WaitDelay = time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start).Round(time.Millisecond)
	if err != nil {
		t.Fatalf("test in network namespace failed after %v: %v\n--- child output ---\n%s", elapsed, err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+name)) || bytes.Contains(out, []byte("--- SKIP")) {
		t.Fatalf("child did not run the test to a pass (after %v):\n--- child output ---\n%s", elapsed, out)
	}
	if testing.Verbose() {
		t.Logf("child output (%v):\n%s", elapsed, out)
	}
	return false
}

// MulticastLoopback brings the namespace's loopback interface up with
// multicast and a route for 224.0.0.0/4, and returns it. Call it in the
// child only.
func MulticastLoopback(t *testing.T) *net.Interface {
	t.Helper()
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", "lo", "multicast", "on"},
		{"route", "add", "224.0.0.0/4", "dev", "lo"},
	} {
		if out, err := exec.CommandContext(t.Context(), "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Flags&net.FlagMulticast == 0 || lo.Flags&net.FlagUp == 0 {
		t.Fatalf("lo is not up with multicast after setup: %v", lo.Flags)
	}
	return lo
}
