#!/usr/bin/env bash
# atelier vs PyTorch diffusers, same machine, same run: SD 1.5 architecture
# with random weights at 256 px on the CPU. Prints both and the ratio.
#   benches/compare.sh            (needs python3 with torch, diffusers, transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODEL=${ATELIER_BENCH_MODEL:-target/bench-sd15}
SIZE=${ATELIER_BENCH_SIZE:-256} STEPS=${ATELIER_BENCH_STEPS:-20} STRENGTH=${ATELIER_BENCH_STRENGTH:-0.5} REPEATS=${ATELIER_BENCH_REPEATS:-3}
[ -f "$MODEL/model_index.json" ] || "$PY" benches/make_random_sd15.py "$MODEL"
# The whole img2img timing is from a loaded model (load time excluded on both sides).
ours=$(ATELIER_BENCH_MODEL=$MODEL ATELIER_BENCH_SIZE=$SIZE ATELIER_BENCH_STEPS=$STEPS ATELIER_BENCH_STRENGTH=$STRENGTH \
  ATELIER_BENCH_REPEATS=$REPEATS cargo bench --bench img2img 2>/dev/null | grep '^{')
theirs=$("$PY" benches/pytorch_reference.py "$MODEL" "$SIZE" "$STEPS" "$STRENGTH" "$REPEATS" 2>/dev/null | grep '^{')
echo "$ours"
echo "$theirs"
"$PY" - "$ours" "$theirs" <<'PYEOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ("unet_step_s", "img2img_s"):
    print(f"{k}: atelier {a[k]:.2f} s, pytorch {b[k]:.2f} s, atelier/pytorch = {a[k] / b[k]:.2f}")
PYEOF
