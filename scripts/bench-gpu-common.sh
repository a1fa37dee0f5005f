# Sourced by scripts/bench-curate-gpu.sh and scripts/bench-generate-gpu.sh: the repository, the
# mugflow binary ($MUGFLOW, default: the one on PATH), the work folder (the caller's first
# argument), the models folder ($MODELS, default WORKDIR/models; /dev/shm/models is a RAM disk
# where the node's local disk is slow) and a millisecond timer.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mugflow=${MUGFLOW:-mugflow}
work=${1:?usage: $(basename "$0") WORKDIR [mugflow options]}
mkdir -p "$work"
work=$(cd "$work" && pwd)
models=${MODELS:-$work/models}
t() { date +%s%N; }
secs() { awk "BEGIN { printf \"%.3f\", ($(t) - $1) / 1e9 }"; }

# WORKDIR/looped: 720p footage for the curation benchmarks. Two test videos (30 s of HEVC 480p,
# 25 s of VP9 360p) cut into pieces of at most 20 s and upscaled to 1280x720 at 24 fps by
# mugflow's own `export_clips` (made once, kept in WORKDIR/footage), then the pieces looped $1
# times (hard links under other names, so each is a video of its own), with WORKDIR/captions.csv
# giving each looped video a caption by file name.
make_footage() {
  if [ ! -e "$work/footage/index.json" ]; then
    mkdir -p "$work/raw"
    ln -sf "$repo/tests/data/videos/bbb_160s_hevc_480p.mkv" "$repo/tests/data/videos/bbb_245s_vp9_360p.webm" "$work/raw/"
    cat > "$work/footage.toml" <<EOF
[job]
name = "footage"
input = "$work/raw/*"
output = "$work/footage"
allowed_roots = ["$repo/tests/data/videos"]

[[stage]]
kind = "probe"

[[stage]]
kind = "scene_split"        # no cuts: the whole video is one shot
threshold = 255.0

[[stage]]
kind = "clip_filter"        # 20 s pieces
max_duration = "20s"

[[stage]]
kind = "export_clips"
size = "1280x720"
fps = 24
crf = 20
preset = "veryfast"

[[stage]]
kind = "write"
EOF
    start=$(t)
    "$mugflow" run "$work/footage.toml" --progress none
    echo "bench: footage ready in $(secs $start) s"
  fi
  # The curated clips find their caption through their source id.
  rm -rf "$work/looped" && mkdir -p "$work/looped"
  echo "id,text" > "$work/captions.csv"
  for k in $(seq 1 "$1"); do
    for f in "$work"/footage/clips/*/*.mp4; do
      name=$(basename "$f" .mp4)-$k
      ln "$f" "$work/looped/$name.mp4"
      echo "$name,\"An animated rabbit in a green meadow, soft 3D style, daylight.\"" >> "$work/captions.csv"
    done
  done
}
