# shellcheck shell=bash
# Shared helpers for the e2e scripts. Source it; it defines paths and
# idempotent installers. Everything is cached under $HOOKWARDEN_CACHE so a
# second run costs nothing, and nothing is installed by hand.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export E2E_DIR # e2e/deliver's node snippet reads it
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
HOOKWARDEN_CACHE=${HOOKWARDEN_CACHE:-$HOME/.cache/hookwarden}
TOOLS_BIN=$HOOKWARDEN_CACHE/bin
# The pinned tools come first, whatever else the machine has.
export PATH=$TOOLS_BIN:$PATH
# Runtime state (data dirs, logs, pid files, kubeconfig) of the local system.
STATE_DIR=${HOOKWARDEN_STATE:-$HOOKWARDEN_CACHE/state}
ENV_FILE=$STATE_DIR/env

KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.4
HELM_VERSION=v3.19.5
# Images built here (e2e/images); none is ever pulled.
PAUSE_IMAGE=registry.k8s.io/pause:3.10
BUSYBOX_IMAGE=hookwarden.local/busybox:1.35
HOOKWARDEN_IMAGE_REPO=hookwarden.local/hookwarden
REDIS_IMAGE_REPO=hookwarden.local/redis

log() { printf '[e2e] %s\n' "$*" >&2; }
die() { printf '[e2e] error: %s\n' "$*" >&2; exit 1; }

# go_build NAME VERSION MODULE_DIR PACKAGE [LDFLAGS]
# Builds PACKAGE inside the wrapper module MODULE_DIR into
# $TOOLS_BIN/NAME-VERSION once, then links $TOOLS_BIN/NAME to it.
go_build() {
  local name=$1 version=$2 moddir=$3 pkg=$4 ldflags=${5:-}
  local out=$TOOLS_BIN/$name-$version
  mkdir -p "$TOOLS_BIN"
  if [[ ! -x $out ]]; then
    command -v go >/dev/null || die "go is required to build $name"
    log "building $name $version (first run only; cached in $TOOLS_BIN)"
    local start=$SECONDS
    (cd "$moddir" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    log "built $name in $((SECONDS - start))s"
  fi
  ln -sfn "$out" "$TOOLS_BIN/$name"
}

kube_ldflags() {
  local v=${KUBE_VERSION#v} p=k8s.io/component-base/version
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  echo "-X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor" \
       "-X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z" \
       "-X $p/verflag.programName=kubernetes"
}

ensure_etcd() {
  go_build etcd "$ETCD_VERSION" "$E2E_DIR/tools/etcd" .
}

ensure_kube() {
  local ld; ld=$(kube_ldflags)
  go_build kube-apiserver "$KUBE_VERSION" "$E2E_DIR/tools/kube" k8s.io/kubernetes/cmd/kube-apiserver "$ld"
  go_build kube-controller-manager "$KUBE_VERSION" "$E2E_DIR/tools/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$ld"
}

# The node's own programs, from the same module and release as the apiserver.
ensure_kube_node() {
  local ld; ld=$(kube_ldflags)
  go_build kubelet "$KUBE_VERSION" "$E2E_DIR/tools/kube" k8s.io/kubernetes/cmd/kubelet "$ld"
  go_build kube-proxy "$KUBE_VERSION" "$E2E_DIR/tools/kube" k8s.io/kubernetes/cmd/kube-proxy "$ld"
  go_build kube-scheduler "$KUBE_VERSION" "$E2E_DIR/tools/kube" k8s.io/kubernetes/cmd/kube-scheduler "$ld"
}

# helm as released: its Makefile stamps the Kubernetes version of its
# client-go (0.34 → 1.34) as the default for offline `helm template`; without
# it helm assumes v1.20 and refuses the chart's kubeVersion.
ensure_helm() {
  local client_go minor
  client_go=$(pinned helm k8s.io/client-go)
  minor=$(cut -d. -f2 <<<"$client_go")
  local k8s="-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  k8s+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  go_build helm "$HELM_VERSION-k8s1.$minor" "$E2E_DIR/tools/helm" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION $k8s"
}

# kubectl from the same release, so client and server are never skewed.
ensure_kubectl() {
  go_build kubectl "$KUBE_VERSION" "$E2E_DIR/tools/kube" k8s.io/kubernetes/cmd/kubectl "$(kube_ldflags)"
}

# apt_install PACKAGE...: Debian packages, installed once. A fresh machine
# has no package lists: update once, only when an install needs it.
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]} (Debian packages)"
  if [[ $(id -u) -ne 0 ]]; then die "${missing[*]} missing and apt-get needs root"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  }
}

ensure_redis() {
  command -v redis-server >/dev/null && return
  apt_install redis-server
  # Debian starts a system redis on 6379; the tests use their own on a free port.
  command -v systemctl >/dev/null && systemctl disable --now redis-server >/dev/null 2>&1 || true
}

# The node's container runtime and network: Debian's containerd 1.6 (it
# serves kubelet 1.34's CRI v1 with nothing patched), runc, the CNI plugins,
# nft for the confinement rules, busybox for the storage helper image.
ensure_node_packages() {
  command -v containerd >/dev/null && [[ -x /usr/lib/cni/bridge ]] && command -v nft >/dev/null &&
    [[ -x /bin/busybox ]] && command -v ip >/dev/null && command -v sysctl >/dev/null && return
  apt_install containerd runc containernetworking-plugins iptables nftables busybox-static iproute2 procps \
    ca-certificates
  # The package may start a system containerd; the node runs its own.
  command -v systemctl >/dev/null && systemctl disable --now containerd >/dev/null 2>&1 || true
}

# pinned DIR MODULE: the version of MODULE the wrapper module DIR requires.
pinned() { awk -v m="$2" '$1 == m {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$E2E_DIR/tools/$1/go.mod"; }

ensure_node_tools() {
  ensure_node_packages
  ensure_kube_node
  go_build coredns "$(pinned coredns github.com/coredns/coredns)" "$E2E_DIR/tools/coredns" .
  go_build local-path-provisioner "$(pinned local-path github.com/rancher/local-path-provisioner)" \
    "$E2E_DIR/tools/local-path" github.com/rancher/local-path-provisioner
  ensure_crane
}

ensure_crane() {
  go_build crane "$(pinned crane github.com/google/go-containerregistry)" "$E2E_DIR/tools/crane" \
    github.com/google/go-containerregistry/cmd/crane
}

# rustfmt and clippy run in e2e/test; rustup adds them where they are missing.
ensure_rust_components() {
  command -v cargo >/dev/null || die "cargo is required (install Rust with rustup)"
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
}

# GitHub's OpenAPI descriptions and example payloads, pinned in e2e/npm.
ensure_npm() {
  local dir=$E2E_DIR/npm
  command -v npm >/dev/null || die "npm is required (install Node.js)"
  if [[ ! -f $dir/node_modules/.package-lock.json || $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
    log "installing npm fixtures (cached by npm)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

# The status page is tested in a real headless Chromium (Debian's package).
ensure_chromium() {
  command -v chromium >/dev/null && return
  apt_install chromium
}

# Jaeger (its OTLP receiver and query API): the collector the tracing test sends to.
ensure_jaeger() {
  go_build jaeger "$(pinned jaeger github.com/jaegertracing/jaeger)" "$E2E_DIR/tools/jaeger" \
    github.com/jaegertracing/jaeger/cmd/jaeger
}

ensure_tools() {
  ensure_etcd
  ensure_kube
  ensure_helm
  ensure_kubectl
  ensure_node_tools
  ensure_redis
  ensure_npm
  ensure_chromium
  ensure_jaeger
}

# The cluster (control plane and node) with hookwarden's CRDs applied, and
# Redis; exports KUBECONFIG, REDIS_URL and the node's details. What e2e/up
# starts with, and all a benchmark that runs hookwarden from this tree needs.
cluster_and_redis_up() {
  ensure_tools
  "$E2E_DIR/cluster" up
  eval "$("$E2E_DIR/cluster" env)"
  # Server-side apply: the CRDs are too large for the last-applied annotation.
  kubectl apply --server-side --force-conflicts -f "$REPO_DIR/crds/" >/dev/null
  kubectl wait --for condition=Established --timeout 60s \
    crd/webhookconfigs.hookwarden.io crd/agentpolicies.hookwarden.io >/dev/null
  # Established comes before discovery and OpenAPI publish the new types.
  wait_for "CRD discovery" 60 kubectl explain whc.spec && wait_for "CRD discovery" 60 kubectl explain ap.spec ||
    die "the CRDs are established but kubectl cannot see them yet"
  "$E2E_DIR/redis" up
  eval "$("$E2E_DIR/redis" env)"
}

# free_port: an unused loopback port below the kernel's ephemeral range (as
# tests/common's free_port): a port the kernel picks for bind(0) is in that
# range, where any outgoing connection made before the listener binds it
# (the operator's, kubectl's) can take it as its own local port.
free_port() {
  python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
while True:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, max(low, 10001))))
    except OSError:
        continue
    print(s.getsockname()[1])
    break
'
}

# wait_for DESCRIPTION SECONDS CMD...: poll CMD until it succeeds; on
# timeout, say what was waited for and what CMD said last, and fail.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs)) out
  until out=$("$@" 2>&1); do
    if ((SECONDS >= deadline)); then
      log "timed out after ${secs}s waiting for $what; last answer: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
      return 1
    fi
    sleep 0.2
  done
}

# stop_pidfile FILE: TERM the process in FILE, then KILL it if it lingers.
stop_pidfile() {
  local f=$1 pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# alive PIDFILE: is the process recorded in PIDFILE running?
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
