#!/usr/bin/env bash
# make k8s: build the real Kubernetes components the tests hold the plugin against, from Go modules only,
# into ${XDG_CACHE_HOME:-~/.cache}/kubectl-grpcprobe/k8s/<version>/bin. A second run is a no-op (a stamp per
# set holds the hash of every input); Go's own build and module caches make a rebuild after a change fast.
#
#   build.sh          everything: kube-apiserver, kube-controller-manager, kube-scheduler, agnhost, etcd,
#                     probe-oracle (the kubelet's prober) and grpc_health_probe
#   build.sh oracle   only probe-oracle, grpc_health_probe and the packaging tools (minutes, not ten)
#
# Both sets also build the packaging tools the tests run: krew and validate-krew-manifest (sigs.k8s.io/krew)
# and actionlint (github.com/rhysd/actionlint), each from its own module at a pinned version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
set_name=${1:-all}
case "$set_name" in all|oracle) ;; *) echo "usage: build.sh [oracle]" >&2; exit 2 ;; esac
version=v1.37.2                       # k8s.io/kubernetes, pinned in go.mod
probe_version=v0.4.62                 # github.com/grpc-ecosystem/grpc-health-probe
krew_version=v0.4.3                   # sigs.k8s.io/krew
actionlint_version=v1.7.12            # github.com/rhysd/actionlint
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-grpcprobe/k8s/$version
bin=$cache/bin
stamp=$cache/.inputs-$set_name
inputs=$(cd "$here/.." && cat k8s/build.sh k8s/go.mod k8s/go.sum k8s/oracle/*.go etcd/go.mod etcd/go.sum etcd/*.go | sha256sum | cut -d' ' -f1)-$(go env GOVERSION)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  echo "make k8s ($set_name): up to date in $bin"
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
echo "make k8s ($set_name): building Kubernetes $version components into $bin"
if [ "$set_name" = all ]; then
  go build -trimpath -ldflags "$ldflags" -o "$bin/" \
    ./oracle k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/test/images/agnhost
  mv "$bin/oracle" "$bin/probe-oracle"
  (cd "$here/../etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
else
  go build -trimpath -ldflags "$ldflags" -o "$bin/probe-oracle" ./oracle
fi
GOBIN=$bin go install -trimpath -ldflags "-s -w" "github.com/grpc-ecosystem/grpc-health-probe@$probe_version"
mv "$bin/grpc-health-probe" "$bin/grpc_health_probe"
GOBIN=$bin go install -trimpath -ldflags "-s -w" "sigs.k8s.io/krew/cmd/krew@$krew_version" "sigs.k8s.io/krew/cmd/validate-krew-manifest@$krew_version"
GOBIN=$bin go install -trimpath -ldflags "-s -w" "github.com/rhysd/actionlint/cmd/actionlint@$actionlint_version"
echo "$inputs" > "$stamp"
[ "$set_name" = all ] && echo "$inputs" > "$cache/.inputs-oracle"
echo "make k8s ($set_name): done in $(( $(date +%s) - started ))s; $(du -sh "$bin" | cut -f1) in $bin"
