// Package uninstall removes everything podroute put on a node, leaving it as it was before
// podroute was installed: the CNI configuration (first, so the runtime stops sending pods to
// podroute), the plugin binaries, the host veths of pods (with their routes and neighbour
// entries), every route with podroute's protocol number (the agent's learned and blackhole
// routes and the plugin's pod routes), the nftables tables inet podroute and inet
// podroute-policy, the IPAM reservations and the agent's socket.
//
// Nothing else is touched: a route with another protocol, an interface whose name or alias
// is not podroute's, another nftables table, other files in the CNI directories. The
// reference portmap plugin in the CNI bin directory goes only when it is the agent's copy
// (identical to the one podroute carries, Options.CNI.PortmapSource): a portmap the
// runtime's packages or another network plugin installed stays (one the agent replaced is
// not brought back). Sysctls the
// plugin set (ip_forward, forwarding, proxy_arp on podroute's own veths) are left: the veths
// are gone, and forwarding is what a Kubernetes node needs whatever its CNI.
//
// Uninstalling cuts the network of every pod still running on the node: it is for a
// drained node, or for a cluster being switched off podroute once the agent's DaemonSet is
// deleted. Run refuses while an agent answers on its socket (it would write everything back)
// unless Options.Force is set. DryRun lists what would be removed and changes nothing.
package uninstall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/podroute/podroute/cni"
	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/egress"
	"github.com/podroute/podroute/policy"
	"github.com/podroute/podroute/routes"
)

// Options say where podroute's files are; empty fields take the agent's defaults.
type Options struct {
	// CNI locates the configuration, the plugin and the IPAM data directory
	// (cniconf.DefaultConfDir, DefaultBinDir, DefaultFileName, DefaultDataDir), and the
	// portmap plugin the agent installs (PortmapSource: the BinDir's portmap is removed
	// only when identical to it; empty: portmap stays).
	CNI cniconf.Options
	// Socket is the agent's local API socket (default /run/podroute/agent.sock). It is
	// removed, and its directory too once empty.
	Socket string
	// DryRun only lists what would be removed.
	DryRun bool
	// Force runs even though an agent answers on Socket.
	Force bool
	// SkipNFTables leaves the nftables table alone. Without the nft binary on PATH the
	// table is skipped anyway (the agent's masquerade cannot have run without it either).
	SkipNFTables bool
	// Logger receives one line per removal; nil means slog.Default().
	Logger *slog.Logger
}

// Kinds of things podroute owns on a node.
const (
	KindCNIConfig = "cni-config"
	KindPlugin    = "cni-plugin"
	KindVeth      = "veth"
	KindRoute     = "route"
	KindNFTable   = "nftables-table"
	KindIPAMData  = "ipam-data"
	KindSocket    = "socket"
	KindSocketDir = "socket-dir"
)

// Item is one thing podroute owns on the node.
type Item struct {
	Kind string
	Name string // a path, an interface name, a route, a table
	// Err is why it could not be removed; nil when removed (or, in a dry run, found).
	Err error
}

func (i Item) String() string {
	s := i.Kind + " " + i.Name
	if i.Err != nil {
		s += ": " + i.Err.Error()
	}
	return s
}

// Report lists what Run found and removed (or would remove, in a dry run).
type Report struct {
	DryRun bool
	Items  []Item
}

// Err joins the items' errors.
func (r Report) Err() error {
	var errs []error
	for _, it := range r.Items {
		if it.Err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", it.Kind, it.Name, it.Err))
		}
	}
	return errors.Join(errs...)
}

// ErrAgentRunning is returned when an agent answers on the socket and Force is not set.
var ErrAgentRunning = errors.New("a podroute agent is running on this node (it would restore what is removed): delete its DaemonSet or stop it first, or force")

func (o *Options) defaults() error {
	if o.CNI.ConfDir == "" {
		o.CNI.ConfDir = cniconf.DefaultConfDir
	}
	if o.CNI.BinDir == "" {
		o.CNI.BinDir = cniconf.DefaultBinDir
	}
	if o.CNI.FileName == "" {
		o.CNI.FileName = cniconf.DefaultFileName
	}
	if o.CNI.DataDir == "" {
		o.CNI.DataDir = cniconf.DefaultDataDir
	}
	if o.Socket == "" {
		o.Socket = "/run/podroute/agent.sock"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	for name, p := range map[string]string{"CNI.ConfDir": o.CNI.ConfDir, "CNI.BinDir": o.CNI.BinDir, "Socket": o.Socket} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("uninstall: %s %q is not an absolute path", name, p)
		}
	}
	// The data directory is removed whole: refuse anything that could be a system directory.
	d := o.CNI.DataDir
	if !filepath.IsAbs(d) || filepath.Clean(d) != d || strings.Count(d, "/") < 3 {
		return fmt.Errorf("uninstall: CNI.DataDir %q: want a clean absolute path at least three levels deep, such as %s", d, cniconf.DefaultDataDir)
	}
	for _, other := range []string{o.CNI.ConfDir, o.CNI.BinDir} {
		if rel, err := filepath.Rel(d, other); err == nil && !strings.HasPrefix(rel, "..") {
			return fmt.Errorf("uninstall: CNI.DataDir %q holds %s", d, other)
		}
	}
	return nil
}

// Run removes podroute from the node (the caller's network namespace and file system). Every
// step runs even when an earlier one failed; the report says what failed, and the returned
// error joins those failures. Running it again on a clean node finds nothing and succeeds.
func Run(ctx context.Context, opts Options) (Report, error) {
	if err := opts.defaults(); err != nil {
		return Report{}, err
	}
	rep := Report{DryRun: opts.DryRun}
	if agentRunning(opts.Socket) && !opts.Force {
		return rep, ErrAgentRunning
	}
	u := &run{opts: opts, rep: &rep, log: opts.Logger}
	// The configuration first: from here on the runtime sends no new pod to podroute.
	u.files(KindCNIConfig, filepath.Join(opts.CNI.ConfDir, opts.CNI.FileName))
	// Routes are read before the veths go, so the report names the plugin's pod routes,
	// which the kernel removes together with their veth.
	found, err := dumpOwned()
	names := make([]string, len(found))
	for i := range found {
		names[i] = describe(&found[i])
	}
	if err != nil {
		u.fail(KindRoute, "*", err)
	}
	u.veths()
	if err == nil {
		u.routes(found, names)
	}
	if !opts.SkipNFTables {
		u.nftables(ctx)
	}
	u.files(KindPlugin, filepath.Join(opts.CNI.BinDir, cniconf.IPAMPluginName), filepath.Join(opts.CNI.BinDir, cniconf.PluginName))
	u.portmap()
	u.dataDir()
	u.socket()
	return rep, rep.Err()
}

type run struct {
	opts Options
	rep  *Report
	log  *slog.Logger
}

// do records an item and, unless this is a dry run, removes it with remove.
// errKept from a removal means the thing is not podroute's to remove after all (an empty
// directory that is a mount point): it is logged and left out of the report.
var errKept = errors.New("kept")

func (u *run) do(kind, name string, remove func() error) {
	it := Item{Kind: kind, Name: name}
	switch {
	case u.opts.DryRun:
		u.log.Info("would remove", "kind", kind, "name", name)
	default:
		it.Err = remove()
		if errors.Is(it.Err, errKept) {
			u.log.Info("kept, a mount point", "kind", kind, "name", name)
			return
		}
		if it.Err != nil {
			u.log.Error("could not remove", "kind", kind, "name", name, "err", it.Err)
		} else {
			u.log.Info("removed", "kind", kind, "name", name)
		}
	}
	u.rep.Items = append(u.rep.Items, it)
}

func (u *run) fail(kind, name string, err error) {
	u.log.Error("could not inspect", "kind", kind, "name", name, "err", err)
	u.rep.Items = append(u.rep.Items, Item{Kind: kind, Name: name, Err: err})
}

// files removes each path that exists (a file or a symlink, never a directory).
func (u *run) files(kind string, paths ...string) {
	for _, p := range paths {
		st, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			u.fail(kind, p, err)
			continue
		}
		if st.IsDir() {
			u.fail(kind, p, errors.New("is a directory, not podroute's file"))
			continue
		}
		u.do(kind, p, func() error { return ignoreNotExist(os.Remove(p)) })
	}
}

// portmap removes the reference portmap plugin the agent installed beside podroute, when it
// is the very copy podroute carries. Any other portmap is not podroute's and stays, and so
// does one that cannot be compared (the uninstall goes on: it is not podroute's to fail on).
func (u *run) portmap() {
	p, ours, err := cniconf.InstalledPortmap(u.opts.CNI)
	if err != nil {
		u.log.Warn("kept: cannot tell whether it is podroute's", "kind", KindPlugin, "name", p, "err", err)
		return
	}
	if ours {
		u.files(KindPlugin, p)
	}
}

// veths deletes the host ends of pod veths: veth links named pr... whose alias podroute set.
// The pod end, the pod's host routes and the permanent neighbour entries go with them.
func (u *run) veths() {
	links, err := netlinksafe.LinkList()
	if err != nil {
		u.fail(KindVeth, "*", fmt.Errorf("listing interfaces: %w", err))
		return
	}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || !strings.HasPrefix(a.Name, cni.HostVethPrefix) || !cni.IsPodrouteAlias(a.Alias) {
			continue
		}
		u.do(KindVeth, a.Name+" ("+a.Alias+")", func() error {
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				return err
			}
			return nil
		})
	}
}

// routes removes every route with podroute's protocol number, in every table: the agent's
// (through the agent's own reconciler, with an empty desired set) and whatever else carries
// the protocol, such as a plugin route whose veth survived.
func (u *run) routes(all []netlink.Route, names []string) {
	if u.opts.DryRun {
		for _, name := range names {
			u.do(KindRoute, name, nil)
		}
		return
	}
	var agentErr error
	if rec, err := routes.NewReconciler(routes.Options{Logger: u.log}); err != nil {
		agentErr = err
	} else {
		res, err := rec.Reconcile(nil)
		_ = rec.Close()
		agentErr = errors.Join(err, res.Err())
	}
	left, err := dumpOwned()
	if err != nil {
		u.fail(KindRoute, "*", err)
		return
	}
	for i := range left {
		r := &left[i]
		if err := netlink.RouteDel(routes.DeleteKey(r)); err != nil && !errors.Is(err, unix.ESRCH) {
			u.fail(KindRoute, describe(r), err)
		}
	}
	// Report each route found at the start; those still present failed.
	remaining, err := dumpOwned()
	if err != nil {
		u.fail(KindRoute, "*", err)
		return
	}
	still := map[string]bool{}
	for i := range remaining {
		still[routeKey(&remaining[i])] = true
	}
	for i := range all {
		key := routeKey(&all[i])
		u.do(KindRoute, names[i], func() error {
			if still[key] {
				return errors.Join(errors.New("still present"), agentErr)
			}
			return nil
		})
	}
}

// dumpOwned lists the routes with podroute's protocol in every table, both families.
func dumpOwned() ([]netlink.Route, error) {
	var out []netlink.Route
	filter := &netlink.Route{Protocol: routes.Protocol, Table: unix.RT_TABLE_UNSPEC}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlinksafe.RouteListFiltered(fam, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("listing protocol %d routes: %w", routes.Protocol, err)
		}
		for _, r := range rs {
			if r.Protocol == routes.Protocol {
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b netlink.Route) int { return strings.Compare(describe(&a), describe(&b)) })
	return out, nil
}

func describe(r *netlink.Route) string {
	var b strings.Builder
	if r.Type == unix.RTN_BLACKHOLE {
		b.WriteString("blackhole ")
	}
	if r.Dst != nil {
		b.WriteString(r.Dst.String())
	} else if r.Family == unix.AF_INET6 {
		b.WriteString("::/0")
	} else {
		b.WriteString("0.0.0.0/0")
	}
	if r.Gw != nil {
		b.WriteString(" via " + r.Gw.String())
	}
	for _, nh := range r.MultiPath {
		b.WriteString(" nexthop via " + nh.Gw.String())
	}
	if r.Gw == nil && len(r.MultiPath) == 0 && r.LinkIndex > 0 && r.Type != unix.RTN_BLACKHOLE {
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			b.WriteString(" dev " + l.Attrs().Name)
		} else {
			fmt.Fprintf(&b, " dev #%d", r.LinkIndex)
		}
	}
	fmt.Fprintf(&b, " proto %d", r.Protocol)
	if r.Table != unix.RT_TABLE_MAIN {
		fmt.Fprintf(&b, " table %d", r.Table)
	}
	if r.Priority != 0 {
		fmt.Fprintf(&b, " metric %d", r.Priority)
	}
	return b.String()
}

// routeKey identifies a route across dumps, whatever became of its link's name.
func routeKey(r *netlink.Route) string {
	return fmt.Sprintf("%d|%d|%v|%v|%d|%d|%d", r.Table, r.Type, r.Dst, r.Gw, r.LinkIndex, r.Priority, len(r.MultiPath))
}

// nftables removes podroute's nftables tables: inet podroute (the egress masquerade) and
// inet podroute-policy (NetworkPolicy). Removing the policy table opens every pod of the node:
// uninstalling podroute leaves the node without NetworkPolicy enforcement, as without its CNI.
func (u *run) nftables(ctx context.Context) {
	if _, err := exec.LookPath("nft"); err != nil {
		// The agent's rules cannot have been written without nft either.
		u.log.Warn("nft not found: tables inet "+egress.TableName+" and inet "+policy.TableName+" not checked", "err", err)
		return
	}
	u.nftTable(ctx, egress.TableName, func() error {
		m, err := egress.New(u.log)
		if err != nil {
			return err
		}
		return m.Remove(ctx)
	})
	u.nftTable(ctx, policy.TableName, func() error {
		r, err := policy.New(u.log)
		if err != nil {
			return err
		}
		return r.Remove(ctx)
	})
}

// nftTable removes one table with remove, when it exists.
func (u *run) nftTable(ctx context.Context, table string, remove func() error) {
	name := "inet " + table
	nft, err := knftables.New(knftables.InetFamily, table)
	if err != nil {
		u.fail(KindNFTable, name, fmt.Errorf("nftables is not usable (set SkipNFTables on a node without nft): %w", err))
		return
	}
	// Listing the table fails with "not found" when there is none (List would not: it
	// filters a listing of the whole family).
	if _, err := nft.ListRules(ctx, ""); knftables.IsNotFound(err) {
		return
	} else if err != nil {
		u.fail(KindNFTable, name, err)
		return
	}
	u.do(KindNFTable, name, remove)
}

// dataDir removes the IPAM reservations, the whole data directory.
func (u *run) dataDir() {
	d := u.opts.CNI.DataDir
	st, err := os.Lstat(d)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		u.fail(KindIPAMData, d, err)
		return
	}
	if !st.IsDir() {
		u.fail(KindIPAMData, d, errors.New("not a directory"))
		return
	}
	u.do(KindIPAMData, d, func() error { return os.RemoveAll(d) })
}

// socket removes the agent's socket (and the temporary sockets a crash may leave next to it)
// and then its directory if nothing else is in it.
func (u *run) socket() {
	dir, base := filepath.Split(u.opts.Socket)
	dir = filepath.Clean(dir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		u.fail(KindSocket, u.opts.Socket, err)
		return
	}
	others := 0
	for _, e := range entries {
		if e.Name() != base && !strings.HasPrefix(e.Name(), base+".") && !strings.HasPrefix(e.Name(), "."+base) {
			others++
			continue
		}
		if e.Type()&fs.ModeSocket == 0 {
			others++
			continue
		}
		p := filepath.Join(dir, e.Name())
		u.do(KindSocket, p, func() error { return ignoreNotExist(os.Remove(p)) })
	}
	if others == 0 && filepath.Base(dir) == "podroute" {
		u.do(KindSocketDir, dir, func() error {
			err := os.Remove(dir)
			if errors.Is(err, unix.EBUSY) {
				// Someone else's mount (a container's hostPath volume, an operator's
				// tmpfs): its contents were ours and are gone, the mount point is not.
				return errKept
			}
			return ignoreNotExist(err)
		})
	}
}

// agentRunning reports whether something accepts connections on the agent's socket.
func agentRunning(socket string) bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func ignoreNotExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
