package lab

// Failure injection and probes for failover measurements: a silent cut between one node and
// one router on a segment, a flow from any namespace (a host's) to a pod, an agent started
// again with other flags, and the process IDs of FRR's daemons.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// CutPath drops (cut) or passes again (!cut) every frame the segment's bridge forwards
// between node n's port and router r's port, both ways: the path between the two fails
// while both ends keep their carrier, as when a transceiver or a cable between switches
// fails. Nothing else on the segment is affected. It uses a bridge-family nftables table in
// the fabric namespace, one per cut.
func (l *Lab) CutPath(n *Node, r *Router, cut bool) error {
	seg := n.Segment
	if seg == nil {
		seg = l.DefaultSegment()
	}
	np, rp := n.port, r.segPort(seg)
	table := fmt.Sprintf("cut_%s_%s", np, rp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !cut {
		if out, err := l.Fabric.Exec(ctx, "nft", "delete", "table", "bridge", table); err != nil {
			return fmt.Errorf("uncut %s-%s: %w: %s", n.Name, r.Name, err, out)
		}
		return nil
	}
	rules := fmt.Sprintf(`table bridge %[1]s {
	chain forward {
		type filter hook forward priority -200; policy accept;
		iifname "%[2]s" oifname "%[3]s" drop
		iifname "%[3]s" oifname "%[2]s" drop
	}
}
`, table, np, rp)
	if out, err := l.Fabric.Exec(ctx, "sh", "-c", "printf '%s' \"$0\" | nft -f -", rules); err != nil {
		return fmt.Errorf("cut %s-%s: %w: %s", n.Name, r.Name, err, out)
	}
	return nil
}

// StartFlowFrom is StartFlow from a namespace that is no pod (a Host's, say), sending from
// src to pod to's address of src's family.
func StartFlowFrom(from *NetNS, src netip.Addr, to *Pod, interval time.Duration) (*Flow, error) {
	dst := to.Addr(src.Is6())
	var server, client *net.UDPConn
	err := to.Do(func() error {
		var err error
		server, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("flow: listen in %s: %w", to.Name, err)
	}
	err = from.Do(func() error {
		var err error
		client, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
		return err
	})
	if err != nil {
		server.Close()
		return nil, fmt.Errorf("flow: socket in %s: %w", from.Name, err)
	}
	f := &Flow{
		client: client, server: server,
		dst:      server.LocalAddr().(*net.UDPAddr),
		interval: interval,
		stop:     make(chan struct{}),
		got:      map[uint64]bool{},
		start:    time.Now(),
	}
	f.wg.Add(3)
	go f.echo()
	go f.receive()
	go f.send()
	return f, nil
}

// SetArgs replaces the agent's own extra flags (NodeOptions.AgentArgs) for its next
// Start: an upgrade that changes the agent's command line.
func (a *Agent) SetArgs(extra []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.extra = slices.Clone(extra)
}

// DaemonPID is the process ID of FRR daemon d (zebra, bfdd, bgpd) of the router, or 0 when
// it does not run.
func (r *Router) DaemonPID(d string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		if p.name == d && !exited(p.done) {
			return p.cmd.Process.Pid
		}
	}
	return 0
}
