// Package cni is podroute's CNI plugin: a routed veth per pod, no bridge, no overlay.
package cni

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/ipam"
)

// Versions are the CNI spec versions podroute speaks.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Version is set at build time.
var Version = "dev"

// Funcs are the plugin's verbs, each guarded so no panic reaches the runtime as a stack trace.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    guard(cmdAdd),
		Del:    guard(cmdDel),
		Check:  guard(cmdCheck),
		GC:     guard(cmdGC),
		Status: guard(cmdStatus),
	}
}

// Main runs the plugin the way a runtime execs it.
func Main() {
	skel.PluginMainFuncs(Funcs(), Versions, "podroute CNI plugin "+Version)
}

// cmdStatus fails with code 50 when an ADD could not be served: a plugin the list chains
// after podroute is missing, or the address store is unusable.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := checkChained(conf.ChainedPlugins, args.Path); err != nil {
		return err
	}
	return addressesFor(conf).Status()
}

// guard turns a panic into the spec's error JSON (code 999) with no stack trace.
func guard(f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = types.NewError(types.ErrInternal, fmt.Sprintf("internal error: %v", r), "")
			}
		}()
		return f(args)
	}
}

// isGone reports an error that means the object is already gone.
func isGone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
}

// IPAMMain runs the built-in allocator as a standalone IPAM plugin.
func IPAMMain() {
	funcs := skel.CNIFuncs{
		Add:    guard(ipam.CmdAdd),
		Del:    guard(ipam.CmdDel),
		Check:  guard(ipam.CmdCheck),
		GC:     guard(ipam.CmdGC),
		Status: guard(ipam.CmdStatus),
	}
	skel.PluginMainFuncs(funcs, Versions, "podroute-ipam IPAM plugin "+Version)
}
