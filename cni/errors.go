package cni

import (
	"errors"
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

// ipamErr maps the allocator's errors onto the spec's codes, the same way the standalone
// podroute-ipam mode does.
func ipamErr(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	var fe *ipam.FieldError
	var de *ipam.DecodeError
	switch {
	case errors.As(err, &te):
		return te
	case errors.As(err, &fe):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	case errors.As(err, &de):
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	case errors.Is(err, ipam.ErrBusy):
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	case errors.Is(err, ipam.ErrExhausted):
		return types.NewError(ipam.ErrCodeExhausted, err.Error(), "")
	default:
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
}

func typesError(code uint, msg string) *types.Error { return types.NewError(code, msg, "") }
