package cni

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podroute/podroute/ipam"
)

// addresses is where a pod's IPs come from: the built-in allocator in-process, or any other
// IPAM plugin by CNI delegation.
type addresses interface {
	Add(args *skel.CmdArgs) ([]netip.Addr, error)
	Del(args *skel.CmdArgs) error
	Check(args *skel.CmdArgs, want []netip.Addr) error
	GC(valid []types.GCAttachment) error
	Status() error
}

func addressesFor(c *Config) addresses {
	if c.Pool != nil {
		return &builtin{conf: c}
	}
	return &delegated{conf: c}
}

type builtin struct{ conf *Config }

func (b *builtin) open() (*ipam.Allocator, error) {
	a, err := ipam.Open(b.conf.Pool, b.conf.Name)
	if err != nil {
		return nil, ipamErr(err)
	}
	return a, nil
}

func (b *builtin) Add(args *skel.CmdArgs) ([]netip.Addr, error) {
	a, err := b.open()
	if err != nil {
		return nil, err
	}
	alloc, err := a.Allocate(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return nil, ipamErr(err)
	}
	ips := make([]netip.Addr, 0, len(alloc.IPs))
	for _, p := range alloc.IPs {
		ips = append(ips, p.Addr())
	}
	return ips, nil
}

func (b *builtin) Del(args *skel.CmdArgs) error {
	a, err := b.open()
	if err != nil {
		return err
	}
	return ipamErr(a.Release(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}))
}

func (b *builtin) Check(args *skel.CmdArgs, want []netip.Addr) error {
	a, err := b.open()
	if err != nil {
		return err
	}
	alloc, ok, err := a.Get(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return ipamErr(err)
	}
	if !ok {
		return fmt.Errorf("ipam: no addresses reserved for container %s interface %s", args.ContainerID, args.IfName)
	}
	have := map[netip.Addr]bool{}
	for _, p := range alloc.IPs {
		have[p.Addr()] = true
	}
	for _, ip := range want {
		if !have[ip] {
			return fmt.Errorf("ipam: %s is not reserved for container %s interface %s", ip, args.ContainerID, args.IfName)
		}
	}
	return nil
}

func (b *builtin) GC(valid []types.GCAttachment) error {
	a, err := b.open()
	if err != nil {
		return err
	}
	keep := make([]ipam.Attachment, 0, len(valid))
	for _, v := range valid {
		keep = append(keep, ipam.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	_, err = a.GC(keep)
	return ipamErr(err)
}

func (b *builtin) Status() error {
	a, err := b.open()
	if err != nil {
		return types.NewError(ipam.ErrCodeNotAvailable, err.Error(), "")
	}
	if err := a.Status(); err != nil {
		return types.NewError(ipam.ErrCodeNotAvailable, err.Error(), "")
	}
	return nil
}

// delegated runs another IPAM plugin (host-local, whereabouts, ...) the CNI way.
type delegated struct{ conf *Config }

func (d *delegated) Add(_ *skel.CmdArgs) ([]netip.Addr, error) {
	r, err := invoke.DelegateAdd(context.TODO(), d.conf.PluginConf.IPAM.Type, d.conf.Stdin, nil)
	if err != nil {
		return nil, err
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("ipam %s: %w", d.conf.PluginConf.IPAM.Type, err)
	}
	if len(res.IPs) == 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "ipam "+d.conf.PluginConf.IPAM.Type+": returned no address", "")
	}
	ips := make([]netip.Addr, 0, len(res.IPs))
	for _, ipc := range res.IPs {
		ip, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, fmt.Errorf("ipam %s: returned an invalid address %v", d.conf.PluginConf.IPAM.Type, ipc.Address)
		}
		ips = append(ips, ip.Unmap())
	}
	return ips, nil
}

func (d *delegated) Del(_ *skel.CmdArgs) error {
	return invoke.DelegateDel(context.TODO(), d.conf.PluginConf.IPAM.Type, d.conf.Stdin, nil)
}

func (d *delegated) Check(_ *skel.CmdArgs, _ []netip.Addr) error {
	return invoke.DelegateCheck(context.TODO(), d.conf.PluginConf.IPAM.Type, d.conf.Stdin, nil)
}

func (d *delegated) GC(_ []types.GCAttachment) error {
	return invoke.DelegateGC(context.TODO(), d.conf.PluginConf.IPAM.Type, d.conf.Stdin, nil)
}

func (d *delegated) Status() error {
	return invoke.DelegateStatus(context.TODO(), d.conf.PluginConf.IPAM.Type, d.conf.Stdin, nil)
}
