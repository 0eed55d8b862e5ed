package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/partita-go/partita/nodeengine/clustertest"
	"go.uber.org/goleak"
)

// TestMain runs the tests, or, in a process that a test started with
// the environment of one of the helper modes (procs_test.go), that mode.
func TestMain(m *testing.M) {
	if code, ok := helperMode(); ok {
		os.Exit(code)
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: Errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Every flag or configuration error is reported on stderr with the
// "partita: " prefix and exit status 2, before any member starts.
func TestRunRejectsBadInput(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	unknownKey := writeFile(t, "unknown.yaml", "cluster:\n  name: test\nnetwork:\n  bnd: 127.0.0.1:0\n")
	badValue := writeFile(t, "bad.yaml", "partitions:\n  count: 0\n")
	fileBind := writeFile(t, "bind.yaml", "network:\n  bind: 127.0.0.1:0\n")

	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		{"unknown flag", []string{"-nosuch"},
			[]string{"partita: flag provided but not defined: -nosuch", "Usage: member"}},
		{"bad log level", []string{"-log-level", "loud"},
			[]string{`partita: invalid value "loud" for flag -log-level: want debug, info, warn or error`}},
		{"bad log format", []string{"-log-format", "xml"},
			[]string{`partita: invalid value "xml" for flag -log-format: want text or json`}},
		{"positional argument", []string{"extra"},
			[]string{`partita: unexpected argument "extra"`}},
		{"missing config file", []string{"-config", missing},
			[]string{"partita: config: open " + missing, "no such file"}},
		{"unknown key", []string{"-config", unknownKey},
			[]string{"partita: " + unknownKey + `:4: unknown key "bnd" in network`}},
		{"bad value in file", []string{"-config", badValue},
			[]string{"partita: " + badValue + ":2: partitions.count: must be 1..65535, got 0"}},
		{"bad bind port", []string{"-bind", "127.0.0.1:99999"},
			[]string{`partita: flag -bind: network.bind: bad address "127.0.0.1:99999": port must be 1..65535`}},
		{"bind without port", []string{"-bind", "localhost"},
			[]string{`partita: flag -bind: network.bind: bad address "localhost": want host:port`}},
		{"bad bind over a file", []string{"-config", fileBind, "-bind", "nohost"},
			[]string{`partita: flag -bind: network.bind: bad address "nohost"`}},
		{"bad join member", []string{"-join", "127.0.0.1:5701, nohost"},
			[]string{`partita: flag -join: network.join.members[1]: bad address "nohost": want host:port`}},
		{"every problem reported", []string{"-bind", "x", "-join", "y"},
			[]string{`partita: flag -bind: network.bind: bad address "x"`, `partita: flag -join: network.join.members[0]: bad address "y"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit status %d, want %d", code, exitUsage)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout not empty: %q", stdout.String())
			}
		})
	}
}

// A member that cannot start (its port is taken and auto-increment is
// off) exits with status 1 and the engine's error.
func TestRunStartFailure(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := writeFile(t, "taken.yaml", "network:\n  bind: "+l.Addr().String()+"\n  port-auto-increment: false\n"+
		"  join:\n    multicast:\n      enabled: false\nmetrics:\n  address: 127.0.0.1:0\n")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-config", cfg, "-log-level", "error"}, &stdout, &stderr); code != exitStart {
		t.Errorf("exit status %d, want %d", code, exitStart)
	}
	want := "partita: bind " + l.Addr().String() + ": "
	inUse := runtime.GOOS == "windows" || strings.Contains(stderr.String(), "address already in use")
	if !strings.HasPrefix(stderr.String(), want) || !inUse {
		t.Errorf("stderr %q, want it to start with %q and say the address is in use", stderr.String(), want)
	}
	if stdout.Len() > 0 {
		t.Errorf("stdout not empty: %q", stdout.String())
	}
}

func TestRunHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-h"}, &stdout, &stderr); code != exitOK {
		t.Errorf("exit status %d, want %d", code, exitOK)
	}
	for _, f := range []string{"-config", "-bind", "-join", "-log-level", "-log-format"} {
		if !strings.Contains(stderr.String(), f) {
			t.Errorf("usage lacks %s:\n%s", f, stderr.String())
		}
	}
}

// The flags override the file's keys and leave the others alone.
func TestFlagsOverrideConfig(t *testing.T) {
	file := writeFile(t, "c.yaml", "cluster:\n  name: prod\nnetwork:\n  bind: 10.0.0.1:6000\n"+
		"  join:\n    members: [10.0.0.2:6000]\n    multicast:\n      enabled: true\n")
	tests := []struct {
		name      string
		args      []string
		bind      string
		members   []string
		multicast bool
	}{
		{"file only", []string{"-config", file}, "10.0.0.1:6000", []string{"10.0.0.2:6000"}, true},
		{"bind", []string{"-config", file, "-bind", "127.0.0.1:0"}, "127.0.0.1:0", []string{"10.0.0.2:6000"}, true},
		{"join", []string{"-config", file, "-join", "a:1, b:2"}, "10.0.0.1:6000", []string{"a:1", "b:2"}, false},
		{"empty join", []string{"-config", file, "-join", ""}, "10.0.0.1:6000", []string{}, false},
		{"default", nil, "127.0.0.1:5701", []string{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := parseFlags(tc.args, &stderr)
			if err != nil {
				t.Fatalf("parseFlags: %v\n%s", err, stderr.String())
			}
			cfg, err := o.config()
			if err != nil {
				t.Fatal(err)
			}
			j := cfg.Network.Join
			if cfg.Network.Bind != tc.bind || !slices.Equal(j.Members, tc.members) || j.Multicast.Enabled != tc.multicast {
				t.Errorf("bind %q members %q multicast %v; want %q %q %v",
					cfg.Network.Bind, j.Members, j.Multicast.Enabled, tc.bind, tc.members, tc.multicast)
			}
			if tc.args != nil && cfg.Cluster.Name != "prod" {
				t.Errorf("cluster name %q, want the file's %q", cfg.Cluster.Name, "prod")
			}
		})
	}
}

var (
	listeningLine = regexp.MustCompile(`^partita member (\S+) listening on (\S+) \(cluster "([^"]*)", (\d+) members\)$`)
	metricsLine   = regexp.MustCompile(`^metrics, health and cluster view on (http://\S+) `)
)

// The binary starts, prints its address, listens there, and stops cleanly
// on SIGINT and SIGTERM.
func TestMemberProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the member binary")
	}
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGINT and SIGTERM")
	}
	bin := buildMember(t)
	// Port 0 and no multicast: the test never touches a shared port or
	// sends multicast in the host's network namespace.
	cfg := writeFile(t, "member.yaml", "cluster:\n  name: member-test\nnetwork:\n  bind: 127.0.0.1:0\n"+
		"  join:\n    multicast:\n      enabled: false\n")

	tests := []struct {
		name string
		sig  os.Signal
		args []string
	}{
		{"SIGINT text", os.Interrupt, nil},
		{"SIGTERM json", syscall.SIGTERM, []string{"-log-format", "json"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stderr := runMember(t, bin, tc.sig, append([]string{"-config", cfg}, tc.args...)...)
			for _, w := range []string{"CounterService.init", "CounterService.shutdown", "member stopped"} {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if slices.Contains(tc.args, "json") {
				for line := range strings.Lines(stderr) {
					var rec map[string]any
					if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["msg"] == nil {
						t.Errorf("stderr line is not a JSON log record (%v): %q", err, line)
					}
				}
			}
		})
	}
}

// runMember runs the binary until it prints its address, dials that
// address, sends sig and returns stderr once the process exited with
// status 0.
func runMember(t *testing.T, bin string, sig os.Signal, args ...string) string {
	t.Helper()
	// The context kills the process if the test overruns; every wait
	// below is bounded by it.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 5 * time.Second
	var stderr clustertest.LogBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// Whatever happens, reap the process and the reader before returning.
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			for range lines {
			}
			cmd.Wait()
		}
	}()

	startDeadline := time.NewTimer(30 * time.Second)
	defer startDeadline.Stop()
	var m []string
	for m == nil {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("stdout closed before the listening line; stderr:\n%s", stderr.String())
			}
			m = listeningLine.FindStringSubmatch(line)
			if m == nil {
				t.Errorf("unexpected stdout line %q", line)
			}
		case <-startDeadline.C:
			t.Fatalf("no listening line within 30s; stderr:\n%s", stderr.String())
		}
	}
	id, addr, cluster, members := m[1], m[2], m[3], m[4]
	if id == "" || cluster != "member-test" || members != "1" {
		t.Errorf("listening line: id %q, cluster %q, %s members; want an id, member-test, 1", id, cluster, members)
	}
	if _, port, err := net.SplitHostPort(addr); err != nil {
		t.Errorf("listening address %q: %v", addr, err)
	} else if p, err := strconv.Atoi(port); err != nil || p <= 0 {
		t.Errorf("listening address %q: want the bound port, not %q", addr, port)
	}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial the printed address: %v", err)
	}
	conn.Close()

	// The HTTP endpoint: its address on the next line, ready, and the
	// member's metrics.
	var base string
	select {
	case line := <-lines:
		if mm := metricsLine.FindStringSubmatch(line); mm != nil {
			base = mm[1]
		} else {
			t.Errorf("want the metrics line, got %q", line)
		}
	case <-startDeadline.C:
		t.Fatalf("no metrics line within 30s; stderr:\n%s", stderr.String())
	}
	if base != "" {
		// Ready once its first partition table is in place.
		clustertest.Eventually(t, 10*time.Second, func() error {
			if code, body := httpGet(t, base+"/health/ready"); code != 200 || !strings.Contains(body, `"ready": true`) {
				return fmt.Errorf("/health/ready: %d %s", code, body)
			}
			return nil
		})
		if _, body := httpGet(t, base+"/metrics"); !strings.Contains(body, "\npartita_partition_owned 271\n") {
			t.Errorf("/metrics lacks partita_partition_owned 271:\n%.2000s", body)
		}
	}

	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	for line := range lines { // ends when the process exits (or is killed)
		t.Errorf("unexpected stdout line %q", line)
	}
	exited = true
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("member did not exit within the deadline after %v; stderr:\n%s", sig, stderr.String())
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("member exited with status %d after %v, want 0; stderr:\n%s", ee.ExitCode(), sig, stderr.String())
		}
		t.Fatal(err)
	}
	return stderr.String()
}

// memberBinEnv names, in a test process started by another (netnstest's
// child), the member binary that the parent built.
const memberBinEnv = "PARTITA_TEST_MEMBER_BIN"

var (
	buildOnce sync.Once
	buildDir  string // removed by TestMain
	buildBin  string
	buildErr  string
)

// buildMember returns the member binary, built into a temporary directory
// once per test process (with the race detector when the test runs with
// it), or the parent process's (memberBinEnv).
func buildMember(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv(memberBinEnv); bin != "" {
		return bin
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if runtime.GOOS == "windows" {
		goTool += ".exe"
	}
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Skip("no go command to build the member binary")
		}
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "partita-member-test-")
		if err != nil {
			buildErr = err.Error()
			return
		}
		buildDir = dir
		bin := filepath.Join(dir, "member")
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, append(args, ".")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Sprintf("go build: %v\n%s", err, out)
			return
		}
		buildBin = bin
	})
	if buildBin == "" {
		t.Fatal(buildErr)
	}
	return buildBin
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// -metrics overrides metrics.address ("" disables the endpoint), and a bad
// value is blamed on the flag.
func TestMetricsFlag(t *testing.T) {
	for _, tc := range []struct{ arg, want string }{{"127.0.0.1:0", "127.0.0.1:0"}, {"", ""}} {
		var stderr bytes.Buffer
		o, err := parseFlags([]string{"-metrics", tc.arg}, &stderr)
		if err != nil {
			t.Fatal(err, stderr.String())
		}
		cfg, err := o.config()
		if err != nil {
			t.Fatalf("-metrics %q: %v", tc.arg, err)
		}
		if cfg.Metrics.Address != tc.want {
			t.Errorf("-metrics %q: address %q", tc.arg, cfg.Metrics.Address)
		}
	}
	var stderr bytes.Buffer
	o, err := parseFlags([]string{"-metrics", "nohost"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.config(); err == nil || !strings.Contains(err.Error(), "flag -metrics") {
		t.Errorf("-metrics nohost: %v, want an error naming the flag", err)
	}
}
