package main

import (
	"debug/elf"
	"fmt"
)

// RequireStatic fails unless exe is a statically linked ELF executable. The CNI plugins the
// image carries are copied onto the node and run there by the container runtime, with the
// host's loader and C library, which the image cannot vouch for.
func RequireStatic(exe string) error {
	f, err := elf.Open(exe)
	if err != nil {
		return fmt.Errorf("%s: %w (hack/install-ref-cni.sh builds the reference plugins)", exe, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: it would run on the node with the node's C library; build it with CGO_ENABLED=0, as hack/install-ref-cni.sh does", exe)
		}
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s is not an executable (ELF type %v)", exe, f.Type)
	}
	return nil
}
