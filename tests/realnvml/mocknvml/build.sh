#!/usr/bin/env bash
# Build fatia's mock libnvidia-ml.so.1 into a cache directory outside the repository
# and print that directory. A build that already exists for this source and this
# nvml.h is reused, so a warm call takes milliseconds.
#
#   NVML_MOCK_CACHE   cache root (default ~/.cache/fatia/nvml-mock)
#   CC                C compiler (default cc)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

header_module=github.com/NVIDIA/go-nvml
header_version="$(sed -n "s|^require $header_module ||p" go.mod)"
source_hash="$(cat mocknvml.c go.mod build.sh | sha256sum | cut -c1-12)"
out="${NVML_MOCK_CACHE:-$HOME/.cache/fatia/nvml-mock}/go-nvml-$header_version-$source_hash"

if [[ -f "$out/libnvidia-ml.so.1" ]]; then
    echo "$out"
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "build.sh: the Go toolchain is needed to fetch $header_module (nvml.h)" >&2
    exit 1
fi
go mod download "$header_module" >&2
header_dir="$(go list -m -f '{{.Dir}}' "$header_module")/pkg/nvml"

mkdir -p "$(dirname "$out")"
tmp="$(mktemp -d "$out.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
# -fvisibility=hidden: only the EXPORT-marked NVML entry points are in the symbol table;
# the soname is the one pynvml and every NVML client open.
"${CC:-cc}" -std=gnu11 -O2 -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden \
    -I"$header_dir" -Wl,-soname,libnvidia-ml.so.1 \
    -o "$tmp/libnvidia-ml.so.1" mocknvml.c -lpthread
ln -s libnvidia-ml.so.1 "$tmp/libnvidia-ml.so"
echo "$header_module $header_version nvml.h; mocknvml.c $source_hash" > "$tmp/VERSION"
mv "$tmp" "$out" 2>/dev/null || true  # a concurrent build may have won: either is the same
trap - EXIT
rm -rf "$tmp"
echo "$out"
