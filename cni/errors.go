package cni

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podroute/podroute/ipam"
)

// Plugin-specific CNI error codes (the spec reserves 1-99).
const (
	// ErrCodeInterfaceTaken: CNI_IFNAME already exists in the pod, or the host side name is held
	// by an interface podroute does not own.
	ErrCodeInterfaceTaken uint = 100
	// ErrCodeKernel: a netlink or sysctl operation failed.
	ErrCodeKernel uint = 102
)

// invalidConfig is code 7, with the offending field first in the message.
func invalidConfig(field, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, a...), "")
}

func invalidEnv(name, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidEnvironmentVariables, name+": "+fmt.Sprintf(format, a...), "")
}

func kernelErr(format string, a ...any) *types.Error {
	err := fmt.Errorf(format, a...)
	return types.NewError(ErrCodeKernel, err.Error(), "")
}

// ipamErr maps the allocator's errors onto the spec's codes, as podroute-ipam does.
func ipamErr(err error) error { return ipam.CNIError(err) }

func typesError(code uint, msg string) *types.Error { return types.NewError(code, msg, "") }
