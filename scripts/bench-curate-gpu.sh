#!/usr/bin/env bash
# End-to-end curation on one GPU at MUG-V's sizes, as a user runs it: `mugflow run
# manifests/curate-gpu.toml` (probe, shots, filters, aesthetic + T5-XXL + VideoVAE on cuda:0 in
# bf16) over 720p footage, with the GPU sampled by nvidia-smi every 100 ms; then the VAE alone on
# pre-decoded frames (`mugflow bench gpu --bench vae-encode`), the yardstick the pipeline's clips
# per hour are compared with. Prints one summary (docs/PERFORMANCE.md, "Curation and generation
# end to end on one H200").
#
#   MUGFLOW=/path/to/mugflow scripts/bench-curate-gpu.sh WORKDIR
#
# WORKDIR gets real-size random weights (vae, t5, clip, aesthetic: ~22 GB, kept for the next run;
# MODELS=DIR puts them elsewhere), the footage (two test videos, 30 s of HEVC and 25 s of VP9, cut
# into pieces of at most 20 s and upscaled to 1280x720 at 24 fps by mugflow's own `export_clips`,
# then looped LOOPS times, default 8), the curated output and the GPU samples.
source "$(dirname "$0")/bench-gpu-common.sh"
shift

start=$(t)
[ -e "$models/t5-v1_1-xxl/config.json" ] || { "$mugflow" models init-random "$models" --models vae,t5,clip,aesthetic && sync; }
echo "bench-curate-gpu: weights ready in $(secs $start) s"

make_footage "${LOOPS:-8}"

rm -rf "$work/out"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 > "$work/gpu.csv" &
smi=$!
start=$(t)
MUGFLOW_INPUT="$work/looped/*.mp4" MUGFLOW_CAPTIONS="$work/captions.csv" MUGFLOW_MODELS=$models \
  MUGFLOW_OUT="$work/out" "$mugflow" run "$repo/manifests/curate-gpu.toml" --progress plain "$@"
wall=$(secs $start)
kill $smi
"$mugflow" bench gpu --bench vae-encode --iters 2 | tee "$work/vae-alone.txt"

python3 - "$work" "$wall" <<'EOF'
import json, sys, glob
work, wall = sys.argv[1], float(sys.argv[2])
report = json.load(open(f"{work}/out/report.json"))
util = [int(l.split(",")[1]) for l in open(f"{work}/gpu.csv") if l.count(",") == 2]
mem = [int(l.split(",")[2]) for l in open(f"{work}/gpu.csv") if l.count(",") == 2]
busy = sum(u > 0 for u in util) / max(len(util), 1)
clips = report["items_written"]
print(f"clips written {clips}, errors {report['errors']}, wall {wall:.1f} s (run's own {report['wall_s']:.1f} s)")
print(f"clips/hour {3600 * clips / wall:.0f}; GPU busy (utilization > 0) {100 * busy:.0f}% of {len(util)} samples, "
      f"mean utilization {sum(util) / max(len(util), 1):.0f}%, peak memory {max(mem, default=0) / 1024:.1f} GiB")
for s in report["stages"]:
    print(f"  {s['stage']:<14} in {s['items_in']:>4} out {s['items_out']:>4} busy {s['busy_s']:8.1f} s")
EOF
