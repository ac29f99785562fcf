#!/usr/bin/env bash
# podroute local lab: a node (a network namespace with an uplink-like dummy interface) and a few
# pods (network namespaces) wired by the podroute CNI plugin exactly as a runtime does it, then
# traffic host->pod and pod->pod over IPv4 and IPv6.
#
# Usage: hack/lab.sh [up|down]   (up, the default, tears down at the end unless LAB_KEEP=1)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=${LAB_PREFIX:-prlab}
NODE="${PREFIX}-node"
PODS=${LAB_PODS:-3}
WORK="/run/${PREFIX}"
CNITOOL="${repo}/build/ref-cni/cnitool"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

down() {
	for ns in $(ip netns list | awk '{print $1}' | grep "^${PREFIX}-" || true); do
		ip netns del "${ns}" 2>/dev/null || true
	done
	rm -rf "${WORK}"
}

in_node() { ip netns exec "${NODE}" "$@"; }

cni() { # cni add|del POD
	in_node env CNI_PATH="${repo}/bin" NETCONFPATH="${WORK}/net.d" \
		CNI_ARGS="K8S_POD_NAMESPACE=lab;K8S_POD_NAME=$2" "${CNITOOL}" "$1" podnet "/run/netns/$2"
}

up() {
	down
	[[ -x "${repo}/bin/podroute" ]] || { echo "bin/podroute missing: run make build" >&2; exit 1; }
	[[ -x "${CNITOOL}" ]] || "${repo}/hack/install-ref-cni.sh" >/dev/null
	mkdir -p "${WORK}/net.d"

	say "node ${NODE}: uplink 192.0.2.10/24, 2001:db8::10/64; pod CIDRs 10.244.1.0/24, fd00:10:244:1::/64"
	ip netns add "${NODE}"
	in_node ip link set lo up
	# A veth whose far end stays unplugged stands in for the uplink (no dummy driver everywhere).
	in_node ip link add uplink type veth peer name uplink-far
	in_node ip link set uplink-far up
	in_node ip addr add 192.0.2.10/24 dev uplink
	in_node ip addr add 2001:db8::10/64 dev uplink nodad
	in_node ip link set uplink up
	cat >"${WORK}/net.d/10-podroute.conflist" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "podnet",
  "plugins": [{
    "type": "podroute",
    "mtu": 1500,
    "ipam": {
      "type": "podroute-ipam",
      "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
      "dataDir": "${WORK}/ipam"
    }
  }]
}
JSON
	cat "${WORK}/net.d/10-podroute.conflist"

	say "ADD ${PODS} pods through the CNI plugin"
	for i in $(seq 1 "${PODS}"); do
		pod="${PREFIX}-pod${i}"
		ip netns add "${pod}"
		ip -n "${pod}" link set lo up
		cni add "${pod}" | jq -c '{pod: "'"${pod}"'", ips: [.ips[].address], host_if: .interfaces[0].name}'
	done

	say "pod ${PREFIX}-pod1 inside"
	ip -n "${PREFIX}-pod1" -br addr show dev eth0
	ip -n "${PREFIX}-pod1" route
	ip -n "${PREFIX}-pod1" -6 route show default

	say "node: host routes to pods (proto 201 = podroute)"
	in_node ip route show proto 201
	in_node ip -6 route show proto 201
	in_node ip -br link show type veth

	say "traffic"
	fail=0
	ping_from() { # NS DEST
		if ip netns exec "$1" ping -c 1 -W 2 -q "$2" >/dev/null 2>&1; then
			printf '  ok    %-14s -> %s\n' "$1" "$2"
		else
			printf '  FAIL  %-14s -> %s\n' "$1" "$2"; fail=1
		fi
	}
	for i in $(seq 1 "${PODS}"); do
		pod="${PREFIX}-pod${i}"
		v4=$(ip -n "${pod}" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
		v6=$(ip -n "${pod}" -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1)
		ping_from "${NODE}" "${v4}"
		ping_from "${NODE}" "${v6}"
		if ((i > 1)); then
			ping_from "${PREFIX}-pod1" "${v4}"
			ping_from "${PREFIX}-pod1" "${v6}"
		fi
	done

	say "DEL every pod: nothing may stay behind"
	for i in $(seq 1 "${PODS}"); do cni del "${PREFIX}-pod${i}"; done
	left_routes=$(in_node ip route show proto 201; in_node ip -6 route show proto 201)
	left_links=$(in_node ip -br link show type veth | grep '^pr' || true)
	# Reservations are files named by the address they hold.
	left_ips=$(ls "${WORK}/ipam/podnet" 2>/dev/null | grep -E '^[0-9a-f.:]+$' || true)
	echo "  routes left: ${left_routes:-none}"
	echo "  veths left:  ${left_links:-none}"
	echo "  reservations left: ${left_ips:-none}"
	[[ -z "${left_routes}${left_links}${left_ips}" ]] || fail=1

	if [[ "${LAB_KEEP:-0}" != 1 ]]; then down; fi
	if ((fail)); then say "lab: FAILED"; exit 1; fi
	say "lab: podroute works"
}

case "${1:-up}" in
	up) up ;;
	down) down ;;
	*) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac
