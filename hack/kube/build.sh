#!/usr/bin/env bash
# Builds the Kubernetes binaries that podroute's tests run against: a real
# kube-apiserver (test/kube starts it in front of a real etcd), kubelet (for
# node-level tests), and kube-controller-manager, kube-scheduler and kubectl
# (for the test that installs podroute with `kubectl apply -f deploy/` and
# lets the DaemonSet controller and the scheduler place the agents).
#
# Usage: hack/kube/build.sh [--out DIR] [--no-kubelet] [--force] [DIR]
#
#   DIR / --out DIR   output directory (default: $PODROUTE_KUBE_BIN, else
#                     /var/cache/podroute/kube/v1.32.4/bin)
#   --no-kubelet      build kube-apiserver only
#   --force           rebuild even if up-to-date binaries exist
#
# Environment:
#   PODROUTE_KUBE_BIN        output directory (see above)
#   PODROUTE_KUBE_BUILD_DIR  scratch module used for the build
#                            (default: /var/cache/podroute/kube-build/v1.32.4)
#
# Idempotent: a binary is rebuilt only when missing or when its --version does
# not report the expected release, so CI on a reused machine pays nothing and
# a fresh machine builds everything (5 to 10 minutes on 2 cores; the Go build
# cache makes later rebuilds, e.g. after --force, take well under a minute).
#
# Packages the harness needs at run time, which this script does NOT install:
#   apt-get install -y etcd-server   # /usr/bin/etcd (3.4.x), backs kube-apiserver
# Build needs: a Go toolchain (go on PATH) and access to the Go module proxy.
set -euo pipefail

KUBE_VERSION=v1.32.4
# Staging modules (k8s.io/api, client-go, ...) are released as v0.<minor>.<patch>.
STAGING_VERSION=v0.${KUBE_VERSION#v1.}

OUT_DIR="${PODROUTE_KUBE_BIN:-/var/cache/podroute/kube/${KUBE_VERSION}/bin}"
BUILD_DIR="${PODROUTE_KUBE_BUILD_DIR:-/var/cache/podroute/kube-build/${KUBE_VERSION}}"
TARGETS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl)
FORCE=0

log() { printf '[kube-build] %s\n' "$*" >&2; }
die() { printf '[kube-build] ERROR: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --no-kubelet) TARGETS=("${TARGETS[@]/kubelet}"); shift ;;
    --with-kubectl) shift ;; # kubectl is always built now; kept for old callers
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    -*) die "unknown flag: $1 (see --help)" ;;
    *) OUT_DIR="$1"; shift ;;
  esac
done
# Drop targets blanked out by --no-kubelet.
read -ra TARGETS <<< "${TARGETS[*]}"

command -v go >/dev/null 2>&1 || die "go not found on PATH; install Go first"

# Prints the version a binary reports, or nothing if it cannot run.
binary_version() {
  local bin="$1" name="$2"
  [[ -x "$bin" ]] || return 0
  case "$name" in
    kubectl) "$bin" version --client 2>/dev/null | sed -n 's/^Client Version: //p' ;;
    *) "$bin" --version 2>/dev/null | sed -n 's/^Kubernetes //p' ;;
  esac
}

# Fills needed[] with the targets whose binary is missing or stale.
compute_needed() {
  needed=()
  local t have
  for t in "${TARGETS[@]}"; do
    have="$(binary_version "$OUT_DIR/$t" "$t" || true)"
    if [[ $FORCE -eq 0 && "$have" == "$KUBE_VERSION" ]]; then
      log "$t $KUBE_VERSION already present in $OUT_DIR, skipping"
    else
      needed+=("$t")
    fi
  done
}

compute_needed
if [[ ${#needed[@]} -eq 0 ]]; then
  log "nothing to build"
  exit 0
fi

mkdir -p "$OUT_DIR" "$BUILD_DIR" || die "cannot create $OUT_DIR or $BUILD_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

# Parallel test runs or CI jobs on one machine must not build into the same
# directory at once; whoever waits re-checks and usually finds nothing to do.
exec 9>"$BUILD_DIR/.lock"
if ! flock -n 9; then
  log "another build holds $BUILD_DIR/.lock, waiting"
  flock 9
  FORCE=0
  compute_needed
  if [[ ${#needed[@]} -eq 0 ]]; then
    log "nothing to build"
    exit 0
  fi
fi

start_all=$SECONDS

# Isolate the build from the caller's Go settings: it lives in its own module,
# outside any workspace, and resolves with -mod=mod into its own go.sum.
# k8s.io/kubernetes and several staging releases have no checksum-database
# entry, so verification against sum.golang.org is off for k8s.io only.
export GOWORK=off
export GOFLAGS="-mod=mod -buildvcs=false"
export GONOSUMDB="k8s.io/*"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0

log "go: $(go version)"
log "resolving k8s.io/kubernetes@$KUBE_VERSION"
t0=$SECONDS
gomod="$(cd / && GOFLAGS= go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
  | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
[[ -n "$gomod" && -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION (module proxy reachable?)"

# Kubernetes' own go.mod points every staging module at ./staging; a consumer
# must replace each one with its published release instead.
staging=$(sed -n '/^replace (/,/^)/s#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod")
[[ -n "$staging" ]] || die "no staging replace block found in $gomod"

modfile="$(
  echo "// Generated by podroute hack/kube/build.sh; safe to delete."
  echo "module podroute.test/kube-build"
  echo
  echo "go $(sed -n 's/^go //p' "$gomod")"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m $STAGING_VERSION"; done
  echo ")"
)"
# A go.sum from a previous run is reusable only for the same module file.
if [[ ! -f "$BUILD_DIR/go.mod" || "$(cat "$BUILD_DIR/go.mod")" != "$modfile" ]]; then
  rm -f "$BUILD_DIR/go.sum"
  printf '%s\n' "$modfile" > "$BUILD_DIR/go.mod"
fi
log "module ready ($(( SECONDS - t0 ))s, $(wc -w <<< "$staging") staging modules pinned to $STAGING_VERSION)"

# Same version stamping as Kubernetes' hack/lib/version.sh, so --version
# reports the release (and this script can tell a binary is current).
commit=$(sed -n 's/.*"Hash": *"\([0-9a-f]*\)".*/\1/p' "${gomod%.mod}.info" 2>/dev/null || true)
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  [[ -n "$commit" ]] && ldflags+=" -X $pkg.gitCommit=$commit"
done

for t in "${needed[@]}"; do
  log "building $t $KUBE_VERSION (cold build takes minutes)"
  t0=$SECONDS
  tmp="$OUT_DIR/.$t.tmp.$$"
  if ! (cd "$BUILD_DIR" && go build -trimpath -ldflags "$ldflags" -o "$tmp" "k8s.io/kubernetes/cmd/$t"); then
    rm -f "$tmp"
    die "go build of $t failed (see output above)"
  fi
  # Rename into place so a concurrent reader never sees a half-written binary.
  mv -f "$tmp" "$OUT_DIR/$t"
  got="$(binary_version "$OUT_DIR/$t" "$t" || true)"
  [[ "$got" == "$KUBE_VERSION" ]] || die "$OUT_DIR/$t reports version '$got', expected $KUBE_VERSION"
  log "built $OUT_DIR/$t in $(( SECONDS - t0 ))s"
done

log "done in $(( SECONDS - start_all ))s: ${needed[*]} -> $OUT_DIR"
