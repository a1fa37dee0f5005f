#!/usr/bin/env bash
# Check an archive of scripts/package.sh the way a user on a bare node would run it: unpacked in an
# empty temporary directory, with an empty environment and no library path. It must link nothing
# but glibc (its ELF NEEDED entries, and what ldd resolves: no libav*/libsw*/x264/dav1d from the
# system), print its version, and run the README's demo jobs on a copy of the bundled test videos:
# the probe-only demo, the whole curation chain and catalog generation (which encodes with libx264)
# with tiny random weights.
#
#   scripts/package-check.sh out/package/mugflow-<version>-x86_64-linux.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."
archive=$(realpath "$1")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xf "$archive" -C "$tmp"
bin=$(echo "$tmp"/mugflow-*/bin/mugflow)
fail() { echo "package-check: $*" >&2; exit 1; }

# What the binary asks the dynamic loader for: glibc's libraries and libgcc only; the CUDA variant
# also the CUDA libraries, found through the caller's LD_LIBRARY_PATH (docs/CUDA.md).
allowed='libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux-x86-64'
keep=()
if [[ $archive == *-cuda.tar.* ]]; then
  allowed+='|libcuda|libcudart|libcublas|libcublasLt|libcurand|libnvrtc|libcudnn'
  keep=(LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}")
fi
needed=$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
echo "package-check: NEEDED $(echo $needed)"
for lib in $needed; do
  [[ $lib =~ ^($allowed)\.so ]] || fail "links $lib"
done
env -i "${keep[@]}" ldd "$bin"
if env -i "${keep[@]}" ldd "$bin" | grep -E 'libav|libsw|libpostproc|x264|dav1d|not found'; then
  fail "loads FFmpeg libraries from the system, or misses a library"
fi

# The demo inputs, at the paths the manifests name, in a directory of their own.
work=$tmp/work
mkdir -p "$work/tests/data" "$work/manifests"
cp -r tests/data/videos tests/data/catalog tests/data/captions.csv "$work/tests/data/"
cp manifests/demo.toml manifests/curate.toml "$work/manifests/"
run() { (cd "$work" && env -i PATH=/usr/bin:/bin HOME="$tmp" "${keep[@]}" "$bin" "$@"); }
run --version
run run manifests/demo.toml
run inspect out/demo
run models init-tiny checkpoints/tiny
run run manifests/curate.toml
run inspect out/curate
run generate --catalog tests/data/catalog/catalog.csv --out out/generate --models checkpoints/tiny --tiny --device cpu
videos=$(find "$work/out/generate" -name '*.mp4' | wc -l)
[ "$videos" -gt 0 ] || fail "generate wrote no MP4"
echo "package-check: $(basename "$archive") runs (generate wrote $videos MP4s)"
