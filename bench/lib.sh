# shellcheck shell=bash
# What the ingest benchmarks share. Source it after e2e/lib.sh.

# Builds hookwarden and bench/load (release); sets BIN and LOAD.
bench_build() {
  log "building hookwarden (release)"
  (cd "$REPO_DIR" && cargo build --release --locked --quiet --bin hookwarden && cargo build --release --locked --quiet -p hookwarden-load)
  BIN=$REPO_DIR/target/release/hookwarden
  LOAD=$REPO_DIR/target/release/hookwarden-load
}

# bench_namespace NS: a fresh namespace (the previous run's may still be terminating).
bench_namespace() {
  kubectl wait --for=delete "namespace/$1" --timeout=120s >/dev/null 2>&1 || true
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# bench_hook NS POLICY HOOK KEY: an AgentPolicy (off: nothing consumes, and a
# queue limit no run reaches), a WebhookConfig of that policy, and its key
# Secret holding KEY, as the operator would have made it.
bench_hook() {
  local ns=$1 policy=$2 hook=$3 key=$4
  kubectl apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: hookwarden.io/v1alpha1
kind: AgentPolicy
metadata: {name: $policy}
spec: {enabled: false, queueLimit: 10000000}
---
apiVersion: hookwarden.io/v1alpha1
kind: WebhookConfig
metadata: {name: $hook}
spec:
  repository: octo-org/hello-world
  events: [pull_request]
  agentPolicy: $policy
  github: {tokenSecretRef: {name: github-token, key: token}}
YAML
  kubectl create secret generic "$hook-hmac" -n "$ns" --from-literal="key-000000000001=$key" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl label secret "$hook-hmac" -n "$ns" app.kubernetes.io/managed-by=hookwarden --overwrite >/dev/null
}

# bench_body FILE: GitHub's pull_request example, 21 KB, whose head SHA
# bench/load replaces for every request (GitHub never sends the same body
# twice; the receiver refuses a replay).
bench_body() {
  node -e '
    const all = require(process.argv[1]);
    const pr = all.find((e) => e.name === "pull_request").examples[0];
    pr.pull_request.head.sha = "0".repeat(39) + "1";
    require("fs").writeFileSync(process.argv[2], JSON.stringify(pr));
  ' "$E2E_DIR/npm/node_modules/@octokit/webhooks-examples/api.github.com/index.json" "$1"
}
