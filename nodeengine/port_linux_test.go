//go:build linux

package nodeengine_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/nodeengine/clustertest"
)

// emfileChildEnv makes TestAcceptSurvivesFileDescriptorExhaustion run as
// the child: the member whose file descriptors run out.
const emfileChildEnv = "PARTITA_TEST_EMFILE_CHILD"

// TestAcceptSurvivesFileDescriptorExhaustion starts a member in a child
// process with few file descriptors, fills them with connections, and
// checks that the member reports it is not ready while it cannot accept,
// then accepts again (a second member joins it) once they are closed.
func TestAcceptSurvivesFileDescriptorExhaustion(t *testing.T) {
	if os.Getenv(emfileChildEnv) == "1" {
		emfileChild(t)
		return
	}
	if testing.Short() {
		t.Skip("starts a child process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestAcceptSurvivesFileDescriptorExhaustion$", "-test.v")
	cmd.Env = append(os.Environ(), emfileChildEnv+"=1")
	var stderr clustertest.LogBuffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var childOut clustertest.LogBuffer
	exited := false
	defer func() {
		if !exited {
			stdin.Close()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("child stdout:\n%s\nchild stderr:\n%s", childOut.String(), stderr.String())
		}
	}()

	// The child prints its member and HTTP addresses once it is ready and
	// its file descriptor limit is low.
	lines := bufio.NewScanner(stdout)
	var addr, httpAddr string
	for lines.Scan() {
		fmt.Fprintln(&childOut, lines.Text())
		if f := strings.Fields(lines.Text()); len(f) == 3 && f[0] == "CHILD" {
			addr, httpAddr = f[1], f[2]
			break
		}
	}
	if addr == "" {
		t.Fatalf("child printed no addresses: %v", lines.Err())
	}
	go io.Copy(&childOut, stdout)

	// One keep-alive connection to the health endpoint, opened now: the
	// HTTP server cannot accept new ones while the descriptors are gone.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	ready := func() (int, string, error) {
		resp, err := client.Get("http://" + httpAddr + "/health/ready")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		var body struct{ Reason string }
		err = json.NewDecoder(resp.Body).Decode(&body)
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, body.Reason, err
	}
	if code, reason, err := ready(); err != nil || code != http.StatusOK {
		t.Fatalf("before: /health/ready = %d %q, %v; want 200", code, reason, err)
	}

	// Fill the child's descriptors: connections that never send a byte.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 200; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break // the backlog is full
		}
		conns = append(conns, c)
	}
	clustertest.Eventually(t, 4*time.Second, func() error {
		code, reason, err := ready()
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || reason != "cannot accept connections: too many open files" {
			return fmt.Errorf("/health/ready = %d %q; want 503 cannot accept connections: too many open files", code, reason)
		}
		return nil
	})
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	clustertest.Eventually(t, 10*time.Second, func() error {
		if code, reason, err := ready(); err != nil || code != http.StatusOK {
			return fmt.Errorf("/health/ready = %d %q, %v; want 200", code, reason, err)
		}
		return nil
	})

	// The member accepts again: a second member joins it.
	n, err := nodeengine.New(loopbackConfig(addr), nodeengine.WithLogger(slog.New(slog.NewTextHandler(&stderr, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer n.Terminate()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if k := len(n.Members()); k != 2 {
			return fmt.Errorf("the second member sees %d members, want 2", k)
		}
		return nil
	})
	n.Terminate()

	stdin.Close()
	exited = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	if !strings.Contains(stderr.String(), "accepting connections again") {
		t.Errorf("the child did not log that it accepts again")
	}
}

// emfileChild runs the member, lowers its file descriptor limit to a few
// more than it uses, prints its addresses and runs until stdin closes.
func emfileChild(t *testing.T) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startLoopback(t, log)
	defer n.Terminate()
	clustertest.Eventually(t, 10*time.Second, func() error {
		if ok, reason := n.Ready(); !ok {
			return fmt.Errorf("not ready: %s", reason)
		}
		return nil
	})
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(len(fds) + 16)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	fmt.Printf("CHILD %s %s\n", n.Address(), n.MetricsAddress())

	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the parent test did not finish within 30 s")
	}
}
