#!/usr/bin/env bash
# Install what mugflow needs on a fresh Debian/Ubuntu machine: FFmpeg's development files and
# clang (for ffmpeg-sys bindings), plus a Python venv with the readers the tests check against and an S3-compatible server (moto).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev
          libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev)
# MUGFLOW_SETUP_TESTS=0 installs only what building and running need (the quickstart); the
# tests also need Slurm and munge (a real one-node cluster) and a Python venv.
tests=${MUGFLOW_SETUP_TESTS:-1}
# CI also packs the self-contained archive, whose static FFmpeg (scripts/ffmpeg-static.sh) is
# assembled with nasm and dav1d's meson/ninja.
# The run report's tests open report.html in headless Chromium (about 20 s to install).
if [ "$tests" = 1 ]; then packages+=(slurm-wlm munge ffmpeg nasm meson ninja-build chromium); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ "$tests" = 1 ] || exit 0
venv=.cache/venv
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import polars, pyarrow, safetensors, numpy, moto, torch" 2>/dev/null; then
  echo "setup: installing Python readers into $venv"
  "$venv/bin/pip" install -q -r scripts/requirements-test.txt
fi
