#!/usr/bin/env bash
# Builds the real-cluster tier's binaries from the Go module proxy into directories
# outside the repository:
#
#   BIN_DIR:         etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#                    kubelet (the versions pinned in this directory's go.mod/go.sum)
#                    and fakecri (ours, cmd/fakecri);
#   OLD_KUBELET_DIR: kubelet of the newest release before Kubernetes PR #135437
#                    (pinned in ../kubelet-1.36/go.mod), for the surge-update test;
#   HELM_DIR:        helm (pinned in ../helm/go.mod, its own module so that its
#                    dependencies do not move those the Kubernetes binaries build with).
#
# Usage: build.sh BIN_DIR OLD_KUBELET_DIR HELM_DIR. Prints how long each build took.
# make skips the whole script when nothing changed (its stamp depends on every
# go.mod/go.sum and the fake CRI's sources); a forced rebuild with a warm Go build
# cache only links.
set -euo pipefail

usage="usage: build.sh BIN_DIR OLD_KUBELET_DIR HELM_DIR"
bin=${1:?$usage}
old_bin=${2:?$usage}
helm_bin=${3:?$usage}
here=$(cd "$(dirname "$0")" && pwd)

# Stamp the Kubernetes version into the binaries the way Kubernetes' own
# hack/lib/version.sh does, so that `kubelet --version` and the Node's
# kubeletVersion say it. $1: the module directory.
version_ldflags() {
    local version major minor ldflags="-s -w" pkg
    version=$(cd "$1" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
    major=${version#v}; major=${major%%.*}
    minor=${version#v*.}; minor=${minor%%.*}
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done
    echo "$ldflags"
}

# Static binaries, as Kubernetes ships them; -trimpath keeps the build cache
# independent of where the checkout is.
export CGO_ENABLED=0
mkdir -p "$bin" "$old_bin" "$helm_bin"

start=$(date +%s)
cd "$here"
echo "e2e-build: Kubernetes $(go list -m -f '{{.Version}}' k8s.io/kubernetes)," \
     "etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) -> $bin"
go build -trimpath -ldflags "$(version_ldflags "$here")" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    ./cmd/fakecri
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
echo "e2e-build: built in $(( $(date +%s) - start )) s"

start=$(date +%s)
cd "$here/../kubelet-1.36"
echo "e2e-build: kubelet $(go list -m -f '{{.Version}}' k8s.io/kubernetes) -> $old_bin"
go build -trimpath -ldflags "$(version_ldflags "$PWD")" -o "$old_bin/kubelet" \
    k8s.io/kubernetes/cmd/kubelet
echo "e2e-build: built in $(( $(date +%s) - start )) s"

start=$(date +%s)
cd "$here/../helm"
helm_version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
echo "e2e-build: helm $helm_version -> $helm_bin"
# As helm's own Makefile does: its version, and the Kubernetes version `helm template`
# and `helm lint` assume, from the client-go it is built with (v0.37.x: 1.37).
client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)
client_minor=${client_go#v*.}; client_minor=${client_minor%%.*}
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_minor"
done
go build -trimpath -o "$helm_bin/helm" -ldflags "$helm_ldflags" helm.sh/helm/v3/cmd/helm
echo "e2e-build: built in $(( $(date +%s) - start )) s"

"$bin/kubelet" --version
"$old_bin/kubelet" --version
"$helm_bin/helm" version --short
"$bin/etcd" --version | head -1
