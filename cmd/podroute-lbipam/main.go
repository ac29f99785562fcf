// Command podroute-lbipam gives Services of type LoadBalancer addresses from the cluster's
// LoadBalancerIPPools (package lbipam). It runs as the Deployment podroute-lbipam
// (deploy/50-lbipam.yaml): two replicas, one allocating, elected with a Lease.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/podroute/podroute/cmd/internal/cmdflags"
	"github.com/podroute/podroute/lbipam"
)

// version is set at build time (-X main.version=...).
var version = "dev"

const usageHead = `podroute-lbipam gives Services of type LoadBalancer addresses from the cluster's
LoadBalancerIPPools (podroute.io/v1alpha1). Replicas elect the one that allocates with a Lease.

Usage:
  podroute-lbipam [flags]

Flags:
`

// options is the command line.
type options struct {
	kubeconfig     string
	leaseNamespace string
	leaseName      string
	class          string
	healthAddr     string
	clusterCIDRs   []string
	serviceCIDRs   []string
	reserved       []lbipam.Reserved
	logLevel       slog.Level
	version        bool
}

// newFlagSet defines the flags on o; namespace ($POD_NAMESPACE) is the default of
// --lease-namespace.
func newFlagSet(o *options, namespace string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("podroute-lbipam", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // errors are returned, and help printed, by the caller
	fs.Usage = func() {}
	o.logLevel = slog.LevelInfo
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&o.leaseNamespace, "lease-namespace", namespace, "namespace of the Lease electing the one replica that allocates (env POD_NAMESPACE); empty: no election, run one replica only")
	fs.StringVar(&o.leaseName, "lease-name", lbipam.DefaultLeaseName, "name of that Lease")
	fs.StringVar(&o.class, "load-balancer-class", lbipam.DefaultLoadBalancerClass, "the spec.loadBalancerClass served, besides Services without one")
	fs.StringSliceVar(&o.clusterCIDRs, "cluster-cidrs", nil, "the cluster's pod CIDRs (comma-separated): a pool overlapping them is refused, as is a pool holding a Node's address")
	fs.StringSliceVar(&o.serviceCIDRs, "service-cidrs", nil, "the cluster's Service CIDRs (comma-separated): a pool overlapping them is refused")
	fs.StringVar(&o.healthAddr, "health-address", "", "serve /healthz and /readyz on this TCP address, e.g. 0.0.0.0:9650 (default: off); ready once the Service and pool caches are synced, leading or not")
	fs.Var(cmdflags.Level{P: &o.logLevel}, "log-level", "debug, info, warn or error")
	fs.Lookup("log-level").DefValue = "info"
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolP("help", "h", false, "show this help and exit")
	return fs
}

// parseFlags reads the command line (without the program name). It returns pflag.ErrHelp
// for --help; every other error names the flag.
func parseFlags(args []string, namespace string) (*options, error) {
	o := &options{}
	fs := newFlagSet(o, namespace)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if help, _ := fs.GetBool("help"); help {
		return nil, pflag.ErrHelp
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: podroute-lbipam takes flags only", fs.Arg(0))
	}
	if o.version {
		return o, nil
	}
	// The API server would refuse these names at every attempt of the election, which
	// retries forever: refuse them here, naming the flag.
	if o.leaseNamespace != "" {
		if errs := validation.IsDNS1123Label(o.leaseNamespace); len(errs) > 0 {
			return nil, fmt.Errorf("--lease-namespace %q: not a namespace name: %s", o.leaseNamespace, strings.Join(errs, "; "))
		}
	}
	if errs := validation.IsDNS1123Subdomain(o.leaseName); len(errs) > 0 {
		return nil, fmt.Errorf("--lease-name %q: not a Lease name: %s", o.leaseName, strings.Join(errs, "; "))
	}
	// The API server validates spec.loadBalancerClass as a label-style qualified name:
	// any other class could never match a Service.
	if errs := validation.IsQualifiedName(o.class); len(errs) > 0 {
		return nil, fmt.Errorf("--load-balancer-class %q: not a qualified name: %s", o.class, strings.Join(errs, "; "))
	}
	for _, f := range []struct {
		flag, what string
		in         []string
	}{
		{"cluster-cidrs", "the cluster's pod addresses (--cluster-cidrs)", o.clusterCIDRs},
		{"service-cidrs", "the cluster's Service addresses (--service-cidrs)", o.serviceCIDRs},
	} {
		for _, s := range f.in {
			s = strings.TrimSpace(s)
			if s == "" {
				continue // an empty ConfigMap value
			}
			p, err := netip.ParsePrefix(s)
			if err != nil || p != p.Masked() {
				return nil, fmt.Errorf("--%s %q: not a CIDR", f.flag, s)
			}
			o.reserved = append(o.reserved, lbipam.Reserved{Prefix: p, What: f.what})
		}
	}
	if o.healthAddr != "" {
		if err := checkAddress(o.healthAddr); err != nil {
			return nil, fmt.Errorf("--health-address %q: %w", o.healthAddr, err)
		}
	}
	return o, nil
}

func checkAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("not host:port")
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("%q is not an IP address", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q is not a TCP port", port)
	}
	return nil
}

func usage(namespace string) string {
	return usageHead + newFlagSet(&options{}, namespace).FlagUsagesWrapped(100)
}

func main() {
	ns := os.Getenv("POD_NAMESPACE")
	o, err := parseFlags(os.Args[1:], ns)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Print(usage(ns))
		return
	case err != nil:
		fmt.Fprintf(os.Stderr, "podroute-lbipam: %v\nRun 'podroute-lbipam --help' for usage.\n", err)
		os.Exit(2)
	case o.version:
		fmt.Println(version)
		return
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "podroute-lbipam: %v\n", err)
		os.Exit(1)
	}
}

func run(o *options) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel}))
	slog.SetDefault(log)
	rc, err := cmdflags.RestConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	rc.UserAgent = "podroute-lbipam/" + version
	// Each allocation is a status write and an Event: at 20 QPS, 1,000 new Services took 98 s
	// (BenchmarkAllocate1000), at 100 QPS 18 s. One replica writes at a time.
	rc.QPS, rc.Burst = 100, 200
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	c := lbipam.NewController(client, dyn, lbipam.Options{
		LoadBalancerClass: o.class,
		LeaseNamespace:    o.leaseNamespace,
		LeaseName:         o.leaseName,
		Reserved:          o.reserved,
		Logger:            log,
	})

	// SIGTERM cancels ctx: the controller's elector then releases the Lease
	// (ReleaseOnCancel), so the standby takes over at once instead of after LeaseDuration.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var health *http.Server
	if o.healthAddr != "" {
		ln, err := net.Listen("tcp", o.healthAddr)
		if err != nil {
			return fmt.Errorf("--health-address: %w", err)
		}
		health = &http.Server{Handler: healthHandler(c), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := health.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("health listener", "addr", o.healthAddr, "err", err)
			}
		}()
		defer health.Close()
	}
	lease := "none (one replica only)"
	if o.leaseNamespace != "" {
		lease = o.leaseNamespace + "/" + o.leaseName
	}
	log.Info("podroute-lbipam starting", "version", version, "loadBalancerClass", o.class, "lease", lease, "health", o.healthAddr)
	err = c.Run(ctx)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		log.Info("podroute-lbipam stopped")
		return nil
	}
	return err
}

// readiness is what the probes read of the controller.
type readiness interface {
	Synced() bool
	Leading() bool
}

// healthHandler serves /healthz (the process answers) and /readyz (the caches are synced,
// so this replica can allocate at once when it leads). A standby is ready too: it is not
// a Service backend, and a rollout must not wait for it to lead.
func healthHandler(c readiness) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !c.Synced() {
			http.Error(w, "Service and LoadBalancerIPPool caches not synced", http.StatusServiceUnavailable)
			return
		}
		role := "standby"
		if c.Leading() {
			role = "leading"
		}
		fmt.Fprintf(w, "ok (%s)\n", role)
	})
	return mux
}
