#!/usr/bin/env bash
# Link-time stand-ins for the CUDA driver and libraries, so that
# `cargo build --features cuda` links on a machine without a GPU or toolkit
# libraries. Each stub library holds one empty function per symbol cudarc
# declares, under the real library's soname; the binary then loads the real
# libraries on the GPU machine. Never run a binary against these stubs.
#   tools/make_cuda_stubs.sh OUT_DIR   (then build with CUDA_HOME=OUT_DIR)
# Needs: cc, the cudarc sources in ~/.cargo/registry (run `cargo fetch` first),
# and nvcc's wheel for libcudart (PATH as in the README).
set -euo pipefail
out=${1:?usage: make_cuda_stubs.sh OUT_DIR}
mkdir -p "$out/lib"
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
# module:library:soname (sonames of CUDA 13 and cuDNN 9)
for entry in driver:cuda:libcuda.so.1 nvrtc:nvrtc:libnvrtc.so.13 curand:curand:libcurand.so.10 \
             cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13 cudnn:cudnn:libcudnn.so.9; do
  IFS=: read -r module lib soname <<<"$entry"
  grep -ho '^ *fn [A-Za-z0-9_]*(' "$src/src/$module/sys/mod.rs" | sed 's/ *fn //; s/($//' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' >"$out/$lib.c"
  cc -shared -fPIC -Wl,-soname,"$soname" -o "$out/lib/lib$lib.so" "$out/$lib.c"
done
# libcudart comes real, from the nvcc wheel's lib folder.
cudart=$(dirname "$(command -v nvcc)")/../lib/libcudart.so.13
[ -f "$cudart" ] && ln -sf "$(cd "$(dirname "$cudart")" && pwd)/libcudart.so.13" "$out/lib/libcudart.so"
echo "$out/lib: $(ls "$out/lib" | tr '\n' ' ')"
