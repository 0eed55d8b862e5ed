package netnstest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Addresses of the two sides of a Peer link: this namespace's addresses
// are LocalNet+"1", LocalNet+"2", ...; the peer's PeerNet+"1", ... Both
// sides are one /16 on the link, so that either reaches the other
// directly; Cut tells them apart by their /24.
const (
	LocalNet = "10.77.1."
	PeerNet  = "10.77.2."
)

// Peer is a second network namespace linked to the test's own by a veth
// pair: processes on the two sides talk over the link, each side from
// its own addresses, so that Cut splits them (both ways, TCP and UDP,
// connections made before included) the way a real network split does,
// whatever addresses the processes bind or dial from. One namespace with
// several loopback addresses cannot: a process that dials without binding
// sends from the address the route picks (127.0.0.1), not from its own,
// so a rule on addresses does not cut it off.
//
// Use it in the child of Run only: it changes the namespace it runs in.
type Peer struct {
	holder *exec.Cmd
	stdin  io.WriteCloser
	ns     string // /proc/<holder>/ns/net
	local  int
	peer   int
}

// NewPeer makes the peer namespace, links it to this one and brings up
// local addresses here and peer addresses there (LocalNet and PeerNet).
// The namespace lives as long as the test (t.Cleanup ends it).
func NewPeer(t *testing.T, local, peer int) *Peer {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Skipf("cannot read this process's network namespace: %v", err)
	}
	// The holder keeps the namespace alive: cat in a namespace of its
	// own, until its stdin closes (or this process dies: Pdeathsig).
	holder := exec.Command("unshare", "--net", "cat")
	holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatalf("start the peer namespace's holder: %v", err)
	}
	p := &Peer{holder: holder, stdin: stdin, ns: fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid), local: local, peer: peer}
	t.Cleanup(func() {
		p.stdin.Close()
		p.holder.Process.Kill()
		p.holder.Wait()
	})
	// Until unshare has made the new namespace, the holder is in this one.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ns, err := os.Readlink(p.ns)
		if err == nil && ns != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the peer namespace's holder did not leave this namespace within 10s (%s: %v)", p.ns, err)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	here := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "pt-local", "type", "veth", "peer", "name", "pt-peer", "netns", p.ns},
	}
	for i := 1; i <= local; i++ {
		here = append(here, []string{"addr", "add", fmt.Sprintf("%s%d/16", LocalNet, i), "dev", "pt-local"})
	}
	here = append(here, []string{"link", "set", "pt-local", "up"})
	for _, args := range here {
		p.ip(t, false, args...)
	}
	there := [][]string{{"link", "set", "lo", "up"}}
	for i := 1; i <= peer; i++ {
		there = append(there, []string{"addr", "add", fmt.Sprintf("%s%d/16", PeerNet, i), "dev", "pt-peer"})
	}
	there = append(there, []string{"link", "set", "pt-peer", "up"})
	for _, args := range there {
		p.ip(t, true, args...)
	}
	return p
}

// ip runs ip with args here or in the peer namespace, failing t on error.
func (p *Peer) ip(t *testing.T, inPeer bool, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	if inPeer {
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + p.ns, "ip"}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, "ip", args...)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		where := "here"
		if inPeer {
			where = "in the peer namespace"
		}
		t.Fatalf("ip %s (%s): %v: %s", strings.Join(args, " "), where, err, out)
	}
}

// LocalAddrs returns this side's addresses.
func (p *Peer) LocalAddrs() []string { return addrs(LocalNet, p.local) }

// PeerAddrs returns the peer's addresses.
func (p *Peer) PeerAddrs() []string { return addrs(PeerNet, p.peer) }

func addrs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i+1)
	}
	return out
}

// Command returns a command that runs name in the peer namespace (through
// nsenter, which execs it: the command's process is name's). It is
// killed with SIGKILL if the test process dies.
func (p *Peer) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + p.ns, "--", name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Cut splits the two sides: from then on every packet from one to the
// other is dropped at its sender (sendto and connect fail at once with
// EINVAL), TCP and UDP, on connections old and new. Each side still
// reaches its own addresses.
func (p *Peer) Cut(t *testing.T) {
	t.Helper()
	p.ip(t, false, "rule", "add", "pref", "10", "to", PeerNet+"0/24", "blackhole")
	p.ip(t, true, "rule", "add", "pref", "10", "to", LocalNet+"0/24", "blackhole")
}

// Heal undoes Cut.
func (p *Peer) Heal(t *testing.T) {
	t.Helper()
	p.ip(t, false, "rule", "del", "pref", "10")
	p.ip(t, true, "rule", "del", "pref", "10")
}
