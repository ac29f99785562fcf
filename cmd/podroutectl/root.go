package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/podroute/podroute/agentapi"
)

// version is set at build time: -ldflags '-X main.version=v1.2.3'.
var version = ""

// socketEnv overrides the default socket, for nodes where the agent runs with --socket.
const socketEnv = "PODROUTE_SOCKET"

const defaultTimeout = 5 * time.Second

// app is what the commands share: where they write, how they see the environment and the
// clock (fixed in tests), and the global flags.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time

	socket  string
	output  string
	timeout time.Duration
}

func newApp(stdout, stderr io.Writer) *app {
	return &app{stdout: stdout, stderr: stderr, getenv: os.Getenv, now: time.Now}
}

// usageError is a mistake in the command line rather than a failure to do the work.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// run executes the command line and returns the exit status: 0 when it did its work, 1 for
// any error, which is printed as one line.
func run(ctx context.Context, a *app, args []string) int {
	root := newRootCmd(a)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintf(a.stderr, "podroutectl: %s\n", oneLine(err.Error()))
	var ue *usageError
	if errors.As(err, &ue) {
		cmd = ue.cmd
	}
	if ue != nil || strings.HasPrefix(err.Error(), "unknown command") {
		fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return 1
}

// oneLine folds a message onto one line; cobra's "Did you mean this?" suggestions become a
// trailing clause.
func oneLine(msg string) string {
	head, rest, found := strings.Cut(strings.TrimSpace(msg), "\n")
	if !found {
		return head
	}
	if _, sugg, ok := strings.Cut(rest, "Did you mean this?"); ok {
		return head + " (did you mean " + strings.Join(strings.Fields(sugg), " or ") + "?)"
	}
	return strings.Join(strings.Fields(msg), " ")
}

func newRootCmd(a *app) *cobra.Command {
	defaultSocket := agentapi.DefaultSocket
	if s := a.getenv(socketEnv); s != "" {
		defaultSocket = s
	}
	root := &cobra.Command{
		Use:   "podroutectl",
		Short: "Inspect the podroute agent on this node",
		Long: `podroutectl shows what the podroute agent on this node is doing: its BGP sessions,
the routes it learned, refused, installed and advertises, whether the node is ready, and
which NetworkPolicies select a pod and whether they allow a connection.

It reads the agent's local API on a unix socket (` + agentapi.DefaultSocket + ` by default),
which is readable by root and the socket's group only; run it on the node, as root or as a
member of that group (for example via kubectl debug node/<name> or kubectl exec into the
podroute-agent pod). It changes nothing.

Exit status: 0 on success, 1 on any error; errors are one line on stderr.`,
		Example: `  # Is this node ready, and if not, why?
  podroutectl status

  # BGP sessions with their state and prefix counts
  podroutectl bgp neighbors

  # Learned routes as JSON, for jq
  podroutectl bgp routes -o json | jq '.routes[] | select(.installed | not)'

  # Would shop/client-1 reach shop/web-0 on port 80, and by which rule?
  podroutectl policy check client-1 web-0 80/tcp -n shop

  # An agent started with a non-default socket
  PODROUTE_SOCKET=/var/run/podroute/agent.sock podroutectl status`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			f, err := parseFormat(a.output)
			if err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			a.output = f
			if a.timeout <= 0 {
				return &usageError{cmd: cmd, err: fmt.Errorf("--timeout must be positive, not %s", a.timeout)}
			}
			return nil
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return &usageError{cmd: cmd, err: err} })

	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", defaultSocket, "the agent's API socket; $"+socketEnv+" sets the default")
	pf.StringVarP(&a.output, "output", "o", formatTable, "output format: "+strings.Join(formats, ", "))
	pf.DurationVar(&a.timeout, "timeout", defaultTimeout, "how long to wait for the agent's answer")
	_ = root.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return formats, cobra.ShellCompDirectiveNoFileComp
	})
	_ = root.MarkPersistentFlagFilename("socket", "sock")

	root.AddCommand(newStatusCmd(a), newBGPCmd(a), newPolicyCmd(a), newVersionCmd(a))
	return root
}

// usageArgs marks argument errors as usage errors, so they get the usage hint.
func usageArgs(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := v(cmd, args); err != nil {
			return &usageError{cmd: cmd, err: err}
		}
		return nil
	}
}

// call runs one API call bounded by --timeout.
func call[T any](cmd *cobra.Command, a *app, get func(*agentapi.Client, context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	defer cancel()
	return get(agentapi.NewClient(a.socket), ctx)
}

func newStatusCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the node's routing state at a glance",
		Long: `status shows the node as the agent sees it: its pod CIDRs, AS and router ID, whether
the CNI config is written, whether the Kubernetes API watch and the BGP speaker are up,
whether the node is ready (and if not, why), route counts, and the last reconcile; then
the cluster's LoadBalancerIPPools with the addresses allocated and available per family.

Routes counts: learned (best paths from BGP), installed (agent routes in the kernel,
blackholes included), advertised (prefixes this node originates), refused (announcements
the import filter refused, per prefix and peer), failed (routes the kernel would not take
in the last reconcile).`,
		Example: `  podroutectl status
  podroutectl status -o yaml`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := call(cmd, a, (*agentapi.Client).Status)
			if err != nil {
				return err
			}
			if err := renderStatus(a.stdout, a.output, st, a.now()); err != nil || a.output != formatTable {
				return err
			}
			pools, err := call(cmd, a, (*agentapi.Client).LoadBalancerPools)
			return renderPools(a.stdout, pools, err)
		},
	}
}

func newBGPCmd(a *app) *cobra.Command {
	bgp := &cobra.Command{
		Use:   "bgp",
		Short: "Show BGP sessions and routes",
		Long:  `bgp shows the agent's BGP speaker: its sessions (neighbors) and its routes.`,
		Example: `  podroutectl bgp neighbors
  podroutectl bgp routes`,
		// Runnable only to reject unknown subcommands, which cobra would otherwise answer
		// with help and a success status.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				err := fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())
				if sugg := cmd.SuggestionsFor(args[0]); len(sugg) > 0 {
					err = fmt.Errorf("%w (did you mean %s?)", err, strings.Join(sugg, " or "))
				}
				return &usageError{cmd: cmd, err: err}
			}
			return cmd.Help()
		},
	}
	var advertised bool
	neighbors := &cobra.Command{
		Use:     "neighbors",
		Aliases: []string{"neighbours", "peers"},
		Short:   "List BGP peers with their session state and prefix counts",
		Long: `neighbors lists the BGP peers of this node, one per line, ordered by address:

  PEER        the peer's address
  ASN         its AS number
  KIND        mesh (another node), external (a router of the network), or reflector
  NODE        the node, for mesh peers
  STATE       the session state; only "established" exchanges routes
  SINCE       when the session entered that state (the timestamp in JSON and YAML)
  RECEIVED    prefixes the peer sent
  ACCEPTED    prefixes of those the import filter accepted
  ADVERTISED  prefixes sent to the peer, with --advertised only
  INFO        why a session is not established, or "graceful restart" while the peer
              restarts and its routes are kept`,
		Example: `  podroutectl bgp neighbors
  # With the prefixes sent to each peer
  podroutectl bgp neighbors --advertised
  # Sessions that are down
  podroutectl bgp neighbors -o json | jq '.[] | select(.state != "established")'`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := call(cmd, a, func(c *agentapi.Client, ctx context.Context) ([]agentapi.Neighbor, error) {
				return c.Neighbors(ctx, advertised)
			})
			if err != nil {
				return err
			}
			return renderNeighbors(a.stdout, a.output, ns, a.now())
		},
	}
	neighbors.Flags().BoolVar(&advertised, "advertised", false,
		"also count the prefixes sent to each peer: the speaker runs its export policy over every route for every peer, "+
			"seconds on a route reflector with 1,000 clients, and takes no other change meanwhile")
	bgp.AddCommand(neighbors)
	bgp.AddCommand(&cobra.Command{
		Use:   "routes",
		Short: "List learned, refused and advertised prefixes",
		Long: `routes prints three tables, each ordered by prefix:

Learned routes: the best path of each prefix learned from BGP, with its next hops, AS
path and the peer it came from, and whether it is installed in the kernel (with the
kernel's error when it is not).

Refused by the import filter: announcements the agent would not take (for example a
prefix outside the cluster's pod CIDRs, or a peer announcing another node's range), with
the reason, how often and how recently.

Advertised by this node: the prefixes this node originates.`,
		Example: `  podroutectl bgp routes
  # Routes the kernel would not take
  podroutectl bgp routes -o json | jq '.routes[] | select(.installed | not)'`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := call(cmd, a, (*agentapi.Client).Routes)
			if err != nil {
				return err
			}
			return renderRoutes(a.stdout, a.output, rs, a.now())
		},
	})
	return bgp
}

func newVersionCmd(a *app) *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of podroutectl and of the agent",
		Long: `version prints the version of podroutectl and, if the agent answers, the agent's.
An agent that does not answer is reported but is not an error.`,
		Example: `  podroutectl version
  podroutectl version --client`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := versionInfo{Client: clientVersion{
				Version:   buildVersion(),
				GoVersion: runtime.Version(),
				Platform:  runtime.GOOS + "/" + runtime.GOARCH,
			}}
			if !clientOnly {
				st, err := call(cmd, a, (*agentapi.Client).Status)
				if err != nil {
					v.AgentError = err.Error()
				} else {
					v.Agent = &agentVersion{Version: st.Version, Node: st.Node}
				}
			}
			return renderVersion(a.stdout, a.output, v)
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print podroutectl's version only, without asking the agent")
	return cmd
}

// buildVersion is the version set at build time, else the module version go install
// records, else "dev".
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
