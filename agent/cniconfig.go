package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/podroute/podroute/cniconf"
)

// cniConfig writes the node's CNI configuration (the conflist the container runtime reads),
// from this node's pod CIDRs and the MTU of its uplink.
type cniConfig struct {
	opts cniconf.Options
	mtu  int // 0: the MTU of the interface holding the node's address
	log  *slog.Logger
	// linkMTU finds an interface's MTU by one of its addresses (cniconf.LinkMTU).
	linkMTU func(addr netip.Addr) (int, error)

	path    string
	written bool
}

func (c *cniConfig) name() string { return "cni-config" }

func (c *cniConfig) reconcile(_ context.Context, d *desired) error {
	me := d.me
	mtu := c.mtu
	if mtu == 0 {
		addr := me.V4
		if !addr.IsValid() {
			addr = me.V6
		}
		m, err := c.linkMTU(addr)
		if err != nil {
			return fmt.Errorf("CNI config: MTU of the interface holding %s: %w (set --mtu)", addr, err)
		}
		mtu = m
	}
	path, changed, err := cniconf.Write(c.opts, cniconf.NodeNetwork{PodCIDRs: me.PodCIDRs, MTU: mtu})
	if err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	if changed {
		c.log.Info("wrote CNI config", "path", path, "podCIDRs", me.PodCIDRs, "mtu", mtu)
	}
	c.path, c.written = path, true
	return nil
}

func (c *cniConfig) report(s *snapshot) {
	s.CNIConfig, s.CNIWritten = c.path, c.written
}
