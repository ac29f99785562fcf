#!/usr/bin/env bash
# Installs what podroute's lab and test suite need on a fresh Debian machine (run as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail

PACKAGES=(
  iproute2        # ip netns, veth: nodes and pods are network namespaces
  iputils-ping    # ping across pods and nodes
  jq              # JSON in shell
  make
  etcd-server     # backs the real kube-apiserver in the agent tests
  nftables        # egress masquerade (nft, driven through knftables)
  iperf3          # data path benchmark
  containerd      # the kubelet end-to-end test and the image import check
  runc
  frr             # top-of-rack routers in the lab and tests (zebra, bgpd)
  debootstrap     # the Debian root file system of the e2e suite's offline images (test/e2eimage)
  iptables        # kube-proxy's rules, looked at from a node (its image carries its own)
  conntrack       # kube-proxy's conntrack entries, looked at from a node
  curl            # NodePort and hostPort checks from a node of the test cluster (test/cluster)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the packaged etcd as a service; podroute's tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi

if ! command -v go >/dev/null; then
  echo "setup: Go is required (go.mod names the version)" >&2
  exit 1
fi
echo "setup: ok"
