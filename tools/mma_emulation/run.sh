#!/usr/bin/env bash
# Runs flash_attention_mma.cu's kernel on the CPU, without a GPU: every CUDA
# thread a std::thread, __syncthreads and warp shuffles as barriers, and
# mma.sync m16n8k16 emulated from the PTX ISA's fragment layouts (emu.h), for
# f16 at each head width the build has, against an f64 reference
# (check.cpp). It checks the kernel's index arithmetic, masking and online
# softmax, not its speed or the real instruction. Needs g++ 12 (C++20,
# _Float16). About 10 s.
#
#   tools/mma_emulation/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The kernel's source, with the CUDA-only parts swapped for the emulation's:
# the inline-PTX Mma specialisations, the dynamic shared memory, the
# extern "C" entry points.
python3 - "$here/../../src/engine/cuda/flash_attention_mma.cu" "$work/kernel.cpp" <<'PY'
import sys
s = open(sys.argv[1]).read()
def cut(start, end):
    global s
    a, b = s.index(start), s.index(end)
    s = s[:a] + s[b:]
s = s.replace('#include "common.cuh"', '#include "emu.h"')
cut('template <typename T> struct Mma;', '// Two adjacent values')
shared = 'extern __shared__ __align__(128) unsigned char shared[];'
assert shared in s
s = s.replace(shared, 'unsigned char *shared = shared_mem;')
s = s[:s.index('#define FLASH_ATTENTION_MMA(')]
open(sys.argv[2], 'w').write(s)
PY
cp "$here/emu.h" "$here/check.cpp" "$work/"
# AddressSanitizer: q, k, v, out and shared memory are exactly sized, so an
# access outside them stops the check.
g++ -std=c++20 -O1 -pthread -fsanitize=address -fno-omit-frame-pointer -o "$work/check" "$work/check.cpp"
"$work/check"
