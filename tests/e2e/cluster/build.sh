#!/usr/bin/env bash
# Builds the real-cluster tier's binaries from the Go module proxy into a cache
# directory outside the repository:
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
#   (the versions pinned in go.mod/go.sum) and fakecri (ours, cmd/fakecri).
#
# Usage: build.sh BIN_DIR. Prints how long the build took. A rebuild when
# nothing changed is skipped by make (the stamp depends on go.mod, go.sum and
# the fake CRI's sources); a forced rebuild with a warm Go build cache only
# links.
set -euo pipefail

bin=${1:?usage: build.sh BIN_DIR}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

# The version of Kubernetes is the one go.mod requires; stamp it into the
# binaries the way Kubernetes' own hack/lib/version.sh does, so that
# `kubelet --version` and the Node's kubeletVersion say it.
k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
major=${k8s_version#v}; major=${major%%.*}
minor=${k8s_version#v*.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
done

mkdir -p "$bin"
start=$(date +%s)
echo "e2e-build: Kubernetes $k8s_version, etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) -> $bin"
# Static binaries, as Kubernetes ships them; -trimpath keeps the build cache
# independent of where the checkout is.
export CGO_ENABLED=0
go build -trimpath -ldflags "$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    ./cmd/fakecri
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
echo "e2e-build: built in $(( $(date +%s) - start )) s"
"$bin/kubelet" --version
"$bin/etcd" --version | head -1
