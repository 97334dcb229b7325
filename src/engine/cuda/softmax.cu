// Softmax over the last dimension, one block per row, arithmetic in f32.
// candle's kernel gives each row one warp of 32 threads, each loading 2
// bytes at a time with one load in flight: few bytes in flight for rows as
// long as attention scores (4096 at 512 px). Here a
// block of up to 1024 threads keeps UNROLL loads in flight per thread; three
// passes over the row (max, sum, write), the last two mostly from L2.
#include "common.cuh"

template <typename T>
__device__ void softmax(const T *x, T *out, int cols) {
  __shared__ float shared[32];
  const T *src = x + (long)blockIdx.x * cols;
  T *dst = out + (long)blockIdx.x * cols;
  const int stride = blockDim.x * UNROLL;

  float max = -INFINITY;
  for (int base = threadIdx.x; base < cols; base += stride) {
    float v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int i = base + u * blockDim.x;
      v[u] = i < cols ? to_f32(src[i]) : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) max = fmaxf(max, v[u]);
  }
  max = block_reduce(max, -INFINITY, Max(), shared);

  float sum = 0.f;
  for (int base = threadIdx.x; base < cols; base += stride) {
    float v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int i = base + u * blockDim.x;
      v[u] = i < cols ? __expf(to_f32(src[i]) - max) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) sum += v[u];
  }
  const float inv_sum = 1.f / block_reduce(sum, 0.f, Sum(), shared);

  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    dst[i] = from_f32<T>(__expf(to_f32(src[i]) - max) * inv_sum);
  }
}

#define SOFTMAX(NAME, T)                                                \
  extern "C" __global__ void NAME(const T *x, T *out, int cols) {      \
    softmax<T>(x, out, cols);                                           \
  }

SOFTMAX(softmax_f32, float)
SOFTMAX(softmax_f16, __half)
SOFTMAX(softmax_bf16, __nv_bfloat16)
