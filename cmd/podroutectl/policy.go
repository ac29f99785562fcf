package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/podroute/podroute/agentapi"
)

func newPolicyCmd(a *app) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "policy POD",
		Short: "Show the NetworkPolicies that select a pod, and what they allow",
		Long: `policy shows, for a pod, the NetworkPolicies that select it in each direction and what
each rule allows (peers and ports), as the agent compiles them: named ports resolved on the
pod, selectors with the number of pods they pick now, what the API server would have
refused. A direction no policy selects the pod for is open; a policy without rules in a
direction allows nothing there (a default deny), unless another policy selecting the pod
allows it.

POD is a name in the namespace of -n, or namespace/name. Any pod of the cluster can be
asked about: one on another node is judged there by the same rules.`,
		Example: `  podroutectl policy web-0 -n shop
  podroutectl policy shop/web-0 -o json`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, err := podArg("POD", args[0], namespace)
			if err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			pp, err := call(cmd, a, func(c *agentapi.Client, ctx context.Context) (agentapi.PodPolicies, error) {
				return c.PodPolicies(ctx, ns, name)
			})
			if err != nil {
				return err
			}
			return renderPodPolicies(a.stdout, a.output, pp)
		},
	}
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", "default", "the namespace of pods given by name alone")
	cmd.AddCommand(&cobra.Command{
		Use:   "check SRC DST PORT/PROTO",
		Short: "Tell whether a new connection would be allowed, and by which rule",
		Long: `check judges a new connection from SRC to the pod DST on PORT/PROTO as the kernel's
rules do: the sender's egress (the policies selecting SRC) and the receiver's ingress (those
selecting DST) must both allow it. For each it names the rule that allows the connection
("shop/allow-web ingress rule 0"), or says that no policy selects the pod (open), or which
policies select it and that none of their rules allows it.

SRC is a pod (a name in the namespace of -n, or namespace/name) or an address; an address
that is a pod's is judged as that pod. DST is a pod. PORT/PROTO is 80/tcp, 53/udp or
9000/sctp; a port alone is TCP. The addresses judged are the source's family when it is an
address, else the first family both pods have.

Traffic between a pod and its own node (kubelet probes, host-network pods of that node) is
never policed, and replies of an allowed connection always pass; neither is judged here.`,
		Example: `  podroutectl policy check client-1 web-0 80/tcp -n shop
  podroutectl policy check 192.0.2.10 shop/web-0 443
  podroutectl policy check shop/web-0 kube-system/coredns-abc12 53/udp -o json`,
		Args: usageArgs(cobra.ExactArgs(3)),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := checkArgs(args, namespace)
			if err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			v, err := call(cmd, a, func(c *agentapi.Client, ctx context.Context) (agentapi.PolicyVerdict, error) {
				return c.CheckPolicy(ctx, q)
			})
			if err != nil {
				return err
			}
			return renderVerdict(a.stdout, a.output, v)
		},
	})
	return cmd
}

// podArg reads a pod argument: name (in namespace) or namespace/name.
func podArg(what, s, namespace string) (string, string, error) {
	s = strings.TrimSpace(s)
	ns, name, found := strings.Cut(s, "/")
	if !found {
		ns, name = namespace, s
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%s: %q is not a pod (name, or namespace/name)", what, s)
	}
	return ns, name, nil
}

func checkArgs(args []string, namespace string) (agentapi.PolicyCheck, error) {
	var q agentapi.PolicyCheck
	if ip, err := netip.ParseAddr(strings.TrimSpace(args[0])); err == nil {
		q.FromIP = ip.Unmap().String()
	} else {
		ns, name, err := podArg("SRC", args[0], namespace)
		if err != nil {
			return q, fmt.Errorf("SRC: %q is neither an address nor a pod (name, or namespace/name)", args[0])
		}
		q.FromNamespace, q.FromPod = ns, name
	}
	if _, err := netip.ParseAddr(strings.TrimSpace(args[1])); err == nil {
		return q, fmt.Errorf("DST: %q is an address; the destination must be a pod (name, or namespace/name)", args[1])
	}
	ns, name, err := podArg("DST", args[1], namespace)
	if err != nil {
		return q, err
	}
	q.ToNamespace, q.ToPod = ns, name
	port, proto, found := strings.Cut(strings.TrimSpace(args[2]), "/")
	if !found {
		proto = "tcp"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return q, fmt.Errorf("PORT/PROTO: %q: the port is not a number from 1 to 65535 (e.g. 80/tcp, 53/udp)", args[2])
	}
	q.Port = n
	q.Protocol = strings.ToLower(proto)
	switch q.Protocol {
	case "tcp", "udp", "sctp":
	default:
		return q, fmt.Errorf("PORT/PROTO: %q: the protocol is not tcp, udp or sctp", args[2])
	}
	return q, nil
}

// renderPodPolicies prints a pod's policies, direction by direction.
func renderPodPolicies(w io.Writer, format string, pp agentapi.PodPolicies) error {
	if format != formatTable {
		return writeStructured(w, format, pp)
	}
	var b bytes.Buffer
	where := "on another node: judged there by the same rules"
	if pp.Local {
		where = "on this node"
	}
	addrs := "no address yet"
	if len(pp.IPs) > 0 {
		addrs = strings.Join(pp.IPs, ", ")
	}
	fmt.Fprintf(&b, "Pod %s/%s (%s; %s)\n", cell(pp.Namespace), cell(pp.Pod), cell(addrs), where)
	if pp.HostNetwork {
		fmt.Fprintln(&b, "On the host network: NetworkPolicy never applies to it.")
		_, err := w.Write(b.Bytes())
		return err
	}
	for _, d := range []struct {
		name, peer string
		pols       []agentapi.PolicyRules
	}{{"Ingress", "from", pp.Ingress}, {"Egress", "to", pp.Egress}} {
		fmt.Fprintln(&b)
		switch len(d.pols) {
		case 0:
			fmt.Fprintf(&b, "%s: open (no policy selects this pod)\n", d.name)
			continue
		case 1:
			fmt.Fprintf(&b, "%s: selected by 1 policy; allowed only what it allows\n", d.name)
		default:
			fmt.Fprintf(&b, "%s: selected by %d policies; allowed what any of them allows\n", d.name, len(d.pols))
		}
		for _, p := range d.pols {
			fmt.Fprintf(&b, "  %s\n", cell(p.Policy))
			if len(p.Rules) == 0 {
				fmt.Fprintln(&b, "    allows nothing (no rules)")
			}
			for _, r := range p.Rules {
				peers := "anywhere"
				if len(r.Peers) > 0 {
					peers = cellJoin(r.Peers, "; ")
				}
				ports := "every port"
				if len(r.Ports) > 0 {
					ports = cellJoin(r.Ports, ", ")
				}
				fmt.Fprintf(&b, "    rule %d: %s %s\n", r.Index, d.peer, peers)
				fmt.Fprintf(&b, "            ports %s\n", ports)
			}
		}
	}
	if len(pp.Problems) > 0 {
		fmt.Fprintln(&b, "\nProblems (these parts allow nothing):")
		for _, p := range pp.Problems {
			fmt.Fprintf(&b, "  %s\n", cell(p))
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// renderVerdict prints the verdict and each direction's reason.
func renderVerdict(w io.Writer, format string, v agentapi.PolicyVerdict) error {
	if format != formatTable {
		return writeStructured(w, format, v)
	}
	var b bytes.Buffer
	verdict := "DENIED"
	if v.Allowed {
		verdict = "ALLOWED"
	}
	from := cell(v.From)
	if v.FromIP != "" && v.FromIP != v.From {
		from += " (" + cell(v.FromIP) + ")"
	}
	fmt.Fprintf(&b, "%s: %s -> %s (%s) %d/%s\n", verdict, from, cell(v.To), cell(v.ToIP), v.Port, cell(v.Protocol))
	t := newTable(&b, "DIRECTION", "POD", "VERDICT", "WHY")
	for _, d := range []struct {
		name string
		j    agentapi.PolicyJudgement
	}{{"egress", v.Egress}, {"ingress", v.Ingress}} {
		t.row(d.name, dash(d.j.Pod), allowedWord(d.j.Allowed), d.j.Reason)
	}
	if err := t.flush(); err != nil {
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

func allowedWord(ok bool) string {
	if ok {
		return "allowed"
	}
	return "denied"
}

func cellJoin(items []string, sep string) string {
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = cell(s)
	}
	return strings.Join(out, sep)
}
