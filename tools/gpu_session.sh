#!/bin/bash
# One prepared GPU session on a machine without Rust or network (the H100s
# and H200s lent to this project): the kernels' tests, parity on CUDA, an A/B
# of atelier's CUDA switches and builds, atelier (each model as its fastest
# A/B variant) vs PyTorch on the issue's rows, then the kernels' bench and a
# profile. Results under $OUT (or
# /tmp/gpu-out), written as they come, most wanted first: a call cut off at
# its limit still returns what came first. About 9-10 minutes on
# an H200.
#
# Prepare on the build machine, in the repository root (ignored paths;
# tools/prepare_gpu_session.sh builds them all):
#   .carry/atelier.xz   the binary built with `--features cudnn` (README "GPU
#                       builds"), stripped, `xz -6`
#   .carry/atelier-cuda.xz  optional: the same with `--features cuda` (no cuDNN),
#                       the A/B's baseline and the fallback if cuDNN misses
#   .carry/tests.xz     optional: the library's tests built as atelier.xz
#                       (`cargo test --release --features cudnn --lib --no-run`)
#   .carry/kernels.xz   optional: `cargo bench --features cudnn --bench cuda_kernels --no-run`'s binary
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
for b in atelier atelier-cuda tests kernels; do
  [ -f .carry/$b.xz ] && python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
    .carry/$b.xz /tmp/$b && chmod +x /tmp/$b
done
mkdir -p /tmp/cases && tar xf .carry/cases.tar -C /tmp/cases
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
ldd /tmp/atelier | grep -E "not found|cublas|cudnn|curand|cudart|libcuda"

# The kernels against candle's ops, one by one. If fused attention misses,
# the rest runs without it; if the cuDNN convolution misses or cuDNN does not
# load, the rest runs the build without cuDNN.
[ -x /tmp/tests ] && timeout 120 /tmp/tests engine::cuda --test-threads 1 2>&1 | tee "$OUT/kernels.txt"
if grep -q "flash_attention_matches_candle .*FAILED" "$OUT/kernels.txt" 2>/dev/null; then
  echo "fused attention missed: the rest runs with ATELIER_CUDA_ATTENTION=off"; export ATELIER_CUDA_ATTENTION=off
fi
if grep -q "flash_attention_mma_matches_candle .*FAILED" "$OUT/kernels.txt" 2>/dev/null; then
  echo "the mma.sync attention kernel missed: its A/B variants are skipped"; NO_MMA=1
fi
if grep -q "flash_attention_mma1_matches_candle .*FAILED" "$OUT/kernels.txt" 2>/dev/null; then
  echo "the one-tile mma.sync attention kernel missed: its A/B variants are skipped"; NO_MMA1=1
fi
if [ -x /tmp/atelier-cuda ] && { grep -q "cudnn_conv2d_matches_candle .*FAILED" "$OUT/kernels.txt" 2>/dev/null \
    || ! /tmp/atelier --version >/dev/null 2>&1; }; then
  echo "cuDNN convolution missed or cuDNN did not load: the rest runs the build without cuDNN"
  cp /tmp/atelier-cuda /tmp/atelier
fi

# Parity with the defaults (cuDNN convolutions), then atelier's im2col and
# candle's ops for reference. If the defaults miss in f32, the rest runs
# without atelier's kernels.
c=$(ls -d /tmp/cases/* | head -1)
for dt in f32 f16 bf16; do
  timeout 60 python3 tools/parity_check.py /tmp/atelier "$c" cuda "$dt" | tee -a "$OUT/parity.jsonl"
done
ATELIER_CUDA_CONV=im2col timeout 60 python3 tools/parity_check.py /tmp/atelier "$c" cuda f32 \
  | sed 's/^{/{"conv": "im2col", /' | tee -a "$OUT/parity.jsonl"
ATELIER_CUDA_TF32=on timeout 60 python3 tools/parity_check.py /tmp/atelier "$c" cuda f32 \
  | sed 's/^{/{"tf32": "on", /' | tee -a "$OUT/parity.jsonl"
if ! python3 - "$OUT/parity.jsonl" <<'EOF2'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ok = [r for r in rows if "conv" not in r and "tf32" not in r and r["dtype"] == "f32"]
sys.exit(0 if ok and all(r.get("max_abs_diff", 1) < 0.01 for r in ok) else 1)
EOF2
then echo "the defaults missed parity: the rest runs with ATELIER_CUDA_KERNELS=off"; export ATELIER_CUDA_KERNELS=off; fi

# A/B of the switches and the two builds, same order each time (the default
# first). One JSON line per run in ab.jsonl, with its variant.
ab() {  # ROW VARIANT...  (a variant is env settings, or BIN=path for another binary)
  local row=$1; shift
  for v in "$@"; do
    local bin=/tmp/atelier
    case $v in BIN=*) bin=${v#BIN=}; [ -x "$bin" ] || continue; v=DEFAULT=1;; esac
    case $v in *FLASH=mma1*) [ -n "${NO_MMA1:-}" ] && continue;; *FLASH=mma*) [ -n "${NO_MMA:-}" ] && continue;; esac
    env $v timeout 90 $bin bench --arch ${row%:*} --size ${row#*:} --device cuda --dtype f16 \
      --repeats 3 --steps 4 --strength 0.5 --json 2>/tmp/ab.err \
      | sed "s|^{|{\"variant\": \"$bin $v\", |" | tee -a "$OUT/ab.jsonl"
    grep -qi error /tmp/ab.err && tail -3 /tmp/ab.err
  done
}
ab sd15:512 "DEFAULT=1" "BIN=/tmp/atelier-cuda" "ATELIER_CUDA_CONV=im2col" "ATELIER_CUDA_ATTENTION=off" \
  "ATELIER_CUDA_FLASH=mma"
ab sdxl:1024 "DEFAULT=1" "BIN=/tmp/atelier-cuda" "ATELIER_CUDA_TF32=on" "ATELIER_CUDA_FLASH=mma ATELIER_CUDA_ATTENTION=on" \
  "ATELIER_CUDA_FLASH=mma1 ATELIER_CUDA_ATTENTION=on"
ab sd21:768 "DEFAULT=1" "BIN=/tmp/atelier-cuda" "ATELIER_CUDA_FLASH=mma" "ATELIER_CUDA_FLASH=mma1"
python3 - "$OUT/ab.jsonl" <<'EOF2'
import json, sys
for r in (json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")):
    print(f"{r['arch']:5} {r['width']:5} {r['variant']:<45} step {r['unet_step_ms']:7.1f} ms  "
          f"vae {r['vae_encode_ms']:6.0f}/{r['vae_decode_ms']:6.0f} ms  img2img {r['img2img_s']:5.2f} s  "
          f"peak {r['peak_memory_mib']:6.0f} MiB")
EOF2

# Each row against PyTorch, run as its model's fastest A/B variant (binary
# and switches; the defaults where the A/B has nothing), named in the log
# and under the table: the one call gives both the A/B and the best
# numbers to date.
python3 - "$OUT/ab.jsonl" > /tmp/fastest.txt <<'EOF2'
import json, sys
best = {}
for r in (json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")):
    if r["arch"] not in best or r["unet_step_ms"] < best[r["arch"]]["unet_step_ms"]:
        best[r["arch"]] = r
for arch, r in best.items():
    print(arch, r["variant"])
EOF2
cat /tmp/fastest.txt
for row in ${ROWS:-sd15:512:f16 sdxl:1024:f16 sd15:512:bf16 sd21:768:f16}; do
  read -r bin envs <<<"$(awk -v a="${row%%:*}" '$1 == a {$1 = ""; print}' /tmp/fastest.txt)"
  [ -x "${bin:-}" ] || { bin=/tmp/atelier; envs=DEFAULT=1; }
  echo "row $row: $bin $envs"
  env $envs ROWS=$row DEVICE=cuda ATELIER=$bin TOKENIZER=.carry REPEATS=${REPEATS:-2} OUT=/tmp/bench \
    timeout 150 benches/compare.sh 2>&1 | tail -3
  cp /tmp/bench/*.jsonl "$OUT/" 2>/dev/null  # with the caller's log: 7 files (a call returns 8)
  { python3 benches/bench_table.py /tmp/bench/atelier.jsonl /tmp/bench/pytorch.jsonl
    echo; echo "atelier's binary and switches per model:"; cat /tmp/fastest.txt; } > "$OUT/table.md"
  echo "row $row done at ${SECONDS}s"
done
cat "$OUT/table.md"

# Each kernel against candle's op on the models' shapes, and where an SD 1.5
# step's time goes now.
[ -x /tmp/kernels ] && timeout 60 /tmp/kernels 2>&1 | tee -a "$OUT/kernels.txt"
timeout 40 /tmp/atelier bench --arch sd15 --size 512 --device cuda --dtype f16 --repeats 3 \
  --steps 10 --profile 2>&1 | tee -a "$OUT/kernels.txt"
echo "total ${SECONDS}s"
