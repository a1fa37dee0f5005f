#!/usr/bin/env bash
# Build the minimal static FFmpeg that the self-contained mugflow links (scripts/package.sh), and
# print its install prefix on the last line of stdout (progress goes to stderr).
#
# What is in it: FFmpeg 5.1 (Debian bookworm's, the major version the libav*-dev of the ordinary
# builds have, so ffmpeg-next sees the same API) with only libavcodec, libavformat, libswscale and
# libavutil, and in them only the demuxers, parsers, decoders and encoders the video stages need;
# dav1d for AV1; zlib (PNG, compressed MP4/MKV headers); Debian's libx264.a for H.264 encoding.
# Everything is built position-independent (Rust links PIE executables) and needs nothing but glibc
# at run time: no hardware libraries, nothing from the system's FFmpeg.
#
# Where the sources come from: Debian's archive, through apt with a private list of deb-src
# entries (the system's apt configuration is left alone), so the checksums apt verifies are
# Debian's signed ones.
#
# Cached in $MUGFLOW_CACHE (default ~/.cache/mugflow)/ffmpeg-static-<hash of this file>: a change
# to this recipe builds a new one, otherwise the build is reused. Build trees are deleted after
# install.
#
#   prefix=$(scripts/ffmpeg-static.sh | tail -1)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${MUGFLOW_CACHE:-$HOME/.cache/mugflow}
recipe=$(sha256sum scripts/ffmpeg-static.sh | cut -c1-12)
prefix=$cache/ffmpeg-static-$recipe
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org}
jobs=$(nproc)
log() { echo "ffmpeg-static: $*" >&2; }

mkdir -p "$cache"
# Two builds at once (parallel CI jobs) would write the same prefix: the second waits.
exec 9>"$prefix.lock"
flock 9
if [ -e "$prefix/.complete" ]; then
  echo "$prefix"
  exit 0
fi
rm -rf "$prefix" "$prefix.build"
mkdir -p "$prefix"/{lib/pkgconfig,include,share/licenses} "$prefix.build"
build=$prefix.build
trap 'rm -rf "$build"' EXIT
start=$SECONDS

# --- Sources, from Debian's archive -------------------------------------------------------------
# A private apt state in the build tree (deleted with it): deb-src for the sources, deb for
# libx264-dev (whose libx264.a is PIC).
apt_dir=$build/apt
mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$apt_dir/sources.list" <<EOF
deb [signed-by=$keyring] $mirror/debian $suite main
deb-src [signed-by=$keyring] $mirror/debian $suite main
deb [signed-by=$keyring] $mirror/debian-security $suite-security main
deb-src [signed-by=$keyring] $mirror/debian-security $suite-security main
EOF
apt_opts=(-q -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1
          -o APT::Architecture=amd64)
# apt drops privileges to _apt for downloads, which cannot write into root's home: as root, don't.
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
log "fetching sources from $mirror ($suite)"
apt-get "${apt_opts[@]}" update >&2
(cd "$build" && apt-get "${apt_opts[@]}" source --download-only ffmpeg dav1d zlib >&2 \
  && apt-get "${apt_opts[@]}" download libx264-dev >&2)
version() { sed -n 's/^Version: //p' "$build/$1"_*.dsc; }
{
  echo "ffmpeg $(version ffmpeg) (Debian source package, $suite)"
  echo "dav1d $(version dav1d) (Debian source package, $suite)"
  echo "zlib $(version zlib) (Debian source package, $suite)"
  echo "x264 $(dpkg-deb -f "$build"/libx264-dev_*.deb Version) (Debian binary package libx264-dev, $suite)"
} > "$prefix/VERSIONS"

# --- x264: Debian's static library and headers --------------------------------------------------
dpkg-deb -x "$build"/libx264-dev_*.deb "$build/x264"
cp "$build"/x264/usr/include/x264*.h "$prefix/include/"
cp "$build"/x264/usr/lib/x86_64-linux-gnu/libx264.a "$prefix/lib/"
mkdir -p "$prefix/share/licenses/x264"
cp "$build/x264/usr/share/doc/libx264-dev/copyright" "$prefix/share/licenses/x264/"
x264_version=$(sed -n 's/^Version: //p' "$build"/x264/usr/lib/x86_64-linux-gnu/pkgconfig/x264.pc)
cat > "$prefix/lib/pkgconfig/x264.pc" <<EOF
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: x264
Description: H.264 (MPEG4 AVC) encoder library
Version: $x264_version
Libs: -L\${libdir} -lx264
Libs.private: -lpthread -lm -ldl
Cflags: -I\${includedir}
EOF

# --- zlib: static, from source -------------------------------------------------------------------
log "building zlib"
tar -xf "$build"/zlib_*.orig.tar.* -C "$build"
zlib_src=$(ls -d "$build"/zlib-*/)
(cd "$zlib_src" && CFLAGS="-O2 -fPIC" ./configure --prefix="$prefix" --libdir="$prefix/lib" --static >&2 \
  && make -j "$jobs" install >&2)
mkdir -p "$prefix/share/licenses/zlib"
cp "$zlib_src/LICENSE" "$prefix/share/licenses/zlib/"

# --- dav1d: static, from source -----------------------------------------------------------------
log "building dav1d"
tar -xf "$build"/dav1d_*.orig.tar.xz -C "$build"
dav1d_src=$(ls -d "$build"/dav1d-*/)
meson setup "$build/dav1d-build" "$dav1d_src" --prefix="$prefix" --libdir=lib --buildtype=release \
  --default-library=static -Db_staticpic=true -Denable_tools=false -Denable_tests=false >&2
ninja -C "$build/dav1d-build" -j "$jobs" install >&2
mkdir -p "$prefix/share/licenses/dav1d"
cp "$dav1d_src/COPYING" "$prefix/share/licenses/dav1d/"

# --- FFmpeg: only what mugflow's video stages use -----------------------------------------------
# Decoders: the codecs mugflow promises (H.264, HEVC, VP9, AV1 through dav1d, MPEG-4 Part 2,
# MPEG-1/2), VP8 and MJPEG (common in WebM and camera files), the usual audio codecs (so that
# probing a file with sound reads its streams as the full FFmpeg does; Opus needs libswresample),
# and the still images `load_image` reads through FFmpeg (PNG, JPEG, WebP, BMP). Encoders: libx264
# (the default) and mpeg4 (`codec = "mpeg4"`). Muxers: the containers the encoding stages write.
# Parsers and bitstream filters the decoders need are pulled in by configure itself.
decoders=h264,hevc,vp8,vp9,libdav1d,mpeg4,mpeg1video,mpeg2video,mjpeg,png,webp,bmp,aac,mp3,opus,vorbis,ac3,flac,pcm_s16le,pcm_s16be,pcm_s24le,pcm_f32le
parsers=h264,hevc,vp8,vp9,av1,mpeg4video,mpegvideo,mjpeg,aac,mpegaudio,opus,vorbis,ac3,flac
demuxers=mov,matroska,avi,mpegps,mpegts,mpegvideo,h264,hevc,m4v,ivf,image2,png_pipe,jpeg_pipe,webp_pipe,bmp_pipe
muxers=mp4,mov,matroska
log "building FFmpeg"
tar -xf "$build"/ffmpeg_*.orig.tar.xz -C "$build"
ffmpeg_src=$(ls -d "$build"/ffmpeg-*/)
(
  cd "$ffmpeg_src"
  PKG_CONFIG_LIBDIR="$prefix/lib/pkgconfig" ./configure --prefix="$prefix" --libdir="$prefix/lib" \
    --pkg-config-flags=--static --enable-static --disable-shared --enable-pic \
    --enable-gpl --enable-libx264 --enable-libdav1d --enable-zlib \
    --disable-autodetect --disable-everything --disable-programs --disable-doc --disable-network \
    --disable-debug --disable-avdevice --disable-avfilter --disable-postproc \
    --enable-protocol=file,pipe --enable-decoder="$decoders" --enable-parser="$parsers" \
    --enable-demuxer="$demuxers" --enable-muxer="$muxers" --enable-encoder=libx264,mpeg4 \
    --enable-bsf=h264_mp4toannexb,hevc_mp4toannexb,vp9_superframe_split,extract_extradata \
    --extra-cflags="-ffunction-sections -fdata-sections" >&2
  make -j "$jobs" >&2
  make install >&2
)
mkdir -p "$prefix/share/licenses/ffmpeg"
cp "$ffmpeg_src"/{LICENSE.md,COPYING.GPLv2,COPYING.LGPLv2.1} "$prefix/share/licenses/ffmpeg/"

# --- One archive per library that ffmpeg-sys-next links -------------------------------------------
# With FFMPEG_DIR, ffmpeg-sys-next links libavcodec, libavformat, libswscale and libavutil and no
# other name (pkg-config would name the others, but the pkg-config variables it needs would also
# rebuild every other crate that probes pkg-config, such as aws-lc-sys, at each switch between the
# test build and the package build). So libavcodec.a takes in what it calls: x264, dav1d, zlib
# (also used by libavformat, whose archive is bundled with libavcodec's into one rlib) and
# libswresample. An MRI script keeps members of the same name (dav1d has one per bit depth).
{
  echo "CREATE $prefix/lib/libavcodec-full.a"
  for lib in avcodec x264 dav1d z swresample; do echo "ADDLIB $prefix/lib/lib$lib.a"; done
  echo "SAVE"
  echo "END"
} | ar -M
mv "$prefix/lib/libavcodec-full.a" "$prefix/lib/libavcodec.a"
rm -rf "$prefix/share/ffmpeg"
touch "$prefix/.complete"
log "built $prefix in $((SECONDS - start)) s"
echo "$prefix"
