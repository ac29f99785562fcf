package kube

import "syscall"

// sysProcAttr kills the child when the test binary dies without running its
// cleanups (panic, timeout), so no etcd or apiserver outlives a test run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
