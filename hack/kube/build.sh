#!/usr/bin/env bash
# Builds the Kubernetes binaries that podroute's tests run against, all from the one pinned
# k8s.io/kubernetes release:
#   kube-apiserver           a real API server (test/kube starts it in front of a real etcd)
#   kubelet                  for node-level tests
#   kube-controller-manager, kube-scheduler, kubectl
#                            for the tests that install podroute with `kubectl apply -f
#                            deploy/` and let the controllers and the scheduler place pods
#   kube-proxy               Services, as a DaemonSet in the image test/e2eimage builds
#   agnhost                  Kubernetes' e2e test image's binary
#                            (k8s.io/kubernetes/test/images/agnhost), `--version` 2.53
#   regression-issue-74839   the conntrack spec's test image's binary (test/images/...)
#   e2e.test                 Kubernetes' own end-to-end suite (go test -c of test/e2e)
# and, at the versions that release pins:
#   ginkgo                   the CLI of the github.com/onsi/ginkgo/v2 its go.mod requires,
#                            to run e2e.test's specs in parallel (ginkgo -p ... e2e.test)
#   coredns                  the CoreDNS release kubeadm v1.32 deploys (CoreDNSVersion)
#
# Usage: hack/kube/build.sh [--out DIR] [--no-kubelet] [--only T1,T2] [--force] [DIR]
#
#   DIR / --out DIR   output directory (default: $PODROUTE_KUBE_BIN, else
#                     /var/cache/podroute/kube/v1.32.4/bin)
#   --no-kubelet      leave the kubelet out
#   --only T1,T2      build only these targets (names as above)
#   --force           rebuild even if up-to-date binaries exist
#
# Environment:
#   PODROUTE_KUBE_BIN        output directory (see above)
#   PODROUTE_KUBE_BUILD_DIR  scratch module used for the build
#                            (default: /var/cache/podroute/kube-build/v1.32.4)
#
# Idempotent: a binary is rebuilt when it is missing, when it does not report the expected
# version, or when the recipe it was built with (package, version, linker flags, Go
# toolchain; recorded in DIR/.stamps/<target> with the binary's size and time) is not
# this script's. CI on a reused machine pays a second or two (each binary's --version); a
# fresh machine builds everything. Build times measured on this project's 2-core machine
# (Go 1.26, modules already downloaded; other builds ran at the same time, load 2 to 12):
#   the first five targets together, cold                         17m
#   each new target alone, with an empty Go build cache:
#     ginkgo 29s   agnhost 2m51s   coredns 3m28s   kube-proxy 5m34s   e2e.test 13m20s
#   each new target after the first five, in one run (what a fresh machine pays on top):
#     kube-proxy 12s   agnhost 4s   coredns 2m59s   ginkgo 5s   e2e.test 3m17s
# A rebuild with a warm cache (--force, or a new recipe) is mostly linking: 4-7s a binary.
#
# Packages the harness needs at run time, which this script does NOT install:
#   apt-get install -y etcd-server   # /usr/bin/etcd (3.4.x), backs kube-apiserver
# Build needs: a Go toolchain (go on PATH) and access to the Go module proxy.
set -euo pipefail

KUBE_VERSION=v1.32.4
# Staging modules (k8s.io/api, client-go, ...) are released as v0.<minor>.<patch>.
STAGING_VERSION=v0.${KUBE_VERSION#v1.}
# test/images/agnhost/VERSION in the release: the tag of registry.k8s.io/e2e-test-images/agnhost
# its e2e suite runs.
AGNHOST_VERSION=2.53
# github.com/onsi/ginkgo/v2 as the release's go.mod requires it.
GINKGO_VERSION=v2.21.0
# CoreDNSVersion in the release's cmd/kubeadm/app/constants.
COREDNS_VERSION=v1.11.3
# Bumped when a build step changes in a way the recipe below does not capture.
RECIPE_REVISION=1

OUT_DIR="${PODROUTE_KUBE_BIN:-/var/cache/podroute/kube/${KUBE_VERSION}/bin}"
BUILD_DIR="${PODROUTE_KUBE_BUILD_DIR:-/var/cache/podroute/kube-build/${KUBE_VERSION}}"
ALL_TARGETS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl kube-proxy agnhost regression-issue-74839 coredns ginkgo e2e.test)
TARGETS=("${ALL_TARGETS[@]}")
FORCE=0

log() { printf '[kube-build] %s\n' "$*" >&2; }
die() { printf '[kube-build] ERROR: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --no-kubelet) TARGETS=("${TARGETS[@]/kubelet}"); shift ;;
    --with-kubectl) shift ;; # kubectl is always built now; kept for old callers
    --only|--only=*)
      if [[ "$1" == --only ]]; then [[ $# -ge 2 ]] || die "--only needs targets"; list="$2"; shift 2
      else list="${1#--only=}"; shift; fi
      TARGETS=()
      for t in ${list//,/ }; do
        [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target $t (one of: ${ALL_TARGETS[*]})"
        TARGETS+=("$t")
      done ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    -*) die "unknown flag: $1 (see --help)" ;;
    *) OUT_DIR="$1"; shift ;;
  esac
done
# Drop targets blanked out by --no-kubelet.
read -ra TARGETS <<< "${TARGETS[*]}"

command -v go >/dev/null 2>&1 || die "go not found on PATH; install Go first"
GO_VERSION="$(go env GOVERSION)"

# How each target is built: "build PKG" (go build in the scratch module), "test PKG" (go test
# -c there) or "install PKG@VERSION" (go install outside any module: that module's own go.mod
# decides).
how() {
  case "$1" in
    kube-proxy|kube-apiserver|kubelet|kube-controller-manager|kube-scheduler|kubectl)
      echo "build k8s.io/kubernetes/cmd/$1" ;;
    agnhost|regression-issue-74839) echo "build k8s.io/kubernetes/test/images/$1" ;;
    e2e.test) echo "test k8s.io/kubernetes/test/e2e" ;;
    ginkgo) echo "install github.com/onsi/ginkgo/v2/ginkgo@$GINKGO_VERSION" ;;
    coredns) echo "install github.com/coredns/coredns@$COREDNS_VERSION" ;;
  esac
}

# The version a target must report.
want_version() {
  case "$1" in
    agnhost) echo "$AGNHOST_VERSION" ;;
    ginkgo) echo "${GINKGO_VERSION#v}" ;;
    coredns) echo "${COREDNS_VERSION#v}" ;;
    *) echo "$KUBE_VERSION" ;;
  esac
}

# Prints the version a binary reports, or nothing if it cannot run.
binary_version() {
  local bin="$1" name="$2"
  [[ -x "$bin" ]] || return 0
  case "$name" in
    kubectl) "$bin" version --client 2>/dev/null | sed -n 's/^Client Version: //p' ;;
    agnhost) "$bin" --version 2>/dev/null | sed -n 's/^app version //p' ;;
    e2e.test) "$bin" --version 2>/dev/null | head -n 1 ;;
    ginkgo) "$bin" version 2>/dev/null | sed -n 's/^Ginkgo Version //p' ;;
    coredns) "$bin" -version 2>/dev/null | sed -n 's/^CoreDNS-//p' ;;
    # No version flag: the release it was built from, as its build information records it.
    regression-issue-74839) go version -m "$bin" 2>/dev/null | awk '($1 == "mod" || $1 == "dep") && $2 == "k8s.io/kubernetes" { print $3 }' ;;
    *) "$bin" --version 2>/dev/null | sed -n 's/^Kubernetes //p' ;;
  esac
}

# Linker flags. Same version stamping as Kubernetes' hack/lib/version.sh, so --version reports
# the release (and this script can tell a binary is current); the build date is left out of
# the recipe. KUBE_COMMIT and COREDNS_COMMIT are known once the modules are resolved.
KUBE_COMMIT="" COREDNS_COMMIT=""
ldflags_for() {
  local t="$1" date="${2:-}" f="-s -w" pkg minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  case "$t" in
    agnhost) f+=" -X main.Version=$AGNHOST_VERSION" ;;
    ginkgo) ;;
    coredns) [[ -n "$COREDNS_COMMIT" ]] && f+=" -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_COMMIT" ;;
    *)
      for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        f+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
        [[ -n "$date" ]] && f+=" -X $pkg.buildDate=$date"
        [[ -n "$KUBE_COMMIT" ]] && f+=" -X $pkg.gitCommit=$KUBE_COMMIT"
      done ;;
  esac
  echo "$f"
}

# The recipe a target is built with: what decides its bytes, bar the build date.
recipe() {
  local t="$1"
  printf '%s\n' "revision=$RECIPE_REVISION" "target=$t" "how=$(how "$t")" "version=$(want_version "$t")" \
    "ldflags=$(ldflags_for "$t")" "go=$GO_VERSION" "cgo=0" "trimpath" | sha256sum | cut -d' ' -f1
}

stamp_of() { echo "$OUT_DIR/.stamps/$1"; }
# What the stamp records: the recipe and the binary's size and modification time, so a
# binary put there by other means is not taken for this script's.
stamp_line() { echo "recipe $(recipe "$1") binary $(stat -c '%s %Y' "$OUT_DIR/$1")"; }

# Fills needed[] with the targets whose binary is missing or stale.
compute_needed() {
  needed=()
  local t have
  for t in "${TARGETS[@]}"; do
    have="$(binary_version "$OUT_DIR/$t" "$t" || true)"
    if [[ $FORCE -eq 0 && "$have" == "$(want_version "$t")" && -f "$(stamp_of "$t")" &&
          "$(cat "$(stamp_of "$t")")" == "$(stamp_line "$t")" ]]; then
      log "$t $have already present in $OUT_DIR, skipping"
    else
      [[ -n "$have" && $FORCE -eq 0 ]] && log "$t $have in $OUT_DIR is not what this recipe last built there: rebuilding"
      needed+=("$t")
    fi
  done
}

# Commits and the module file are only known after resolving; the recipe check above must
# agree with the build below, so resolve before checking when the module cache has them.
resolve_commits() {
  local info
  info="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.info"
  [[ -f "$info" ]] && KUBE_COMMIT=$(sed -n 's/.*"Hash": *"\([0-9a-f]*\)".*/\1/p' "$info")
  info="$(go env GOMODCACHE)/cache/download/github.com/coredns/coredns/@v/$COREDNS_VERSION.info"
  [[ -f "$info" ]] && COREDNS_COMMIT=$(sed -n 's/.*"Hash": *"\([0-9a-f]\{7\}\)[0-9a-f]*".*/\1/p' "$info")
  return 0
}

resolve_commits
compute_needed
if [[ ${#needed[@]} -eq 0 ]]; then
  log "nothing to build"
  exit 0
fi

mkdir -p "$OUT_DIR/.stamps" "$BUILD_DIR" || die "cannot create $OUT_DIR or $BUILD_DIR"
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
kdir="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION"

# The pins above must be the release's own.
grep -qx "$AGNHOST_VERSION" "$kdir/test/images/agnhost/VERSION" ||
  die "agnhost $AGNHOST_VERSION pinned, the release says $(cat "$kdir/test/images/agnhost/VERSION")"
grep -q "^[[:space:]]*github.com/onsi/ginkgo/v2 $GINKGO_VERSION\$" "$gomod" ||
  die "ginkgo $GINKGO_VERSION pinned, the release's go.mod says: $(grep onsi/ginkgo "$gomod")"
grep -q "CoreDNSVersion = \"$COREDNS_VERSION\"" "$kdir/cmd/kubeadm/app/constants/constants.go" ||
  die "CoreDNS $COREDNS_VERSION pinned, kubeadm's constants say: $(grep 'CoreDNSVersion =' "$kdir/cmd/kubeadm/app/constants/constants.go")"

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

for t in "${needed[@]}"; do
  if [[ "$t" == coredns ]]; then
    (cd / && GOFLAGS= go mod download "github.com/coredns/coredns@$COREDNS_VERSION") ||
      die "could not download github.com/coredns/coredns@$COREDNS_VERSION"
  fi
done
# The module proxy may not say which commit a release is (then gitCommit stays unset, as
# before this script stamped it).
resolve_commits

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for t in "${needed[@]}"; do
  log "building $t $(want_version "$t") (cold build takes minutes)"
  t0=$SECONDS
  tmp="$OUT_DIR/.$t.tmp.$$"
  read -r mode pkg <<< "$(how "$t")"
  ldflags="$(ldflags_for "$t" "$build_date")"
  case "$mode" in
    build) cmd=(go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg"); dir="$BUILD_DIR" ;;
    test) cmd=(go test -c -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg"); dir="$BUILD_DIR" ;;
    install)
      # go install writes into GOBIN under the command's own name.
      gobin="$OUT_DIR/.$t.gobin.$$"
      mkdir -p "$gobin"
      cmd=(env GOFLAGS=-buildvcs=false GOBIN="$gobin" go install -trimpath -ldflags "$ldflags" "$pkg"); dir=/ ;;
  esac
  if ! (cd "$dir" && "${cmd[@]}"); then
    rm -rf "$tmp" "${gobin:-}"
    die "go build of $t failed (see output above)"
  fi
  if [[ "$mode" == install ]]; then
    mv -f "$gobin/$(basename "${pkg%@*}")" "$tmp"
    rm -rf "$gobin"
  fi
  # Rename into place so a concurrent reader never sees a half-written binary.
  mv -f "$tmp" "$OUT_DIR/$t"
  got="$(binary_version "$OUT_DIR/$t" "$t" || true)"
  [[ "$got" == "$(want_version "$t")" ]] || die "$OUT_DIR/$t reports version '$got', expected $(want_version "$t")"
  stamp_line "$t" > "$(stamp_of "$t").tmp" && mv -f "$(stamp_of "$t").tmp" "$(stamp_of "$t")"
  log "built $OUT_DIR/$t in $(( SECONDS - t0 ))s"
done

log "done in $(( SECONDS - start_all ))s: ${needed[*]} -> $OUT_DIR"
