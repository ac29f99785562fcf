package cni

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podroute/podroute/ipam"
)

// checkChained is STATUS's check of the plugins the list runs after podroute (NetConf's
// ChainedPlugins): each must be an executable file in one of the CNI_PATH directories, as
// the runtime will look it up for every ADD. libcni runs STATUS plugin by plugin and fails
// with a plain "failed to find plugin" error, no CNI code, when a binary is missing; podroute
// runs first in its list, so it is podroute that says which plugin is missing, with the code
// (50) that tells the runtime the node cannot take pods.
func checkChained(names []string, cniPath string) error {
	if len(names) == 0 {
		return nil
	}
	dirs := filepath.SplitList(cniPath)
	var problems []string
	for _, name := range names {
		if p := findExecutable(name, dirs); p != "" {
			problems = append(problems, p)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return types.NewError(ipam.ErrCodeNotAvailable, "chained plugin "+strings.Join(problems, "; "), "")
}

// findExecutable returns what is wrong with plugin name in dirs, or "" when the first file
// of that name (the one the runtime would run) is a regular file with an execute bit.
func findExecutable(name string, dirs []string) string {
	var dirsSearched []string
	for _, d := range dirs {
		if d == "" {
			continue
		}
		dirsSearched = append(dirsSearched, d)
		p := filepath.Join(d, name)
		st, err := os.Stat(p) // follows symlinks, as exec does
		if err != nil || !st.Mode().IsRegular() {
			continue // libcni skips what is not a regular file too
		}
		if st.Mode().Perm()&0o111 == 0 {
			return fmt.Sprintf("%q: %s is not executable (mode %v)", name, p, st.Mode().Perm())
		}
		return ""
	}
	if len(dirsSearched) == 0 {
		return fmt.Sprintf("%q: not installed: CNI_PATH is empty", name)
	}
	return fmt.Sprintf("%q: not installed: not found in CNI_PATH %s", name, strings.Join(dirsSearched, ":"))
}
