#!/bin/bash
# One prepared GPU session on a machine without Rust or network (the H100s
# lent to this project): parity on CUDA, a UNet profile, then atelier vs
# PyTorch on the issue's rows. Results under $OUT (or /tmp/gpu-out).
#
# Prepare on the build machine, in the repository root (ignored paths):
#   .carry/atelier.xz   the CUDA binary (README "GPU builds"), stripped, `xz -6`
#   .carry/cases.tar    parity cases, e.g. `tar cf .carry/cases.tar -C tests/parity dpmpp2m-sd15 sdxl-euler-empty`
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
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.carry/atelier.xz'), open('/tmp/atelier','wb'))" \
  && chmod +x /tmp/atelier
mkdir -p /tmp/cases && tar xf .carry/cases.tar -C /tmp/cases
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
ldd /tmp/atelier | grep -E "not found|cublas|cudnn|curand|cudart|libcuda"
for c in /tmp/cases/*; do for dt in f32 f16 bf16; do
  timeout 100 python3 tools/parity_check.py /tmp/atelier "$c" cuda "$dt" | tee -a "$OUT/parity.jsonl"
done; done
timeout 120 /tmp/atelier bench --arch sd15 --size 512 --device cuda --dtype f16 --repeats 3 --steps 10 --profile \
  2>&1 | tee -a "$OUT/profile.txt"
for row in ${ROWS:-sd15:512:f16 sdxl:1024:f16 sd21:768:f16 sd15:512:bf16}; do
  ROWS=$row DEVICE=cuda ATELIER=/tmp/atelier TOKENIZER=.carry REPEATS=${REPEATS:-3} OUT=/tmp/bench \
    timeout 150 benches/compare.sh 2>&1 | tail -3
  cp /tmp/bench/*.jsonl /tmp/bench/*.err "$OUT/" 2>/dev/null
done
python3 benches/bench_table.py /tmp/bench/atelier.jsonl /tmp/bench/pytorch.jsonl | tee "$OUT/table.md"
echo "total ${SECONDS}s"
