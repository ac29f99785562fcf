#!/usr/bin/env bash
# Installs the reference CNI plugins (ptp, host-local, loopback, bridge, portmap) and cnitool, at
# the versions pinned in go.mod, into DIR (default: <repo>/build/ref-cni). The integration tests and
# benchmarks under test/ run podroute side by side with these, and podroute's image carries this
# portmap, which the agent chains after podroute for hostPort (hack/image -portmap).
#
# Usage: hack/install-ref-cni.sh [DIR]
set -euo pipefail

PLUGINS_VERSION=v1.9.1
CNI_VERSION=v1.3.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-${repo}/build/ref-cni}"
mkdir -p "${dir}"
dir="$(cd "${dir}" && pwd)"

want_version() {
	# Prints the module version a binary was built from, or nothing.
	go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

static() {
	# Whether a binary was built without cgo, so it runs on any host's libc (or none).
	go version -m "$1" 2>/dev/null | grep -q '^[[:space:]]*build[[:space:]]*CGO_ENABLED=0$'
}

install() {
	local pkg="$1" version="$2" name
	name="$(basename "${pkg}")"
	if [[ -x "${dir}/${name}" && "$(want_version "${dir}/${name}")" == "${version}" ]] && static "${dir}/${name}"; then
		echo "ok        ${name} ${version}"
		return
	fi
	echo "install   ${name} ${version}"
	# Outside any module, so the plugins' own go.mod decides the build. Static, as upstream
	# releases them: podroute's image carries portmap onto nodes whose libc it does not know.
	(cd / && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="${dir}" go install "${pkg}@${version}")
}

install github.com/containernetworking/plugins/plugins/main/ptp "${PLUGINS_VERSION}"
install github.com/containernetworking/plugins/plugins/ipam/host-local "${PLUGINS_VERSION}"
install github.com/containernetworking/plugins/plugins/main/loopback "${PLUGINS_VERSION}"
install github.com/containernetworking/plugins/plugins/main/bridge "${PLUGINS_VERSION}"
install github.com/containernetworking/plugins/plugins/meta/portmap "${PLUGINS_VERSION}"
install github.com/containernetworking/cni/cnitool "${CNI_VERSION}"

echo "reference CNI plugins in ${dir}"
