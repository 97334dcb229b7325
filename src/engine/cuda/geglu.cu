// GEGLU, `h * gelu(gate)` for [rows, 2 * inner] -> [rows, inner] with
// `h, gate = x.chunk(2, -1)` and the exact (erf) GELU, in one pass. In
// candle it is a GELU over a strided view, then a product: two kernels and
// an intermediate tensor as large as the output.
#include "common.cuh"

template <typename T>
__device__ void geglu(const T *x, T *out, int inner, long n) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const long row = i / inner;
    const int col = (int)(i - row * inner);
    const T *src = x + row * 2 * inner;
    const float h = to_f32(src[col]), gate = to_f32(src[inner + col]);
    const float gelu = 0.5f * gate * (1.f + erff(gate * 0.70710678118654752f));
    out[i] = from_f32<T>(h * gelu);
  }
}

#define GEGLU(NAME, T)                                                      \
  extern "C" __global__ void NAME(const T *x, T *out, int inner, long n) { \
    geglu<T>(x, out, inner, n);                                             \
  }

GEGLU(geglu_f32, float)
GEGLU(geglu_f16, __half)
GEGLU(geglu_bf16, __nv_bfloat16)
