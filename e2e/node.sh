# shellcheck shell=bash
# The local cluster's one node, sourced by e2e/cluster: containerd (Debian's
# 1.6, CRI v1) with runc and the CNI bridge plugin, the kubelet, kube-proxy and
# kube-scheduler from the same release as the apiserver, CoreDNS for
# cluster.local, and Rancher's local-path provisioner for PVCs. Every image it
# runs (the pause image included) is built here by e2e/images; nothing is
# pulled, and containerd's registry traffic goes to a dead loopback proxy.
#
# Confinement (this machine must never send pod or Service traffic
# elsewhere): the pod bridge has no uplink, CNI does not masquerade, the
# Service range is routed onto the bridge, the nft table `hookwarden` drops
# anything forwarded from the pod bridge or the pod and Service ranges to any
# other destination, and CoreDNS has no forward plugin compiled in.
#
# Everything it creates lives under $NODE_DIR, except what the components
# insist on (/run/containerd, /var/lib/cni, /var/log/pods, /var/log/containers,
# /var/lib/kubelet/device-plugins, /var/run/netns, cgroups, iptables chains,
# host sysctls): node_down removes or restores each, then node_leftovers checks.

NODE_DIR=$CLUSTER_DIR/node
NODE_NAME=hookwarden-node
BRIDGE=hookwarden0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
CONTAINERD_SOCK=$NODE_DIR/containerd/containerd.sock
SYSCTLS_FILE=$CLUSTER_DIR/../node-sysctls # outlives CLUSTER_DIR until restored
# The host's own veths and KUBE-* chains before the node came up (Docker,
# k3s, kind...): never removed, never counted as left behind.
HOST_NET_FILE=${CLUSTER_DIR%/*}/node-host-net
# The kubelet's cgroup root in every hierarchy: the node's pods, and nothing else.
CGROUP_ROOT=hookwarden
# Host paths the node's components write whatever their configuration says.
HOST_PATHS=(/run/containerd /var/lib/cni /var/log/pods /var/log/containers /var/lib/kubelet /var/run/netns)
# Host sysctls the kubelet and the bridge plugin change.
NODE_SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# host_net: the veths and KUBE-* chains on the host now, a line each
# (`veth NAME`, `chain iptables TABLE NAME`).
host_net() {
  local ipt t
  for ipt in iptables ip6tables; do
    for t in filter nat mangle; do
      { $ipt -t "$t" -S 2>/dev/null || true; } | awk -v p="$ipt $t" '$1 == "-N" && $2 ~ /^KUBE-/ {print "chain", p, $2}'
    done
  done
  { ip -o link show type veth 2>/dev/null || true; } | awk -F': ' '{split($2, n, "@"); print "veth", n[1]}'
}

# had WHAT...: was it the host's before the node came up?
had() { [[ -f $HOST_NET_FILE ]] && grep -qxF "$*" "$HOST_NET_FILE"; }

# Network: the bridge (no uplink), the Service route, the confinement table.
node_net_up() {
  local state=$CLUSTER_DIR/../node-host-paths
  # Remember what the host had, to restore it exactly on down.
  if [[ ! -f $SYSCTLS_FILE ]]; then
    for s in "${NODE_SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$SYSCTLS_FILE"
    for p in "${HOST_PATHS[@]}"; do [[ -e $p ]] && echo "$p"; done >"$state" || true
  fi
  [[ -f $HOST_NET_FILE ]] || host_net >"$HOST_NET_FILE"
  ip link add "$BRIDGE" type bridge 2>/dev/null || true
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Host traffic to a Service address is DNATed by kube-proxy; one with no
  # rule yet goes onto the bridge (where nothing answers), never the uplink.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  # Pod-to-Service replies cross the bridge: they must meet conntrack.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  nft -f - <<NFT
table inet hookwarden
delete table inet hookwarden
table inet hookwarden {
  comment "hookwarden e2e node: pod and Service traffic never leaves this machine"
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname "$BRIDGE" oifname != "$BRIDGE" drop
    ip saddr { $POD_CIDR, $SERVICE_CIDR } ip daddr != $POD_CIDR drop
    meta nfproto ipv6 iifname "$BRIDGE" drop
  }
}
NFT
}

# cert material for the node's components (called from make_pki).
node_pki() {
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  # The kubelet's serving certificate, checked by the apiserver.
  cert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  cert apiserver-kubelet-client "/CN=hookwarden-e2e:apiserver-kubelet-client"
  cert kube-proxy "/CN=system:kube-proxy"
  cert scheduler "/CN=system:kube-scheduler"
  cert dns "/CN=hookwarden-e2e:dns"
  cert local-path "/CN=hookwarden-e2e:local-path"
}

# RBAC for the host components that have no built-in role.
node_rbac() {
  kubectl --kubeconfig "$KUBECONFIG_FILE" apply -f - >/dev/null <<'YAML'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "hookwarden-e2e:apiserver-kubelet-client"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "hookwarden-e2e:apiserver-kubelet-client"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "hookwarden-e2e:dns"}
rules:
  - apiGroups: [""]
    resources: [services, namespaces, pods]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "hookwarden-e2e:dns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "hookwarden-e2e:dns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "hookwarden-e2e:dns"}]
---
apiVersion: v1
kind: Namespace
metadata: {name: local-path-storage}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: local-path-provisioner, namespace: local-path-storage}
---
# Rancher's own rules (deploy/local-path-storage.yaml), for the host process.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "hookwarden-e2e:local-path"}
rules:
  - apiGroups: [""]
    resources: [nodes, persistentvolumeclaims, configmaps, pods, pods/log]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [pods]
    verbs: [create, delete, patch, update]
  - apiGroups: [""]
    resources: [persistentvolumes]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [""]
    resources: [events]
    verbs: [create, patch]
  - apiGroups: [storage.k8s.io]
    resources: [storageclasses]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "hookwarden-e2e:local-path"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "hookwarden-e2e:local-path"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "hookwarden-e2e:local-path"}]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
YAML
}

node_containerd_config() {
  mkdir -p "$NODE_DIR/containerd" "$NODE_DIR/cni"
  cat >"$NODE_DIR/containerd/config.toml" <<TOML
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$NODE_DIR/containerd/containerd-ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here has no CAP_SYS_RESOURCE: never lower a process's oom_score_adj.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
TOML
  cat >"$NODE_DIR/cni/10-hookwarden.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "hookwarden",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$NODE_DIR/cni-ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

node_kubelet_config() {
  mkdir -p "$NODE_DIR/kubelet"
  # Pods with dnsPolicy Default get the cluster DNS too, never the host's resolver.
  echo "nameserver $NODE_IP" >"$NODE_DIR/resolv.conf"
  cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
# The node's pods live under a cgroup of its own, so that down finds them,
# and only them, on a host that runs pods of its own (Docker, k3s).
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
# No CAP_SYS_RESOURCE: leave the kubelet's own oom_score_adj alone.
oomScoreAdj: 0
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $NODE_DIR/resolv.conf
podCIDR: $POD_CIDR
volumePluginDir: $NODE_DIR/kubelet-plugins
# Images are imported, never pulled: never collect them, and do not evict on
# a development disk that is merely full-ish.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
makeIPTablesUtilChains: false
serializeImagePulls: false
YAML
  cat >"$NODE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: [$NODE_IP/32]
# Write no conntrack sysctls and no route_localnet.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: false}
YAML
  cat >"$NODE_DIR/Corefile" <<COREFILE
cluster.local:53 {
  bind $NODE_IP
  ready 127.0.0.1:$DNS_READY_PORT
  health 127.0.0.1:$DNS_HEALTH_PORT
  errors
  cache 5
  kubernetes cluster.local {
    kubeconfig $CLUSTER_DIR/dns.kubeconfig hookwarden-e2e
  }
}
COREFILE
}

# local-path-provisioner's configuration: volumes under $NODE_DIR/volumes,
# made by a helper pod from the busybox image built here.
node_local_path_config() {
  kubectl --kubeconfig "$KUBECONFIG_FILE" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: local-path-config, namespace: local-path-storage}
data:
  config.json: '{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$NODE_DIR/volumes"]}]}'
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata: {name: helper-pod}
    spec:
      containers:
        - name: helper-pod
          image: $BUSYBOX_IMAGE
          imagePullPolicy: Never
YAML
}

node_up() {
  mkdir -p "$NODE_DIR"
  KUBELET_PORT=$(free_port) KUBELET_HEALTHZ_PORT=$(free_port) PROXY_HEALTHZ_PORT=$(free_port)
  PROXY_METRICS_PORT=$(free_port) DNS_READY_PORT=$(free_port) DNS_HEALTH_PORT=$(free_port)
  SCHEDULER_PORT=$(free_port)
  local k
  for k in kubelet kube-proxy scheduler dns local-path; do kubeconfig "$CLUSTER_DIR/$k.kubeconfig" "$k"; done
  node_rbac
  node_containerd_config
  node_kubelet_config

  # Images are imported, never pulled: a pull (an image a test does not
  # have) goes to a proxy address where nothing listens, so not even a DNS
  # query for a registry leaves the machine.
  start containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "$NODE_DIR/containerd/config.toml"
  wait_for containerd 60 ctr_ version || failed containerd
  "$E2E_DIR/images" node "$CONTAINERD_SOCK" || die "could not build and import the node's images"

  start kube-scheduler kube-scheduler \
    --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false
  node_cgroups
  start kubelet kubelet --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" --root-dir "$NODE_DIR/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --cert-dir "$NODE_DIR/kubelet-pki"
  start kube-proxy kube-proxy --config "$NODE_DIR/kube-proxy.yaml"
  start coredns coredns -conf "$NODE_DIR/Corefile" -pidfile ""
  node_local_path_config
  start local-path-provisioner local-path-provisioner --debug start \
    --kubeconfig "$CLUSTER_DIR/local-path.kubeconfig" --namespace local-path-storage \
    --provisioner-name rancher.io/local-path --configmap-name local-path-config \
    --service-account-name local-path-provisioner --helper-image "$BUSYBOX_IMAGE"

  wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz" || failed kube-scheduler
  wait_for kube-proxy 60 curl -fsS "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" || failed kube-proxy
  wait_for coredns 60 curl -fsS "http://127.0.0.1:$DNS_READY_PORT/ready" || failed coredns
  wait_for kubelet 120 kubectl --kubeconfig "$KUBECONFIG_FILE" wait --for condition=Ready \
    --timeout 5s "node/$NODE_NAME" || failed kubelet
  alive "$CLUSTER_DIR/local-path-provisioner.pid" || failed local-path-provisioner
}

# The kubelet's cgroup root, in every hierarchy (it must exist before the
# kubelet starts); a cpuset gets its parent's CPUs and memory nodes.
node_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -f $h/cgroup.procs ]] || continue
    mkdir -p "$h$CGROUP_ROOT"
    if [[ -f $h/cpuset.cpus ]]; then
      cat "$h/cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# Processes of the node's pods, found through their cgroups.
pod_pids() {
  local d
  for d in /sys/fs/cgroup/pids/$CGROUP_ROOT /sys/fs/cgroup/memory/$CGROUP_ROOT; do
    if [[ -d $d ]]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; fi
  done | sort -u
}

# mounts_under DIR...: mount points below the given directories, deepest first.
mounts_under() {
  local prefixes=("$@")
  awk '{print $2}' /proc/self/mounts | while read -r m; do
    for p in "${prefixes[@]}"; do [[ $m == "$p" || $m == "$p"/* ]] && echo "$m"; done
  done | sort -r -u
}

node_down() {
  stop_pidfile "$CLUSTER_DIR/kubelet.pid"
  stop_pidfile "$CLUSTER_DIR/local-path-provisioner.pid"
  stop_pidfile "$CLUSTER_DIR/coredns.pid"
  stop_pidfile "$CLUSTER_DIR/kube-scheduler.pid"
  stop_pidfile "$CLUSTER_DIR/kube-proxy.pid"
  local pids
  pids=$(pod_pids)
  [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
  pkill -9 -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
  stop_pidfile "$CLUSTER_DIR/containerd.pid"
  local m
  for m in $(mounts_under "$NODE_DIR" /run/containerd /var/run/netns /run/netns /var/lib/kubelet); do
    umount -l "$m" 2>/dev/null || true
  done
  # Cgroups: leaves first, in every hierarchy.
  find /sys/fs/cgroup/*/"$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
  find /sys/fs/cgroup/*/"$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  # kube-proxy's chains and rules; the kubelet's canary and firewall chains.
  [[ -x $TOOLS_BIN/kube-proxy ]] && kube-proxy --cleanup >/dev/null 2>&1 || true
  local ipt t c
  for ipt in iptables ip6tables; do
    for t in filter nat mangle; do
      for c in $($ipt -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        had chain "$ipt" "$t" "$c" && continue
        $ipt -t "$t" -S | awk -v c="$c" '$1 == "-A" && $0 ~ ("-j " c "( |$)") {sub(/^-A/, "-D"); print}' |
          while read -r rule; do eval "$ipt -t $t $rule" 2>/dev/null || true; done || true
        $ipt -t "$t" -F "$c" 2>/dev/null || true
      done
      for c in $($ipt -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        had chain "$ipt" "$t" "$c" && continue
        $ipt -t "$t" -X "$c" 2>/dev/null || true
      done
    done
  done
  nft delete table inet hookwarden 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  # Host paths the components made (those the host had before stay).
  local state=$CLUSTER_DIR/../node-host-paths p
  if [[ -f $SYSCTLS_FILE ]]; then
    for p in "${HOST_PATHS[@]}"; do grep -qxF "$p" "$state" 2>/dev/null || rm -rf "$p"; done
    sysctl -qw $(cat "$SYSCTLS_FILE") >/dev/null 2>&1 || true
    rm -f "$SYSCTLS_FILE" "$state"
  fi
}

# node_leftovers: print whatever of the node is still on the host (nothing when clean).
# NB: every check runs, whatever the one before found (no early exit under set -e).
node_leftovers() {
  local ipt t
  pgrep -a -f "$NODE_DIR|containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true
  pod_pids | sed 's/^/pod process /' || true
  mounts_under "$NODE_DIR" /run/containerd /var/run/netns /run/netns | sed 's/^/mount /' || true
  { ls -d /sys/fs/cgroup/*/"$CGROUP_ROOT" 2>/dev/null || true; } | sed 's/^/cgroup /'
  if ip link show "$BRIDGE" >/dev/null 2>&1; then echo "bridge $BRIDGE"; fi
  host_net | while read -r what rest; do
    [[ $what == veth ]] && ! had veth "$rest" && echo "veth $rest"
  done || true
  if nft list table inet hookwarden >/dev/null 2>&1; then echo "nft table inet hookwarden"; fi
  for ipt in iptables ip6tables; do
    for t in filter nat mangle; do
      # NB: a line naming one of the host's own chains is the host's.
      { $ipt -t "$t" -S 2>/dev/null || true; } | { grep -E 'KUBE-|CNI-' || true; } |
        while read -r line; do
          local mine=true c
          for c in $(awk -v p="chain $ipt $t" 'index($0, p " ") == 1 {print $4}' "$HOST_NET_FILE" 2>/dev/null); do
            [[ " $line " == *" $c "* ]] && mine=false
          done
          if $mine; then echo "$ipt $t $line"; fi
        done
    done
  done
  if [[ -e $NODE_DIR ]]; then echo "dir $NODE_DIR"; fi
  if [[ -e $SYSCTLS_FILE ]]; then echo "unrestored sysctls $SYSCTLS_FILE"; fi
}
