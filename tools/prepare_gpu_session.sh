#!/usr/bin/env bash
# Builds, on this machine without a GPU, everything tools/gpu_session.sh
# carries to a lent GPU machine (which has no Rust and no network): the
# ignored folders .carry/ and .whl/ in the repository root. Run it at the
# start of a session that has a device, in the background (38 minutes on
# this project's 2-core machine, with another build beside it for 22 of
# them, before the plain CUDA build shared the cuDNN one's target folder,
# which saves about 10; 58 MB in all with one parity case), then the device
# call:
#
#   tools/prepare_gpu_session.sh            # .carry/ and .whl/
#   mv tests/parity /tmp/parity-aside       # the fixtures exceed a call's 64 MiB
#   run: OUT=$OUT bash tools/gpu_session.sh 2>&1 | tee $OUT/log.txt
#        with carry [".carry", ".whl"]
#   mv /tmp/parity-aside tests/parity
#
# Env: CUDATK (the nvcc venv; default /opt/cudatk), CUDASTUB (the link-time
# stubs; default /opt/cudastub), CUDA_COMPUTE_CAP (default 90: H100/H200),
# NO_CUDA_ONLY=1 to skip the second build without cuDNN (the A/B baseline
# and the fallback if cuDNN does not load), CASE (the parity case to carry;
# default dpmpp2m-sd15).
set -euo pipefail
cd "$(dirname "$0")/.."
CUDATK=${CUDATK:-/opt/cudatk}
CUDASTUB=${CUDASTUB:-/opt/cudastub}
CASE=${CASE:-dpmpp2m-sd15}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=target/cuda

# nvcc and the CUDA headers at the lent machines' CUDA version (driver 580,
# CUDA 13.0: PTX from a newer nvcc does not load there).
if [ ! -x "$CUDATK/bin/pip" ]; then
  python3 -m venv "$CUDATK"
fi
"$CUDATK/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
  "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
PATH=$(ls -d "$CUDATK"/lib/python3*/site-packages/nvidia/cu13/bin | head -1):$PATH
export PATH
cargo fetch --locked
[ -f "$CUDASTUB/lib/libcuda.so" ] || tools/make_cuda_stubs.sh "$CUDASTUB"
export CUDA_HOME=$CUDASTUB

mkdir -p .carry .whl
pack() { # pack BINARY NAME: stripped, xz -6, as .carry/NAME.xz
  strip -o ".carry/$2" "$1" && xz -6 -f ".carry/$2"
  echo ".carry/$2.xz: $(du -h ".carry/$2.xz" | cut -f1)"
}
# The executable of target $1 that a `cargo ... --no-run
# --message-format=json` build made (the library's tests: atelier).
executable() {
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1" | tail -1
}

cargo build --locked --release --features cudnn
pack "$CARGO_TARGET_DIR/release/atelier" atelier
pack "$(cargo test --locked --release --features cudnn --lib --no-run --message-format=json | executable atelier)" tests
pack "$(cargo bench --locked --features cudnn --bench cuda_kernels --no-run --message-format=json | executable cuda_kernels)" kernels
if [ -z "${NO_CUDA_ONLY:-}" ]; then
  # Same target folder: only candle and atelier rebuild for the other
  # features (2m50s here, against 12.5 min in a folder of its own); this
  # binary replaces the cuDNN one there, which is packed already.
  cargo build --locked --release --features cuda
  pack "$CARGO_TARGET_DIR/release/atelier" atelier-cuda
fi

tar cf .carry/cases.tar -C tests/parity "$CASE"
cp ../shared/fixtures/clip-tokenizer/vocab.json ../shared/fixtures/clip-tokenizer/merges.txt .carry/
# The PyTorch side's missing pieces on the GPU machine (pure Python wheels).
python3 -m pip download -q --no-deps -d .whl "diffusers==0.42.1" importlib_metadata zipp
du -ch .carry .whl | tail -1
echo "ready: the device call carries .carry and .whl (64 MiB at most)"
