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

// index is the body of "/".
const index = `sluice agent
/metrics       Prometheus metrics
/debug/pprof/  Go profiling
/healthz       200 while the process serves
/readyz        200 when the agent admits requests, 503 and the reason otherwise
`

// Handler returns the agent's HTTP mux: /metrics, /debug/pprof/, /healthz,
// /readyz and a text index at /. Any other path is 404.
func (e *Exporter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{
		// A collector that fails is counted in
		// promhttp_metric_handler_errors_total and the rest is still served.
		ErrorHandling:     promhttp.ContinueOnError,
		Registry:          e.reg,
		EnableOpenMetrics: false,
	}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("/readyz", e.serveReady)
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, index)
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
