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
