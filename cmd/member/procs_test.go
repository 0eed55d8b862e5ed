package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/services/counter"
	"github.com/partita-go/partita/spi"
)

// Helper modes of the test binary: a test starts the binary again with one
// of these variables set, and TestMain runs that mode instead of the
// tests.
const (
	// A member process that serves counter calls (testMember): the
	// variable holds its YAML config file, testSocketEnv the Unix socket
	// of its HTTP front.
	testMemberEnv = "PARTITA_TEST_MEMBER_CONFIG"
	testSocketEnv = "PARTITA_TEST_MEMBER_SOCKET"
	// One HTTP GET of the URL in the variable: the status on the first
	// line of stdout, then the body (to read a member's endpoints from
	// another network namespace).
	fetchEnv = "PARTITA_TEST_FETCH"
)

// helperMode runs the helper mode the environment names, if any.
func helperMode() (code int, ok bool) {
	if cfg := os.Getenv(testMemberEnv); cfg != "" {
		return serveTestMember(cfg, os.Getenv(testSocketEnv)), true
	}
	if url := os.Getenv(fetchEnv); url != "" {
		return fetch(url), true
	}
	return 0, false
}

func fetch(url string) int {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode)
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testMemberLine is what a test member prints on stdout once started.
var testMemberLine = regexp.MustCompile(`^test member (\S+) listening on (\S+) \((\d+) members\)$`)

// callTimeout bounds one counter call of a test member's front: well
// above the lone member's failure detection in the split tests (about 5 s),
// during which the calls sent to it wait, so that they all end in an
// answer (acknowledged or refused) rather than a timeout.
const callTimeout = 10 * time.Second

// serveTestMember runs a member with the config file cfgPath and an HTTP
// front on the Unix socket sock (no network: the front stays reachable
// from the test whatever the split), until SIGTERM or SIGINT:
//
//	POST /inc?name=N&amount=A  the counter's Inc: {"value":V}
//	GET  /get?name=N           the counter's Get: {"value":V}
//	GET  /members              {"members":K}, this member's view
//	anything else              the member's Handler (/metrics, /health/ready)
//
// A counter call refused by split-brain protection answers 409, another
// error 503, both {"error":...}.
func serveTestMember(cfgPath, sock string) int {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	node, err := nodeengine.New(cfg, nodeengine.WithLogger(log))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := node.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: frontHandler(node)}
	go srv.Serve(l)
	fmt.Printf("test member %s listening on %s (%d members)\n", node.ID(), node.Address(), len(node.Members()))
	<-ctx.Done()
	srv.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.Shutdown(sctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func frontHandler(node *nodeengine.Node) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", node.Handler())
	mux.HandleFunc("GET /members", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]int{"members": len(node.Members())})
	})
	call := func(w http.ResponseWriter, r *http.Request, f func(context.Context, *counter.Counter) (int64, error)) {
		ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
		defer cancel()
		obj, err := node.Proxies().Get(ctx, counter.ServiceName, r.FormValue("name"))
		var v int64
		if err == nil {
			v, err = f(ctx, obj.(*counter.Counter))
		}
		switch {
		case err == nil:
			json.NewEncoder(w).Encode(map[string]int64{"value": v})
		case errors.Is(err, spi.ErrSplitBrainProtection):
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		}
	}
	mux.HandleFunc("POST /inc", func(w http.ResponseWriter, r *http.Request) {
		amount, err := strconv.ParseInt(r.FormValue("amount"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		call(w, r, func(ctx context.Context, c *counter.Counter) (int64, error) { return c.Inc(ctx, amount) })
	})
	mux.HandleFunc("GET /get", func(w http.ResponseWriter, r *http.Request) {
		call(w, r, func(ctx context.Context, c *counter.Counter) (int64, error) { return c.Get(ctx) })
	})
	return mux
}

// outcome is what a counter call through a front came to.
type outcome int

const (
	acked     outcome = iota // answered: applied once
	refused                  // spi.ErrSplitBrainProtection: not applied
	uncertain                // any other error: applied or not
)

// front is the test's client of a test member's HTTP front.
type front struct {
	c *http.Client
}

func newFront(sock string) *front {
	return &front{c: &http.Client{
		Timeout: 2 * callTimeout,
		Transport: &http.Transport{
			DisableKeepAlives: true, // nothing left behind for goleak
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		},
	}}
}

// do sends one request and returns the status and body (status 0 and the
// error's text when the request failed).
func (f *front) do(method, path string) (int, string) {
	req, err := http.NewRequest(method, "http://member"+path, nil)
	if err != nil {
		panic(err)
	}
	resp, err := f.c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(b)
}

// counterCall runs a counter call and classifies its outcome.
func (f *front) counterCall(method, path string) (int64, outcome, string) {
	code, body := f.do(method, path)
	switch code {
	case http.StatusOK:
		var r struct{ Value int64 }
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			return 0, uncertain, fmt.Sprintf("bad answer %q: %v", body, err)
		}
		return r.Value, acked, ""
	case http.StatusConflict:
		return 0, refused, body
	}
	return 0, uncertain, fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
}

func (f *front) inc(name string, amount int64) (int64, outcome, string) {
	return f.counterCall("POST", fmt.Sprintf("/inc?name=%s&amount=%d", name, amount))
}

func (f *front) get(name string) (int64, outcome, string) {
	return f.counterCall("GET", "/get?name="+name)
}

func (f *front) members() (int, error) {
	code, body := f.do("GET", "/members")
	if code != http.StatusOK {
		return 0, fmt.Errorf("/members: %d %s", code, body)
	}
	var r struct{ Members int }
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return 0, err
	}
	return r.Members, nil
}

// metric returns the value of the sample named series (name, with its
// labels as exposed, e.g. `x_total{result="merged"}`) in a /metrics body,
// 0 when absent.
func metric(body, series string) float64 {
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return 0
}

// proc is a child process of a test: its stdout lines come on lines, its
// stderr is kept with each line's arrival time. t.Cleanup kills it and
// shows its stderr if the test failed.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr *lineLog
	lines  chan string
}

func startProc(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL // if the test process dies first
	cmd.WaitDelay = time.Second
	p := &proc{name: name, cmd: cmd, stderr: &lineLog{}, lines: make(chan string, 16)}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		go func() {
			for range p.lines {
			}
		}()
		<-drained
		cmd.Wait()
		if t.Failed() {
			t.Logf("--- stderr of %s ---\n%s", name, p.stderr.String())
		}
	})
	return p
}

// waitLine waits for the next stdout line, which must match re.
func (p *proc) waitLine(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case line, ok := <-p.lines:
		if !ok {
			t.Fatalf("%s: stdout closed before a line matching %v; stderr:\n%s", p.name, re, p.stderr.String())
		}
		m := re.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("%s: stdout line %q, want one matching %v", p.name, line, re)
		}
		return m
	case <-timer.C:
		t.Fatalf("%s: no stdout line within %v; stderr:\n%s", p.name, timeout, p.stderr.String())
	}
	return nil
}

// lineLog is an io.Writer that keeps the lines written with the time each
// arrived.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []logLine
}

type logLine struct {
	at   time.Time
	text string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, logLine{now, string(l.partial[:i])})
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sb strings.Builder
	for _, line := range l.lines {
		sb.WriteString(line.text)
		sb.WriteByte('\n')
	}
	sb.Write(l.partial)
	return sb.String()
}

// find returns the lines that contain every one of substrs.
func (l *lineLog) find(substrs ...string) []logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logLine
next:
	for _, line := range l.lines {
		for _, s := range substrs {
			if !strings.Contains(line.text, s) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}
