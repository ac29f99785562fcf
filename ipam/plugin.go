package ipam

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// The Cmd* functions implement podroute-ipam, the standalone CNI IPAM plugin
// mode (like host-local), for skel.PluginMainFuncs. Every error they return
// is a *types.Error carrying the CNI code.

// CmdAdd allocates one address per range set and prints the result.
func CmdAdd(args *skel.CmdArgs) error { return cmdAdd(args, os.Stdout) }

func cmdAdd(args *skel.CmdArgs, w io.Writer) error {
	netName, cniVersion, cfg, err := loadNetConf(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	a, err := Open(cfg, netName)
	if err != nil {
		return cniError(err)
	}
	att := Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	alloc, err := a.Allocate(att)
	if err != nil {
		return cniError(err)
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: cfg.Routes}
	for _, p := range alloc.IPs {
		ipc := &current.IPConfig{Address: toIPNet(p)}
		if r, ok := cfg.RangeOf(p.Addr()); ok && r.Gateway.IsValid() {
			ipc.Gateway = net.IP(r.Gateway.AsSlice())
		}
		res.IPs = append(res.IPs, ipc)
	}
	if cniVersion == "" {
		cniVersion = "0.1.0" // what CNI assumes for a config without cniVersion
	}
	out, err := res.GetAsVersion(cniVersion)
	if err == nil {
		err = out.PrintTo(w)
	}
	if err != nil {
		// The runtime sees a failed ADD, so do not keep the addresses.
		if relErr := a.Release(att); relErr != nil {
			err = fmt.Errorf("%w (and releasing: %v)", err, relErr)
		}
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("print result as CNI %s: %v", cniVersion, err), "")
	}
	return nil
}

// CmdDel releases the attachment's addresses; an unknown attachment is success.
func CmdDel(args *skel.CmdArgs) error {
	netName, _, cfg, err := loadNetConf(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	a, err := Open(cfg, netName)
	if err != nil {
		return cniError(err)
	}
	return cniError(a.Release(Attachment{ContainerID: args.ContainerID, IfName: args.IfName}))
}

// CmdCheck verifies the attachment holds an address in every range set.
func CmdCheck(args *skel.CmdArgs) error {
	netName, _, cfg, err := loadNetConf(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	a, err := Open(cfg, netName)
	if err != nil {
		return cniError(err)
	}
	att := Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	alloc, ok, err := a.Get(att)
	if err != nil {
		return cniError(err)
	}
	if !ok {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("no address allocated to container %s interface %s in network %s", att.ContainerID, att.IfName, netName), "")
	}
	for i, set := range cfg.Ranges {
		if !holdsIn(alloc, set) {
			return types.NewError(types.ErrUnknownContainer,
				fmt.Sprintf("container %s interface %s holds no address in %s", att.ContainerID, att.IfName, cfg.setPath(i)), "")
		}
	}
	return nil
}

func holdsIn(alloc Allocation, set RangeSet) bool {
	for _, p := range alloc.IPs {
		for _, r := range set {
			if r.Subnet.Contains(p.Addr()) {
				return true
			}
		}
	}
	return false
}

// CmdGC releases every allocation of the network not listed in the config's
// cni.dev/valid-attachments.
func CmdGC(args *skel.CmdArgs) error {
	netName, _, cfg, err := loadNetConf(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	var conf struct {
		ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
	}
	if err := decode(args.StdinData, &conf, ""); err != nil {
		return cniError(err)
	}
	valid := make([]Attachment, 0, len(conf.ValidAttachments))
	for _, v := range conf.ValidAttachments {
		valid = append(valid, Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	a, err := Open(cfg, netName)
	if err != nil {
		return cniError(err)
	}
	_, err = a.GC(valid)
	return cniError(err)
}

// CmdStatus reports whether an ADD could be served.
func CmdStatus(args *skel.CmdArgs) error {
	netName, _, cfg, err := loadNetConf(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	a, err := Open(cfg, netName)
	if err == nil {
		err = a.Status()
	}
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			return cniError(err)
		}
		return types.NewError(ErrCodeNotAvailable, err.Error(), "")
	}
	return nil
}

// CNIError maps the package's errors onto CNI error codes; nil stays nil. The plugin's
// in-process use and the standalone podroute-ipam mode answer alike through it.
func CNIError(err error) error {
	return cniError(err)
}

func cniError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	var fe *FieldError
	var de *DecodeError
	switch {
	case errors.As(err, &te):
		return te
	case errors.As(err, &de):
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	case errors.As(err, &fe):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	case errors.Is(err, ErrBusy):
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	case errors.Is(err, ErrExhausted):
		return types.NewError(ErrCodeExhausted, err.Error(), "")
	case errors.Is(err, errInvalidAttachment):
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	default:
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
}

func toIPNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
