// Command podroutectl is the operator's view of the podroute agent on a node: BGP sessions,
// routes and readiness, read from the agent's local API socket.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// Ctrl-C ends a call to a stuck agent at once rather than after --timeout.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, newApp(os.Stdout, os.Stderr), os.Args[1:])
	stop()
	os.Exit(code)
}
