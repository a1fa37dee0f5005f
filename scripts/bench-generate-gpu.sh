#!/usr/bin/env bash
# Catalog generation end to end on one GPU at MUG-V's sizes, as a user runs it: `mugflow generate
# --device cuda --enhance` over three catalog rows at 720p (aspects 16:9, 1:1 and 3:4, 5 s each)
# with real-size random weights, fewer sampling steps than MUG-V's 25 (STEPS, default 2), the GPU
# sampled by nvidia-smi every 100 ms; prints the per-row phase times from the results table and
# each MP4's size, frame count and frame rate as read back by an independent reader (OpenCV's
# FFmpeg, when python3 has cv2). docs/PERFORMANCE.md, "Curation and generation end to end on one
# H200".
#
#   MUGFLOW=/path/to/mugflow scripts/bench-generate-gpu.sh WORKDIR
#
# The text encoders (T5-XXL, UMT5-XXL) run where the bundled manifest puts them, on the CPU;
# TEXT_DEVICE=cuda puts them on the GPU too (faster, ~30 GB more GPU memory).
#
# WORKDIR gets the weights (dit, vae, t5 and the enhancer's four files: ~62 GB, kept for the next
# run; MODELS=DIR puts them elsewhere), the catalog, the videos and the GPU samples.
source "$(dirname "$0")/bench-gpu-common.sh"
shift
steps=${STEPS:-2}

start=$(t)
# Only the models not there yet (a file's last companion marks it complete).
need=()
for part in dit:MUG-V-inference/dit.pt vae:MUG-V-inference/vae.pt t5:t5-v1_1-xxl/config.json \
  enhancer-dit:MUG-V-inference/enhancer/dit_i2v.safetensors enhancer-lora:MUG-V-inference/enhancer/pytorch_model.bin \
  enhancer-vae:Wan2.1-T2V-1.3B/Wan2.1_VAE.pth umt5:Wan2.1-T2V-1.3B/google/umt5-xxl/tokenizer.json; do
  [ -e "$models/${part#*:}" ] || need+=("${part%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  "$mugflow" models init-random "$models" --models "$(IFS=,; echo "${need[*]}")"
  sync  # the write-back of tens of GB, measured here rather than during the run's loading
fi
echo "bench-generate-gpu: weights ready in $(secs "$start") s"

mkdir -p "$work/catalog/images"
cp "$repo"/tests/data/catalog/images/{coffee.png,astronaut.png,grace_hopper.jpg} "$work/catalog/images/"
cat > "$work/catalog/catalog.csv" <<'EOF'
id,image,prompt,seed,aspect,length
coffee-16x9,images/coffee.png,"A white porcelain cup of cappuccino with latte art on a rustic wooden cafe table; the camera slowly pushes in as soft steam rises.",42,16:9,5s
astronaut-1x1,images/astronaut.png,"A smiling woman in an orange flight suit holding a helmet; subtle head turn toward the camera, steady studio lighting.",1234,1:1,5s
uniform-3x4,images/grace_hopper.jpg,"Vintage portrait of a woman in a dark naval uniform with a white cap; she blinks and gives a slight smile.",7,3:4,5s
EOF

rm -rf "$work/videos"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 > "$work/gpu.csv" &
smi=$!
start=$(t)
"$mugflow" generate --catalog "$work/catalog/catalog.csv" --out "$work/videos" --models "$models" --device cuda \
  --enhance --progress plain --set "stage.i2v_generate.steps=$steps" \
  --set "stage.i2v_generate.t5_device=${TEXT_DEVICE:-cpu}" --set "stage.enhance.umt5_device=${TEXT_DEVICE:-cpu}" "$@"
wall=$(secs "$start")
kill $smi

python3 - "$work" "$wall" <<'EOF'
import glob, json, sys
work, wall = sys.argv[1], float(sys.argv[2])
report = json.load(open(f"{work}/videos/report.json"))
mem = [int(l.split(",")[2]) for l in open(f"{work}/gpu.csv") if l.count(",") == 2]
print(f"videos {report['items_written']}, errors {report['errors']}, wall {wall:.1f} s, "
      f"peak GPU memory {max(mem, default=0) / 1024:.1f} GiB (nvidia-smi)")
try:
    import pyarrow.parquet as pq
    for shard in sorted(glob.glob(f"{work}/videos/shards/*/*.parquet")):
        if shard.endswith(".errors.parquet"):
            for r in pq.read_table(shard).to_pylist():
                print("error:", r)
            continue
        for r in pq.read_table(shard).to_pylist():
            print(f"  {r['id']:<14} {r['video_width']}x{r['video_height']} {r['video_frames']} frames "
                  f"@ {r['video_fps']} fps; generate {r['generate_s']:.1f} s, decode {r['decode_s']:.1f} s, "
                  f"enhance {r['enhance_s']:.1f} s")
except ImportError:
    print("(no pyarrow: per-row times not shown)")
try:
    import cv2
    for f in sorted(glob.glob(f"{work}/videos/videos/**/*.mp4", recursive=True)):
        v = cv2.VideoCapture(f)
        n = 0
        while v.read()[0]:
            n += 1
        print(f"  read back {f.split('/')[-1]}: {int(v.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
              f"{int(v.get(cv2.CAP_PROP_FRAME_HEIGHT))}, {n} frames decoded, {v.get(cv2.CAP_PROP_FPS):.2f} fps")
except ImportError:
    print("(no cv2: the MP4s were not read back)")
EOF
