#!/usr/bin/env bash
# Build the self-contained mugflow archive: one tar.xz that runs on any x86-64 Linux with glibc
# 2.35 or newer (a GPU node with only the NVIDIA driver included), FFmpeg linked in statically (the
# minimal build of scripts/ffmpeg-static.sh: H.264/HEVC/VP8/VP9/AV1/MPEG-4/MPEG-2 decoding, libx264
# encoding, MP4/MOV, MKV/WebM, AVI, MPEG-PS/TS), with the licences of everything bundled. Prints
# the archive's path on the last line.
#
#   scripts/package.sh                  # CPU variant, release profile -> out/package/mugflow-<v>-x86_64-linux.tar.xz
#   scripts/package.sh --cuda           # with --features cuda (CUDA toolchain of scripts/cuda-env.sh);
#                                       # cuBLAS/cuDNN/cuRAND are found at run time (docs/CUDA.md)
#   scripts/package.sh --profile dev    # CI: the tests' profile, so only FFmpeg's dependents rebuild
#   scripts/package-check.sh ARCHIVE    # runs it in a clean directory (what CI does)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
variant=cpu
out=out/package
while [ $# -gt 0 ]; do
  case $1 in
    --cuda) variant=cuda ;;
    --profile) profile=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: scripts/package.sh [--cuda] [--profile release|dev|...] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

start=$SECONDS
prefix=$(scripts/ffmpeg-static.sh | tail -1)
echo "package: static FFmpeg in $prefix ($((SECONDS - start)) s)" >&2
features=static-ffmpeg
build=(build)
if [ "$variant" = cuda ]; then
  source scripts/cuda-env.sh
  cuda_link_stubs "$profile"
  features+=,cuda
  # candle's CUDA kernels ask the linker for the C++ runtime (-lstdc++). A folder holding only
  # its static archive, searched before the system's, links it into the binary, so that a node
  # needs no libstdc++ (GCC's runtime exception allows that). Only the binary is relinked.
  cxx=${CARGO_TARGET_DIR:-target}/static-libstdcxx
  mkdir -p "$cxx"
  ln -sf "$(g++ -print-file-name=libstdc++.a)" "$cxx/libstdc++.a"
  build=(rustc)
fi
# ffmpeg-sys-next with its `static` feature links the archives of $FFMPEG_DIR/lib into the binary.
# It does not ask cargo to rerun it when FFMPEG_DIR changes: when the recipe (hence the folder)
# changed since the last package build in this target dir, its outputs are cleaned.
stamp=${CARGO_TARGET_DIR:-target}/mugflow-ffmpeg-static-$profile
if [ -e "$stamp" ] && [ "$(cat "$stamp")" != "$prefix" ]; then
  cargo clean -p ffmpeg-sys-next --profile "$profile"
fi
FFMPEG_DIR=$prefix cargo "${build[@]}" --profile "$profile" --features "$features" --bin mugflow \
  ${cxx:+-- -L "native=$cxx"}
echo "$prefix" > "$stamp"
exe=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")/mugflow

version=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "mugflow"))')
name=mugflow-$version-x86_64-linux$([ "$variant" = cuda ] && echo -cuda || true)
stage=$out/$name
rm -rf "$stage" "$out/$name.tar.xz"
mkdir -p "$stage/bin" "$stage/LICENSES"
strip -o "$stage/bin/mugflow" "$exe"
# The CUDA libraries are too big to bundle (cuBLAS alone is hundreds of MB): the CUDA variant finds
# those of an installed PyTorch or CUDA (docs/CUDA.md).
[ "$variant" = cpu ] || cp scripts/cuda-lib-path.sh "$stage/bin/"
cp LICENSE "$stage/LICENSES/mugflow-Apache-2.0.txt"
cp -r "$prefix/share/licenses/." "$stage/LICENSES/"
cp "$prefix/VERSIONS" "$stage/LICENSES/native-versions.txt"
if [ "$variant" = cuda ]; then
  echo "libstdc++ of GCC $(g++ -dumpfullversion) (GPL-3.0-or-later WITH GCC-exception-3.1), linked statically" \
    > "$stage/LICENSES/libstdc++.txt"
fi

# The Rust crates compiled into the binary (normal dependencies of mugflow, for this target and
# these features), their licences in THIRD-PARTY.md and their licence files under LICENSES/rust.
cargo metadata --format-version 1 --features "$features" --filter-platform x86_64-unknown-linux-gnu \
  > "$out/metadata.json"
python3 - "$stage" "$(cat "$prefix/VERSIONS")" "$out/metadata.json" <<'EOF'
import json, os, shutil, sys
stage, native = sys.argv[1], sys.argv[2]
meta = json.load(open(sys.argv[3]))
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])
root = next(i for i in members if packages[i]["name"] == "mugflow")
seen, todo = set(), [root]
while todo:  # the closure over normal (not dev, not build) dependency edges
    node = nodes[todo.pop()]
    for dep in node["deps"]:
        if any(k["kind"] is None for k in dep["dep_kinds"]) and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])
crates = sorted((packages[i] for i in seen - members), key=lambda p: (p["name"], p["version"]))
notice = ("LICENCE", "LICENSE", "COPYING", "COPYRIGHT", "NOTICE", "AUTHORS")
with open(os.path.join(stage, "THIRD-PARTY.md"), "w") as f:
    f.write("# What this archive bundles\n\n"
            "`bin/mugflow` is mugflow (Apache-2.0, LICENSES/mugflow-Apache-2.0.txt) statically linked with\n"
            "FFmpeg configured with --enable-gpl and libx264 (GPL-2.0-or-later), so the binary as a whole\n"
            "is distributed under the GPL-2.0-or-later. Their sources are Debian bookworm's source packages\n"
            "of these versions, built by scripts/ffmpeg-static.sh of the mugflow repository:\n\n")
    f.write("".join(f"- {line}\n" for line in native.splitlines()))
    f.write("\nLicences: FFmpeg in LICENSES/ffmpeg (GPL-2.0-or-later as built), x264 in LICENSES/x264\n"
            "(GPL-2.0-or-later), dav1d in LICENSES/dav1d (BSD-2-Clause), zlib in LICENSES/zlib (Zlib).\n\n"
            f"## Rust crates ({len(crates)}; licence files in LICENSES/rust/<crate>-<version>)\n\n"
            "| crate | version | licence | source |\n|---|---|---|---|\n")
    for p in crates:
        f.write(f"| {p['name']} | {p['version']} | {p.get('license') or p.get('license_file') or '?'} "
                f"| {p.get('repository') or ''} |\n")
        src = os.path.dirname(p["manifest_path"])
        files = [n for n in os.listdir(src) if n.upper().startswith(notice) and os.path.isfile(os.path.join(src, n))]
        if files:
            dst = os.path.join(stage, "LICENSES", "rust", f"{p['name']}-{p['version']}")
            os.makedirs(dst, exist_ok=True)
            for n in files:
                shutil.copy(os.path.join(src, n), dst)
EOF

tar -C "$out" -cf - "$name" | xz -9 -T"$(nproc)" > "$out/$name.tar.xz"
rm -rf "$stage" "$out/metadata.json"
echo "package: $(du -h "$out/$name.tar.xz" | cut -f1) in $((SECONDS - start)) s" >&2
echo "$out/$name.tar.xz"
