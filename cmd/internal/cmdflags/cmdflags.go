// Package cmdflags holds what podroute's daemons (podroute-agent, podroute-lbipam) read the
// same way from their flags: --kubeconfig into a client configuration, and --log-level.
package cmdflags

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RestConfig is the API server's client configuration: from the kubeconfig file when one is
// named, else the pod's in-cluster one.
func RestConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --kubeconfig and not running in a cluster: %w", err)
	}
	return c, nil
}

// Level is a pflag.Value setting a slog level by name: debug, info, warn or error.
type Level struct{ P *slog.Level }

func (v Level) String() string {
	if v.P == nil {
		return ""
	}
	return strings.ToLower(v.P.String())
}

// Set parses the level's name.
func (v Level) Set(s string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return errors.New("not debug, info, warn or error")
	}
	*v.P = l
	return nil
}

// Type names the value in help.
func (Level) Type() string { return "level" }
