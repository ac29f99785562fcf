// Command podroute-agent is podroute's node agent: it watches the cluster's Nodes, runs the
// node's BGP speaker, installs learned routes in the kernel and writes the node's CNI config.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/podroute/podroute/agent"
	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/cmd/internal/cmdflags"
	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/uninstall"
)

func main() {
	host, _ := os.Hostname()
	exe, _ := os.Executable()
	env := environment{hostname: host, nodeName: os.Getenv("NODE_NAME"), namespace: os.Getenv("POD_NAMESPACE"), exeDir: filepath.Dir(exe)}
	o, err := parseFlags(os.Args[1:], env)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Print(usage(env))
		return
	case err != nil:
		fmt.Fprintf(os.Stderr, "podroute-agent: %v\nRun 'podroute-agent --help' for usage.\n", err)
		os.Exit(1)
	}
	for _, name := range o.deprecated {
		fmt.Fprintf(os.Stderr, "podroute-agent: -%s is read as --%s; write flags with two dashes\n", name, name)
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "podroute-agent: %v\n", err)
		os.Exit(1)
	}
}

func run(o *options) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel}))
	slog.SetDefault(log)
	if o.uninstall {
		c := o.cfg.CNI
		return runUninstall(uninstall.Options{
			CNI:    cniconf.Options{ConfDir: c.ConfDir, BinDir: c.BinDir, DataDir: c.DataDir, PortmapSource: c.PortmapSource},
			Socket: o.socket, DryRun: o.dryRun, Force: o.force, Logger: log,
		}, o.wait)
	}
	cfg := o.cfg

	rc, err := cmdflags.RestConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	rc.UserAgent = "podroute-agent/" + agent.Version
	// client-go's default (5 QPS, burst 10) throttled the first status writes and events for
	// seconds at start; the agent's steady state is a few watches and rare writes.
	rc.QPS, rc.Burst = 20, 40
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	a, err := agent.New(cfg, client, dyn, log)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	srv := agentapi.NewServer(a, log.With("component", "api"))
	a.Mount(srv.Handle)
	if o.profiling {
		// The socket only: a profile shows the process's memory, peers' passwords included.
		mountProfiling(srv.Handle)
	}
	apiErr := make(chan error, 1)
	go func() { apiErr <- srv.Serve(ctx, o.socket) }()
	if o.healthAddr != "" {
		go serveHealth(ctx, o.healthAddr, a, log)
	}
	log.Info("podroute-agent starting", "version", agent.Version, "node", cfg.NodeName, "socket", o.socket)
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	select {
	case err := <-apiErr:
		if err != nil {
			stop()
			<-runErr
			return fmt.Errorf("local API: %w", err)
		}
		return <-runErr
	case err := <-runErr:
		return err
	}
}

// runUninstall removes podroute from this node and prints one line per item on stdout.
func runUninstall(opts uninstall.Options, wait bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := uninstall.Run(ctx, opts)
	verb := "removed"
	if rep.DryRun {
		verb = "would remove"
	}
	for _, it := range rep.Items {
		if it.Err != nil {
			fmt.Printf("failed\t%s\t%s\t%v\n", it.Kind, it.Name, it.Err)
		} else {
			fmt.Printf("%s\t%s\t%s\n", verb, it.Kind, it.Name)
		}
	}
	if len(rep.Items) == 0 && err == nil {
		fmt.Println("nothing of podroute's on this node")
	}
	if err == nil && wait {
		<-ctx.Done()
	}
	return err
}

// mountProfiling adds Go's profiles under /debug/pprof/.
func mountProfiling(handle func(pattern string, h http.Handler)) {
	handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
	handle("/debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline))
	handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
	handle("/debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
	handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
}

// serveHealth serves the probes and metrics on TCP for kubelet and Prometheus, only when asked.
func serveHealth(ctx context.Context, addr string, a *agent.Agent, log *slog.Logger) {
	mux := http.NewServeMux()
	a.Mount(func(p string, h http.Handler) { mux.Handle(p, h) })
	s := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = s.Close()
	}()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Error("health listener", "addr", addr, "err", err)
		return
	}
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("health listener", "addr", addr, "err", err)
	}
}
