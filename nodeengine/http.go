package nodeengine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/partita-go/partita/nodeengine/debugui"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// viewTimeout bounds how long /debug/cluster waits for the other members.
const viewTimeout = 2 * time.Second

// Handler returns the member's HTTP endpoints, for embedding in a server of
// your own (Start serves them on metrics.address when it is set):
//
//	/metrics        Prometheus metrics of this member
//	/health/live    200 while the process runs
//	/health/ready   200 when Ready, else 503 with {"ready":false,"reason":...}
//	/debug/cluster  the cluster view: HTML for browsers, JSON with
//	                ?format=json or an Accept header without text/html
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{Registry: n.registry}))
	mux.HandleFunc("GET /health/live", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"live": true})
	})
	mux.HandleFunc("GET /health/ready", func(w http.ResponseWriter, r *http.Request) {
		ready, reason := n.Ready()
		if !ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": reason})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ready": true})
	})
	mux.HandleFunc("GET /debug/cluster", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), viewTimeout)
		defer cancel()
		defer context.AfterFunc(n.run.ctx, cancel)()
		v := n.debugView(ctx)
		if wantsHTML(r) {
			w.Header().Set("Content-Type", debugui.ContentType)
			w.Header().Set("Cache-Control", "no-store")
			if err := debugui.Render(w, v); err != nil {
				n.log.Warn("rendering /debug/cluster", "error", err)
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	return mux
}

// wantsHTML: ?format=html|json decides; else a browser's Accept header.
func wantsHTML(r *http.Request) bool {
	switch r.URL.Query().Get("format") {
	case "json":
		return false
	case "html":
		return true
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// serveHTTP listens on metrics.address (trying the next ports when
// network.port-auto-increment is on and the port is taken, so that several
// members on one host each get one) and serves Handler until the node
// stops.
func (n *Node) serveHTTP() error {
	addr := n.cfg.Metrics.Address
	if addr == "" {
		return nil
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("partita: metrics.address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("partita: metrics.address %q: bad port", addr)
	}
	tries := 1
	if n.cfg.Network.PortAutoIncrement && port != 0 {
		tries = max(n.cfg.Network.PortCount, 1)
	}
	var ln net.Listener
	for i := 0; i < tries; i++ {
		ln, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port+i)))
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("partita: metrics endpoint on %s: %w", addr, err)
	}
	n.httpAddr = ln.Addr().String()
	n.http = &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(n.log.With("component", "http").Handler(), slog.LevelWarn)}
	n.httpDone = make(chan struct{})
	go func() {
		defer close(n.httpDone)
		if err := n.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("metrics endpoint stopped", "address", n.httpAddr, "error", err)
		}
	}()
	n.log.Info("metrics and health endpoints", "address", "http://"+n.httpAddr,
		"paths", "/metrics /health/live /health/ready /debug/cluster")
	return nil
}

// stopHTTP closes the endpoint and waits until its handlers returned.
func (n *Node) stopHTTP() {
	if n.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.http.Shutdown(ctx); err != nil {
		n.http.Close()
	}
	<-n.httpDone
}

// MetricsAddress returns the host:port the metrics and health endpoints
// listen on ("" when metrics.address is not set).
func (n *Node) MetricsAddress() string { return n.httpAddr }
