#!/bin/bash
# One prepared GPU session on a machine without Rust or network (the H100s
# and H200s lent to this project): the kernels' tests, parity on CUDA, an A/B
# of atelier's CUDA switches, UNet and VAE profiles, then atelier vs PyTorch
# on the issue's rows. Results under $OUT (or /tmp/gpu-out), written as they
# come. About 8 minutes on an H200.
#
# Prepare on the build machine, in the repository root (ignored paths):
#   .carry/atelier.xz   the CUDA binary (README "GPU builds"), stripped, `xz -6`
#   .carry/tests.xz     optional: the library's tests built the same way
#                       (`cargo test --release --features cuda --lib --no-run`)
#   .carry/kernels.xz   optional: `cargo bench --features cuda --bench cuda_kernels --no-run`'s binary
#   .carry/cases.tar    parity cases, e.g. `tar cf .carry/cases.tar -C tests/parity dpmpp2m-sd15`
#                       (with the three binaries, one case fits the call's 64 MiB)
#   .carry/vocab.json, .carry/merges.txt   the CLIP tokenizer (for the PyTorch side)
#   .whl/               diffusers + importlib_metadata wheels for the machine's Python
# The tracked parity fixtures are larger than a device call carries (64 MiB):
# move tests/parity aside for the call and back afterwards.
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
LIBS=""
for f in libcublas.so.13 libcurand.so.10 libcudnn.so.9 libcudart.so.13; do
  d=$(find /usr/local /usr/lib /usr/lib64 /opt -name "$f" 2>/dev/null | head -1)
  [ -n "$d" ] && LIBS="$LIBS:$(dirname "$d")"
done
export LD_LIBRARY_PATH=${LIBS#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
for b in atelier tests kernels; do
  [ -f .carry/$b.xz ] && python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
    .carry/$b.xz /tmp/$b && chmod +x /tmp/$b
done
mkdir -p /tmp/cases && tar xf .carry/cases.tar -C /tmp/cases
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
ldd /tmp/atelier | grep -E "not found|cublas|cudnn|curand|cudart|libcuda"

# The kernels against candle's ops, one by one. If fused attention misses,
# the rest runs without it.
[ -x /tmp/tests ] && timeout 90 /tmp/tests engine::cuda --test-threads 1 2>&1 | tee "$OUT/kernels.txt"
if grep -q "flash_attention_matches_candle .*FAILED" "$OUT/kernels.txt" 2>/dev/null; then
  echo "fused attention missed: the rest runs with ATELIER_CUDA_ATTENTION=off"; export ATELIER_CUDA_ATTENTION=off
fi

# Each kernel against candle's op on the models' shapes.
[ -x /tmp/kernels ] && timeout 120 /tmp/kernels 2>&1 | tee -a "$OUT/kernels.txt"

# Parity with atelier's kernels (the default), then the sd15 case without
# them for reference. If the kernels miss in f32, the rest runs without them.
for c in /tmp/cases/*; do for dt in f32 f16 bf16; do
  timeout 60 python3 tools/parity_check.py /tmp/atelier "$c" cuda "$dt" | tee -a "$OUT/parity.jsonl"
done; done
c=$(ls -d /tmp/cases/* | head -1)
ATELIER_CUDA_KERNELS=off timeout 60 python3 tools/parity_check.py /tmp/atelier "$c" cuda f16 \
  | sed 's/^{/{"kernels": "off", /' | tee -a "$OUT/parity.jsonl"
for dt in f32 f16; do  # atelier's convolution, off by default
  ATELIER_CUDA_CONV=on timeout 60 python3 tools/parity_check.py /tmp/atelier "$c" cuda $dt \
    | sed 's/^{/{"conv": "on", /' | tee -a "$OUT/parity.jsonl"
done
if ! python3 - "$OUT/parity.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ok = [r for r in rows if "kernels" not in r and "conv" not in r and r["dtype"] == "f32"]
sys.exit(0 if ok and all(r.get("max_abs_diff", 1) < 0.01 for r in ok) else 1)
EOF
then echo "kernels missed parity: the rest runs with ATELIER_CUDA_KERNELS=off"; export ATELIER_CUDA_KERNELS=off; fi

# A/B of the switches, same binary, same order each time (the default
# first): attention fused or as candle's products, atelier's convolution
# (off by default until measured), and candle's ops everywhere.
ab() {  # ROW VARIANT...
  local row=$1; shift
  for v in "$@"; do
    echo "# $row $v" | tee -a "$OUT/ab.txt"
    env $v timeout 60 /tmp/atelier bench --arch ${row%:*} --size ${row#*:} --device cuda --dtype f16 \
      --repeats 5 --steps 4 --strength 0.5 2>&1 | tail -1 | tee -a "$OUT/ab.txt"
  done
}
ab sd15:512 "DEFAULT=1" "ATELIER_CUDA_ATTENTION=off" "ATELIER_CUDA_ATTENTION=on" "ATELIER_CUDA_CONV=on" "ATELIER_CUDA_KERNELS=off"
ab sdxl:1024 "DEFAULT=1" "ATELIER_CUDA_ATTENTION=on" "ATELIER_CUDA_CONV=on"
ab sd21:768 "DEFAULT=1" "ATELIER_CUDA_ATTENTION=off" "ATELIER_CUDA_CONV=on"
for size in sd15:512 sdxl:1024; do
  timeout 60 /tmp/atelier bench --arch ${size%:*} --size ${size#*:} --device cuda --dtype f16 --repeats 3 \
    --steps 10 --profile 2>&1 | tee -a "$OUT/profile.txt"
done

for row in ${ROWS:-sd15:512:f16 sdxl:1024:f16 sd15:512:bf16 sd21:768:f16}; do
  ROWS=$row DEVICE=cuda ATELIER=/tmp/atelier TOKENIZER=.carry REPEATS=${REPEATS:-3} OUT=/tmp/bench \
    timeout 150 benches/compare.sh 2>&1 | tail -3
  cp /tmp/bench/*.jsonl "$OUT/" 2>/dev/null  # with the caller's log: 8 files, what a call returns
  python3 benches/bench_table.py /tmp/bench/atelier.jsonl /tmp/bench/pytorch.jsonl > "$OUT/table.md"
  echo "row $row done at ${SECONDS}s"
done
cat "$OUT/table.md"
echo "total ${SECONDS}s"
