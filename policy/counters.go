package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
)

// Drops are the packets podroute's drop rules have dropped since their chain was made, by
// chain: each pod chain's final "counter drop" (no rule of the policies selecting the pod
// allowed the packet), and HoldChain's (a pod interface not judged yet).
type Drops map[string]uint64

// ReadDrops reads the drop counters of the table from the kernel. knftables lists rules
// without their counters, so this runs nft itself, terse (no set elements: only the rules
// are wanted, and a large cluster's sets are most of the table). No table (no policy in the
// cluster): no drops, no error.
func ReadDrops(ctx context.Context) (Drops, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, fmt.Errorf("policy: reading drop counters: %w", err)
	}
	cmd := exec.CommandContext(ctx, path, "--json", "--terse", "list", "table", "inet", TableName)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(stderr.String(), "No such file or directory") {
			return Drops{}, nil
		}
		return nil, fmt.Errorf("policy: reading drop counters (nft list table inet %s): %w: %s", TableName, err, strings.TrimSpace(stderr.String()))
	}
	return parseDrops(out)
}

// parseDrops reads the counters of the drop rules in nft's JSON listing of the table.
func parseDrops(out []byte) (Drops, error) {
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Table   string            `json:"table"`
				Chain   string            `json:"chain"`
				Comment string            `json:"comment"`
				Expr    []json.RawMessage `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("policy: reading drop counters: nft's JSON: %w", err)
	}
	drops := Drops{}
	for _, o := range doc.Nftables {
		r := o.Rule
		if r == nil || r.Table != TableName || (r.Comment != dropComment && r.Comment != holdComment) {
			continue
		}
		for _, e := range r.Expr {
			var ex struct {
				Counter *struct {
					Packets uint64 `json:"packets"`
				} `json:"counter"`
			}
			if json.Unmarshal(e, &ex) == nil && ex.Counter != nil {
				drops[r.Chain] += ex.Counter.Packets
			}
		}
	}
	return drops, nil
}
