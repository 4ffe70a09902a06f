package exporter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// shutdownTimeout bounds how long Serve waits for in-flight requests once its
// context is done.
const shutdownTimeout = 5 * time.Second

// index is the body of "/"; pprofIndex is added when pprof is on.
const (
	index = `sluice agent
/metrics       Prometheus metrics
/healthz       200 while the process serves
/readyz        200 when the agent admits requests, 503 and the reason otherwise
`
	pprofIndex = `/debug/pprof/  Go profiling ([agent] pprof = true)
`
)

// Handler returns the agent's HTTP mux: /metrics, /healthz, /readyz, a text
// index at /, and /debug/pprof/ only when Options.Pprof is set. Any other
// path is 404.
func (e *Exporter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{
		// A collector that fails is counted in
		// promhttp_metric_handler_errors_total and the rest is still served.
		ErrorHandling:     promhttp.ContinueOnError,
		Registry:          e.reg,
		EnableOpenMetrics: false,
	}))
	body := index
	if e.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		body += pprofIndex
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("/readyz", e.serveReady)
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, body)
	})
	return mux
}

func (e *Exporter) serveReady(w http.ResponseWriter, _ *http.Request) {
	if e.ready != nil {
		if err := e.ready(); err != nil {
			writeText(w, http.StatusServiceUnavailable, err.Error()+"\n")
			return
		}
	}
	writeText(w, http.StatusOK, "ok\n")
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}

// Listen opens the TCP listener for the metrics endpoint on addr
// ("127.0.0.1:9780"; port 0 picks a free port). Its errors name the
// metrics_addr setting and say what to do.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	var hint string
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		hint = "address in use"
	case errors.Is(err, syscall.EACCES):
		hint = "permission denied"
	default:
		hint = err.Error()
	}
	return nil, &listenError{addr: addr, hint: hint, err: err}
}

// Open is Listen for sluiced: it opens addr ([agent] metrics_addr), logs
// where the metrics listen ("metrics listening", on log as given) and warns
// when that is beyond loopback (ExposureWarning). Serve it with Serve.
func (e *Exporter) Open(addr string, log *zap.Logger) (net.Listener, error) {
	if log == nil {
		log = zap.NewNop()
	}
	ln, err := Listen(addr)
	if err != nil {
		return nil, err
	}
	log.Info("metrics listening", zap.String("addr", ln.Addr().String()), zap.Bool("pprof", e.pprof))
	if w := ExposureWarning(addr, ln.Addr(), e.pprof); w != "" {
		log.Warn(w, zap.String("key", "[agent] metrics_addr"), zap.String("value", addr))
	}
	return ln, nil
}

// ExposureWarning returns a warning for a metrics listener reachable from
// other hosts (addr is the listener's address, after Listen), or "" when it
// listens on loopback only. metricsAddr is the configured value, named in the
// message; pprof says whether /debug/pprof/ is served there too.
func ExposureWarning(metricsAddr string, addr net.Addr, pprof bool) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsLoopback() {
		return ""
	}
	what := "/metrics (command counts, limit names, queue sizes), /healthz and /readyz"
	if pprof {
		what = "/debug/pprof/ (profiles, goroutine stacks and the command line of a root process), " + what
	}
	return fmt.Sprintf("[agent] metrics_addr = %q listens on %s, beyond loopback: anyone who can reach it can read %s without authentication; "+
		"set metrics_addr to \"127.0.0.1:9780\" and scrape it locally or through an authenticating proxy, or firewall the port", metricsAddr, addr, what)
}

// listenError reports why the metrics listener could not be opened; it wraps
// the net error so callers can match syscall errors.
type listenError struct {
	addr, hint string
	err        error
}

func (e *listenError) Error() string {
	return fmt.Sprintf("metrics_addr %q: %s; set [agent] metrics_addr to a free port or \"off\"", e.addr, e.hint)
}

func (e *listenError) Unwrap() error { return e.err }

// Serve serves Handler on ln until ctx is done, then shuts down gracefully:
// in-flight requests get up to 5 s, after which connections are closed.
// It closes ln and returns only once the server has stopped. The error is nil
// after a clean shutdown. log may be nil.
func (e *Exporter) Serve(ctx context.Context, ln net.Listener, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("exporter")
	srv := &http.Server{
		Handler:           e.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(log),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	log.Info("serving metrics", zap.Stringer("addr", ln.Addr()))

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		// Serve stopped on its own: the listener broke.
		return fmt.Errorf("serve metrics on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		_ = srv.Close()
		err = fmt.Errorf("shut down metrics server: %w", err)
	}
	<-served // http.ErrServerClosed
	return err
}
