package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// State is a BFD session state, with its value on the wire (RFC 5880 section 4.1).
type State uint8

const (
	StateAdminDown State = 0
	StateDown      State = 1
	StateInit      State = 2
	StateUp        State = 3
)

func (s State) String() string {
	switch s {
	case StateAdminDown:
		return "admin-down"
	case StateDown:
		return "down"
	case StateInit:
		return "init"
	case StateUp:
		return "up"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Diag is the diagnostic a system gives for its last change of state (RFC 5880 section 4.1).
type Diag uint8

const (
	DiagNone             Diag = 0
	DiagDetectionExpired Diag = 1 // no packet within the detection time
	DiagNeighborDown     Diag = 3 // the peer said its session is down
	DiagAdminDown        Diag = 7 // taken down on purpose
)

// Failure reports whether a peer's diagnostic says the path or the peer failed, as opposed
// to none (its session just began: a new session, a restarted peer, or a router that
// re-creates the session once BGP is up, as FRR does), AdminDown, or "neighbor signaled
// session down" (it went down because we said so).
func (d Diag) Failure() bool {
	switch d {
	case DiagNone, DiagNeighborDown, DiagAdminDown:
		return false
	}
	return true
}

func (d Diag) String() string {
	switch d {
	case DiagNone:
		return "none"
	case DiagDetectionExpired:
		return "control detection time expired"
	case 2:
		return "echo function failed"
	case DiagNeighborDown:
		return "neighbor signaled session down"
	case 4:
		return "forwarding plane reset"
	case 5:
		return "path down"
	case 6:
		return "concatenated path down"
	case DiagAdminDown:
		return "administratively down"
	case 8:
		return "reverse concatenated path down"
	}
	return fmt.Sprintf("diag(%d)", uint8(d))
}

// packet is a BFD Control packet without authentication (RFC 5880 section 4.1). Intervals
// are in microseconds, as on the wire. GoBGP's packet type drops the C, A, D and M bits
// and the echo interval, which the reception rules need, hence this one.
type packet struct {
	diag       Diag
	state      State
	poll       bool
	final      bool
	cpi        bool // control plane independent (C)
	auth       bool // authentication present (A)
	demand     bool // demand mode (D)
	multipoint bool // reserved, must be zero (M)

	mult          uint8
	myDisc        uint32
	yourDisc      uint32
	desiredMinTx  uint32
	requiredMinRx uint32
	requiredEcho  uint32
}

const packetLen = 24

var errPacket = errors.New("bfd: malformed control packet")

func bit(b bool, shift uint) byte {
	if b {
		return 1 << shift
	}
	return 0
}

func (p *packet) marshal() []byte {
	b := make([]byte, packetLen)
	b[0] = 1<<5 | byte(p.diag)&0x1f // version 1
	b[1] = byte(p.state)<<6 | bit(p.poll, 5) | bit(p.final, 4) | bit(p.cpi, 3) | bit(p.auth, 2) |
		bit(p.demand, 1) | bit(p.multipoint, 0)
	b[2] = p.mult
	b[3] = packetLen
	binary.BigEndian.PutUint32(b[4:], p.myDisc)
	binary.BigEndian.PutUint32(b[8:], p.yourDisc)
	binary.BigEndian.PutUint32(b[12:], p.desiredMinTx)
	binary.BigEndian.PutUint32(b[16:], p.requiredMinRx)
	binary.BigEndian.PutUint32(b[20:], p.requiredEcho)
	return b
}

// parse decodes b and applies the checks RFC 5880 section 6.8.6 makes of every packet
// before it is matched to a session.
func parse(b []byte) (packet, error) {
	var p packet
	if len(b) < packetLen {
		return p, fmt.Errorf("%w: %d bytes", errPacket, len(b))
	}
	if v := b[0] >> 5; v != 1 {
		return p, fmt.Errorf("%w: version %d", errPacket, v)
	}
	p.diag = Diag(b[0] & 0x1f)
	p.state = State(b[1] >> 6)
	p.poll, p.final = b[1]&(1<<5) != 0, b[1]&(1<<4) != 0
	p.cpi, p.auth = b[1]&(1<<3) != 0, b[1]&(1<<2) != 0
	p.demand, p.multipoint = b[1]&(1<<1) != 0, b[1]&1 != 0
	p.mult = b[2]
	length := int(b[3])
	switch {
	case p.auth && length < packetLen+2, !p.auth && length < packetLen:
		return p, fmt.Errorf("%w: length field %d", errPacket, length)
	case length > len(b):
		return p, fmt.Errorf("%w: length field %d beyond the %d bytes received", errPacket, length, len(b))
	case p.mult == 0:
		return p, fmt.Errorf("%w: detect multiplier 0", errPacket)
	case p.multipoint:
		return p, fmt.Errorf("%w: multipoint bit set", errPacket)
	}
	p.myDisc = binary.BigEndian.Uint32(b[4:])
	p.yourDisc = binary.BigEndian.Uint32(b[8:])
	p.desiredMinTx = binary.BigEndian.Uint32(b[12:])
	p.requiredMinRx = binary.BigEndian.Uint32(b[16:])
	p.requiredEcho = binary.BigEndian.Uint32(b[20:])
	if p.myDisc == 0 {
		return p, fmt.Errorf("%w: my discriminator 0", errPacket)
	}
	return p, nil
}
