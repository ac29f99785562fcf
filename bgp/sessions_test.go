package bgp

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Sessions reports the sessions as Neighbors does, without the accepted and advertised
// counts; Neighbors counts the accepted paths from the global table: refused ones are not.
func TestSessionsWithoutCounts(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.65.1", port, nil)
	b := startSpeaker(t, "127.0.65.2", port, nil)
	peer(t, a, b, nil)
	for _, p := range []string{"10.244.2.0/24", "10.244.3.0/24", "192.168.0.0/24"} { // the last one refused
		if err := b.Advertise(ctx, pfx(p), Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Advertise(ctx, pfx("10.244.1.0/24"), Attributes{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() string {
		ns, err := a.Neighbors(ctx, true)
		if err != nil {
			return err.Error()
		}
		if len(ns) != 1 || ns[0].State != StateEstablished || ns[0].Received != 3 || ns[0].Accepted != 2 || ns[0].Advertised != 1 {
			return fmt.Sprintf("neighbors %+v, want %s established, 3 received, 2 accepted, 1 advertised", ns, b.ip)
		}
		return ""
	})
	ss, err := a.Router.Sessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 || ss[0].Address != b.ip || ss[0].State != StateEstablished || ss[0].Since.IsZero() || !ss[0].EndOfRIB ||
		ss[0].Accepted != 0 || ss[0].Advertised != 0 {
		t.Errorf("sessions %+v, want %s established since a time, End-of-RIB, no accepted or advertised counts", ss, b.ip)
	}
	if synced, err := a.Synced(ctx); err != nil || !synced {
		t.Errorf("Synced = %v, %v; want true", synced, err)
	}
}
