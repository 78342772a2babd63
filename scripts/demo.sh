#!/usr/bin/env bash
# The README's demo: the plugin against the sandbox, through real kubectl's plugin dispatch.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PWD/plugin:$PATH"   # kubectl finds plugin/kubectl-grpcprobe; python3 is the venv's
workdir=$(mktemp -d)
export KUBECONFIG="$workdir/kubeconfig"

# Start the sandbox; its first line on stdout (the kubeconfig path) says it is ready.
# --kubelet-speed 5: the sandbox kubelet probes every 2s instead of periodSeconds=10, so the walkthrough takes seconds.
coproc SANDBOX { exec kubectl-grpcprobe sandbox up -f examples/test-grpc.yaml --kubeconfig-out "$KUBECONFIG" --kubelet-speed 5 2>"$workdir/sandbox.log"; }
sandbox_pid=$SANDBOX_PID
cleanup() { kill "$sandbox_pid" 2>/dev/null || true; wait "$sandbox_pid" 2>/dev/null || true; rm -rf "$workdir"; }
trap cleanup EXIT
read -r -t 30 ready <&"${SANDBOX[0]}" || { echo "the sandbox did not start:" >&2; cat "$workdir/sandbox.log" >&2; exit 1; }
[ "$ready" = "$KUBECONFIG" ]

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" && echo "(exit 0)" || echo "(exit $?)"; }

# The Kubernetes 1.24 blog's walkthrough, with the plugin doing the port-forward and the waiting.
step kubectl get pods -o wide
step kubectl grpcprobe test-grpc
step kubectl grpcprobe toggle test-grpc --not-serving --wait
step kubectl grpcprobe test-grpc -o wide
step kubectl get pod test-grpc
step kubectl describe pod test-grpc
step kubectl grpcprobe toggle test-grpc --serving --wait
step kubectl grpcprobe test-grpc --watch --period 500ms --count 3
step kubectl get pod test-grpc
