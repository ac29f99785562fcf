package agentapi

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Query returns the PathPolicyCheck query of the question.
func (q PolicyCheck) Query() url.Values {
	v := url.Values{}
	if q.FromIP != "" {
		v.Set("from", q.FromIP)
	} else {
		v.Set("from", q.FromNamespace+"/"+q.FromPod)
	}
	v.Set("to", q.ToNamespace+"/"+q.ToPod)
	v.Set("port", strconv.Itoa(q.Port))
	v.Set("protocol", q.Protocol)
	return v
}

// ParsePolicyCheck reads a PathPolicyCheck query; its errors name the parameter at fault.
func ParsePolicyCheck(v url.Values) (PolicyCheck, error) {
	var q PolicyCheck
	from := strings.TrimSpace(v.Get("from"))
	if from == "" {
		return q, fmt.Errorf("from: missing (a pod as namespace/name, or an address)")
	}
	if a, err := netip.ParseAddr(from); err == nil {
		q.FromIP = a.Unmap().String()
	} else {
		ns, name, ok := podRef(from)
		if !ok {
			return q, fmt.Errorf("from: %q is neither an address nor a pod as namespace/name", from)
		}
		q.FromNamespace, q.FromPod = ns, name
	}
	to := strings.TrimSpace(v.Get("to"))
	if to == "" {
		return q, fmt.Errorf("to: missing (the destination pod as namespace/name)")
	}
	ns, name, ok := podRef(to)
	if !ok {
		return q, fmt.Errorf("to: %q is not a pod as namespace/name", to)
	}
	q.ToNamespace, q.ToPod = ns, name
	port := strings.TrimSpace(v.Get("port"))
	n, err := strconv.Atoi(port)
	if port == "" {
		return q, fmt.Errorf("port: missing (the destination port, 1 to 65535)")
	}
	if err != nil || n < 1 || n > 65535 {
		return q, fmt.Errorf("port: %q is not a port number (1 to 65535)", port)
	}
	q.Port = n
	q.Protocol = strings.ToLower(strings.TrimSpace(v.Get("protocol")))
	switch q.Protocol {
	case "":
		q.Protocol = "tcp" // as in a NetworkPolicy port without protocol
	case "tcp", "udp", "sctp":
	default:
		return q, fmt.Errorf("protocol: %q is not tcp, udp or sctp", v.Get("protocol"))
	}
	return q, nil
}

// podRef splits "namespace/name"; both parts must be there, and nothing else.
func podRef(s string) (string, string, bool) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", false
	}
	return ns, name, true
}
