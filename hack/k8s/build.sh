#!/usr/bin/env bash
# make k8s: build the real Kubernetes components the tests hold the plugin against, from Go modules only,
# into ${XDG_CACHE_HOME:-~/.cache}/kubectl-grpcprobe/k8s/<version>/bin. A second run is a no-op (a stamp
# holds the hash of every input); Go's own build and module caches make a rebuild after a change fast.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=v1.37.2                       # k8s.io/kubernetes, pinned in go.mod
etcd_version=v3.7.3                   # go.etcd.io/etcd/server/v3, pinned in ../etcd/go.mod
probe_version=v0.4.62                 # github.com/grpc-ecosystem/grpc-health-probe
krew_version=v0.4.3                   # sigs.k8s.io/krew
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-grpcprobe/k8s/$version
bin=$cache/bin
stamp=$cache/.inputs
inputs=$(cd "$here/.." && cat k8s/build.sh k8s/go.mod k8s/go.sum k8s/oracle/*.go etcd/go.mod etcd/go.sum etcd/*.go | sha256sum | cut -d' ' -f1)-$(go env GOVERSION)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  echo "make k8s: up to date in $bin"
  exit 0
fi
mkdir -p "$bin"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# The version the binaries report (/version, the probe's kube-probe/<major>.<minor> user agent), as Kubernetes'
# own build sets it (hack/lib/version.sh); go build of a module leaves them at v0.0.0-master.
minor=${version#v1.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitVersion=$version -X $pkg.gitTreeState=clean"
ldflags="$ldflags -X $pkg.buildDate=1970-01-01T00:00:00Z -X k8s.io/client-go/pkg/version.gitVersion=$version"
started=$(date +%s)
cd "$here"
echo "make k8s: building Kubernetes $version components into $bin"
go build -trimpath -ldflags "$ldflags" -o "$bin/" \
  ./oracle k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/test/images/agnhost
mv "$bin/oracle" "$bin/probe-oracle"
cd "$here/../etcd"
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .
GOBIN=$bin go install -trimpath -ldflags "-s -w" "github.com/grpc-ecosystem/grpc-health-probe@$probe_version"
mv "$bin/grpc-health-probe" "$bin/grpc_health_probe"
echo "$inputs" > "$stamp"
echo "make k8s: done in $(( $(date +%s) - started ))s; $(du -sh "$bin" | cut -f1) in $bin"
